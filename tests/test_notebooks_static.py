"""Static checks of the course notebooks (the notebooks themselves run under `pytest --nbmake notebooks`)."""
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def cells(nb_path):
    return json.loads(nb_path.read_text(encoding="utf-8"))["cells"]


def test_the_course_is_ordered_and_complete():
    names = [p.stem for p in NOTEBOOKS]
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(1, len(names) + 1)]
    assert len(names) >= 6


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_structure_and_hygiene(nb):
    cs = cells(nb)
    text = "\n".join("".join(c["source"]) for c in cs)
    assert cs[0]["cell_type"] == "markdown" and "".join(cs[0]["source"]).startswith("# ")
    assert "What you will learn" in "".join(cs[0]["source"])
    first_code = next(c for c in cs if c["cell_type"] == "code")
    assert "bgekit.setup(" in "".join(first_code["source"])  # prints the mode
    assert re.search(r"^## Summary", text, re.M)
    assert "# exercise solution" in text
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cs if c["cell_type"] == "code")
    assert not re.search(r"sk-[A-Za-z0-9]{20,}|api_key\s*=\s*['\"][^'\"$<{ ]{12,}", text)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_generator(nb, tmp_path, monkeypatch):
    src = ROOT / "notebooks" / "src" / f"{nb.stem}.py"
    copy = tmp_path / "notebooks" / "src" / src.name
    copy.parent.mkdir(parents=True)
    shutil.copy(src, copy)
    shutil.copy(src.parent / "_nb.py", copy.parent / "_nb.py")
    monkeypatch.delitem(sys.modules, "_nb", raising=False)  # import the copy, which writes beside it
    runpy.run_path(str(copy), run_name="__main__")
    def content(path):
        return [(c["cell_type"], "".join(c["source"])) for c in cells(path)]

    fresh = tmp_path / "notebooks" / nb.name
    assert content(fresh) == content(nb), f"regenerate: python notebooks/src/{src.name}"
    assert fresh.read_bytes() == nb.read_bytes(), f"same cells, other bytes (ids?): python notebooks/src/{src.name}"
