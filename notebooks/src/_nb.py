"""Shared parts of the notebook generators: cell helpers, the setup cell every notebook starts with, and
writing a notebook with its outputs stripped.

    from _nb import SETUP, Notebook
    nb = Notebook()
    nb.md("# Title ...")
    nb.code(SETUP)
    nb.write("01_embeddings.ipynb")
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent

#: the first code cell of every notebook: on Colab fetch and install the course, then print the mode
SETUP = r'''
import sys
if "google.colab" in sys.modules:  # on Colab: fetch the course (package and data) and install it
    !test -d /content/bgekit || git clone -q --depth 1 https://github.com/bgekit/bgekit /content/bgekit
    %pip install -q -e "/content/bgekit[course]"
    sys.path.insert(0, "/content/bgekit")
import bgekit
cfg = bgekit.setup(seed=0)   # prints mode (small/full), device, versions; seeds everything
'''


class Notebook:
    """Cells in order; ``write`` saves them as a notebook with no outputs."""

    def __init__(self) -> None:
        self.cells: list = []

    def md(self, text: str) -> None:
        self.cells.append(new_markdown_cell(text.strip("\n")))

    def code(self, text: str) -> None:
        self.cells.append(new_code_cell(text.strip("\n")))

    def write(self, name: str) -> Path:
        nb = new_notebook(cells=self.cells)
        seen: set[str] = set()
        for cell in nb.cells:  # ids from the cell's text (not random), so regenerating changes only edited cells
            base = hashlib.sha1(cell.source.encode()).hexdigest()[:8]
            cid, n = base, 1
            while cid in seen:
                cid, n = f"{base}-{n}", n + 1
            seen.add(cid)
            cell.id = cid
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        out = NOTEBOOKS / name
        tmp = out.with_suffix(".ipynb.tmp")
        nbformat.write(nb, str(tmp))
        tmp.replace(out)
        print(f"wrote {out} ({len(self.cells)} cells)")
        return out
