import numpy as np
import torch

import bgekit
from bgekit.models import offline_model_path


def test_setup_prints_mode_and_seeds(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BGEKIT_WORK", str(tmp_path / "work"))
    cfg = bgekit.setup(mode="small", seed=3)
    out = capsys.readouterr().out
    assert "mode: small (argument)" in out and "device: cpu" in out and "torch" in out
    assert cfg.small and cfg.embedder == str(offline_model_path()) and cfg.reranker is None
    assert cfg.work_dir == (tmp_path / "work").resolve() and cfg.work_dir.is_dir()
    assert (cfg.data_dir / "corpus.jsonl").exists()
    a, t = np.random.rand(), torch.rand(1).item()
    bgekit.setup(mode="small", seed=3, verbose=False)
    assert (np.random.rand(), torch.rand(1).item()) == (a, t)


def test_full_mode_names_the_real_models(tmp_path, monkeypatch):
    monkeypatch.setenv("BGEKIT_WORK", str(tmp_path))
    cfg = bgekit.setup(mode="full", verbose=False)
    assert (cfg.embedder, cfg.reranker) == ("BAAI/bge-large-en-v1.5", "BAAI/bge-reranker-large")


def test_colab_secrets_reach_the_environment_without_being_shown(capsys, tmp_path, monkeypatch):
    """Stand-in for google.colab.userdata (Colab cannot run here): a secret is copied into the environment."""
    import sys
    import types

    secrets = {"NOVITA_API_KEY": "nv-secret-value-123456"}
    userdata = types.SimpleNamespace(get=lambda name: secrets[name])
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    if "google" not in sys.modules:
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    monkeypatch.delenv("NOVITA_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("BGEKIT_WORK", str(tmp_path))
    bgekit.setup(mode="small")
    out = capsys.readouterr().out
    import os

    assert os.environ["NOVITA_API_KEY"] == "nv-secret-value-123456"
    assert "NOVITA_API_KEY" in out and "nv-secret-value" not in out
    monkeypatch.delenv("NOVITA_API_KEY")
