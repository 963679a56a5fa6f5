"""The notebooks' setup cell on "Colab": a stand-in ``google.colab`` module (Colab cannot run here), the repository
setting pointed at a local clone, and a fresh virtual environment.

Colab ships torch, transformers, numpy, pandas, matplotlib and Jupyter preinstalled; the fresh venv stands in for that
by seeing this environment's packages through a ``.pth`` file (read-only: pip installs into the venv). The cell must
then clone the course, install it with the ``colab`` extra (and ``models`` on a CPU runtime), import bgekit from the
clone and print the mode. Network: only what pip needs from PyPI to build the editable install (setuptools, wheel).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def setup_cell() -> str:
    """The first code cell of a learner notebook, exactly as a learner gets it."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "01_embeddings.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "bgekit.setup(" in c.source)


def colab_stub(folder: Path) -> Path:
    """A stand-in ``google.colab`` package (with ``userdata``, which has no secrets)."""
    pkg = folder / "google" / "colab"
    pkg.mkdir(parents=True, exist_ok=True)
    (folder / "google" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import userdata  # noqa: F401\n")
    (pkg / "userdata.py").write_text(
        "class SecretNotFoundError(Exception):\n    pass\n\n\n"
        "def get(name):\n    raise SecretNotFoundError(name)\n")
    return folder


def local_repository(dest: Path) -> str:
    """A git repository holding this checkout's tracked files as they are now; returns its ``file://`` URL."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / os.fsdecode(f)
        if src.is_file():
            (dest / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(f))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "course"], cwd=dest, check=True)
    return dest.resolve().as_uri()


def _cell_for(repository: str, course: Path) -> str:
    cell = setup_cell()
    assert cell.count('REPOSITORY = "') == 1 and cell.count('COURSE = "/content/bgekit"') == 1
    start = cell.index('REPOSITORY = "') + len('REPOSITORY = "')
    cell = cell[:start] + repository + cell[cell.index('"', start):]
    return cell.replace('COURSE = "/content/bgekit"', f'COURSE = "{course}"')


def _run_cell(python: str, cell: str, tmp: Path, extra_env: dict[str, str] | None = None):
    driver = tmp / "driver.py"
    driver.write_text(
        "import google.colab  # noqa: F401  (the Colab kernel has it imported)\n"
        f"exec(compile(open({str(tmp / 'cell.py')!r}).read(), 'setup-cell', 'exec'))\n"
        "print('BGEKIT_FILE', bgekit.__file__)\n"
        "print('MODE', cfg.mode, cfg.embedder)\n")
    (tmp / "cell.py").write_text(cell)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BGEKIT_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(colab_stub(tmp / "stub")), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", BGEKIT_WORK=str(tmp / "work"), HF_HOME=str(tmp / "hf"))
    env.update(extra_env or {})
    return subprocess.run([python, str(driver)], cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)


def test_a_failed_clone_says_what_to_do(tmp_path):
    cell = _cell_for((tmp_path / "nowhere").as_uri(), tmp_path / "course")
    r = _run_cell(sys.executable, cell, tmp_path)
    assert r.returncode != 0
    assert "Could not clone the course from file://" in r.stderr
    assert "set REPOSITORY above" in r.stderr and "upload the course folder" in r.stderr
    assert str(tmp_path / "course") in r.stderr


@pytest.mark.slow
def test_setup_cell_installs_and_imports_bgekit_in_a_fresh_venv(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    url = local_repository(origin)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Colab's preinstalled stack: this environment's packages, visible to the new venv (pip installs into the venv)
    (Path(purelib) / "_colab_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    course = tmp_path / "content" / "bgekit"
    r = _run_cell(python, _cell_for(url, course), tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (course / "pyproject.toml").is_file()                      # cloned from the repository setting
    assert f"BGEKIT_FILE {course / 'bgekit' / '__init__.py'}" in r.stdout
    assert "| mode: small (BGEKIT_MODE unset; no CUDA GPU is present)" in r.stdout
    assert "MODE small " in r.stdout
    show = subprocess.run([python, "-m", "pip", "show", "-f", "bgekit"], capture_output=True, text=True)
    assert show.returncode == 0 and "Editable project location: " + str(course) in show.stdout
    # pip put bgekit into the new venv, not into the environment it borrowed packages from
    assert purelib in show.stdout
    # a second run (the learner re-runs the cell) keeps the clone and succeeds
    r2 = _run_cell(python, _cell_for(url, course), tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
