"""The public API: every name bgekit re-exports resolves to the object in its module."""
import importlib

import bgekit


def test_every_export_resolves():
    for name, mod in bgekit._EXPORTS.items():
        obj = getattr(bgekit, name)
        assert obj is getattr(importlib.import_module(f"bgekit.{mod}"), name), name


def test_import_is_lazy():
    import subprocess
    import sys

    code = "import sys, bgekit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert bgekit.__version__ == version("bgekit") == pyproject["project"]["version"]
