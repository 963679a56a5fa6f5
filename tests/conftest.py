import os

import pytest

# tests never touch the network and always use the bundled models
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BGEKIT_MODE", "small")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_path():
    from bgekit.models import offline_model_path

    return offline_model_path()


@pytest.fixture(scope="session")
def encoder(minilm_path):
    from bgekit import Embedder

    return Embedder(minilm_path, device="cpu")
