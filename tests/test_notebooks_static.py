"""Static checks of the course notebooks (the solution notebooks themselves run under
`pytest --nbmake notebooks/solutions`).

Each notebook is one jupytext source `notebooks/NN_name.py`, built by `notebooks/build.py` into the learner's
notebook `notebooks/NN_name.ipynb` (no solutions) and `notebooks/solutions/NN_name.ipynb` (what CI runs).
"""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
LEARNER = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _build():
    spec = importlib.util.spec_from_file_location("nb_build", NB_DIR / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _build()


def cells(nb_path):
    return json.loads(nb_path.read_text(encoding="utf-8"))["cells"]


def text_of(cell):
    return "".join(cell["source"])


def test_the_course_is_ordered_and_complete():
    names = [p.stem for p in SOURCES]
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(1, len(names) + 1)]
    assert len(names) >= 6
    assert [p.stem for p in LEARNER] == names
    assert sorted(p.stem for p in (NB_DIR / "solutions").glob("*.ipynb")) == names


def test_notebooks_are_built_from_their_sources(capsys):
    """The learner and solution notebooks are exactly what `python notebooks/build.py` makes of the sources."""
    assert build.main(["--check"]) == 0, capsys.readouterr().out


def test_the_build_detects_a_stale_notebook(tmp_path, monkeypatch, capsys):
    """The sync check can fail: edit a source and the check names the notebooks to rebuild."""
    work = tmp_path / "notebooks"
    (work / "solutions").mkdir(parents=True)
    (work / "executed").mkdir(parents=True)
    src = SOURCES[0]
    (work / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    for sub in ("", "solutions/", "executed/"):
        (work / sub / src.with_suffix(".ipynb").name).write_bytes((NB_DIR / sub / src.with_suffix(".ipynb").name)
                                                                   .read_bytes())
    monkeypatch.setattr(build, "NOTEBOOKS", work)
    monkeypatch.setattr(build, "SOLUTIONS", work / "solutions")
    monkeypatch.setattr(build, "EXECUTED", work / "executed")
    assert build.main(["--check"]) == 0
    (work / src.name).write_text(src.read_text(encoding="utf-8") + "\n# %%\nprint('new cell')\n", encoding="utf-8")
    assert build.main(["--check"]) == 1
    # the build rewrites the learner and solution notebooks; the executed copy stays stale until it is re-run
    assert build.main([]) == 0
    capsys.readouterr()
    assert build.main(["--check"]) == 1
    stale = capsys.readouterr().out.split("\n", 1)[1].split()
    assert len(stale) == 1 and stale[0].endswith(f"executed/{src.stem}.ipynb"), stale


def test_executed_copies_are_current_and_stripped():
    """Every notebook has an executed copy that ran exactly the solution notebook's cells (``--check`` above fails on
    a stale one), committed with its outputs stripped, like every notebook of the project."""
    for src in SOURCES:
        ex = NB_DIR / "executed" / src.with_suffix(".ipynb").name
        assert ex.exists(), f"{ex} is missing: python notebooks/build.py --execute"
        assert build.executed_is_current(ex.name, (NB_DIR / "solutions" / ex.name).read_text(encoding="utf-8")), ex
        code = [c for c in cells(ex) if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), f"{ex.name}: outputs committed"
        # the page a reader browses: the run's printed outputs and figures, every figure it links present
        page = ex.with_suffix(".md").read_text(encoding="utf-8")
        figures = re.findall(r"!\[png\]\(([^)]+)\)", page)
        assert figures, f"{ex.with_suffix('.md').name}: no figure"
        assert all((ex.parent / f).is_file() for f in figures), f"{ex.with_suffix('.md').name}: a figure is missing"
        assert "/work/" not in page and "/root/" not in page and "/home/" not in page, "a local folder in the page"
        data = ex.with_name(ex.name.replace(".ipynb", ".outputs.json")).read_text(encoding="utf-8")
        n_code = sum(c["cell_type"] == "code" for c in json.loads(ex.read_text(encoding="utf-8"))["cells"])
        assert len(json.loads(data)) == n_code, f"{ex.name}: the outputs file does not match the code cells"
        assert "/work/" not in data and "/root/" not in data and "/home/" not in data, "a local folder in the outputs"


def test_a_change_in_prose_needs_no_new_run(tmp_path, monkeypatch, capsys):
    """Edit a markdown cell: the build brings the executed copy's text up to date without running it."""
    work = tmp_path / "notebooks"
    (work / "solutions").mkdir(parents=True)
    (work / "executed").mkdir(parents=True)
    src = SOURCES[0]
    name = src.with_suffix(".ipynb").name
    (work / src.name).write_text(src.read_text(encoding="utf-8") + "\n# %% [markdown]\n# One more sentence.\n",
                                 encoding="utf-8")
    for sub in ("", "solutions/", "executed/"):
        (work / sub / name).write_bytes((NB_DIR / sub / name).read_bytes())
    outputs = name.replace(".ipynb", ".outputs.json")
    (work / "executed" / outputs).write_bytes((NB_DIR / "executed" / outputs).read_bytes())
    monkeypatch.setattr(build, "NOTEBOOKS", work)
    monkeypatch.setattr(build, "SOLUTIONS", work / "solutions")
    monkeypatch.setattr(build, "EXECUTED", work / "executed")
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0, capsys.readouterr().out
    assert "One more sentence." in (work / "executed" / name).read_text(encoding="utf-8")
    page = (work / "executed" / name.replace(".ipynb", ".md")).read_text(encoding="utf-8")
    assert "One more sentence." in page   # the page has the new prose ...
    assert page.count("![png](") == (NB_DIR / "executed" / name.replace(".ipynb", ".md")).read_text(
        encoding="utf-8").count("![png](")   # ... and the outputs of the last run, figures included


def test_every_page_has_the_current_prose():
    """The executed pages carry the text of every markdown cell of their solution notebook as it is now."""
    for src in SOURCES:
        name = src.with_suffix(".ipynb").name
        page = (NB_DIR / "executed" / name.replace(".ipynb", ".md")).read_text(encoding="utf-8")
        for cell in json.loads((NB_DIR / "solutions" / name).read_text(encoding="utf-8"))["cells"]:
            text = "".join(cell["source"]).strip()
            assert cell["cell_type"] != "markdown" or text in page, f"{name}: stale prose in the page: {text[:80]!r}"


@pytest.mark.parametrize("nb", LEARNER, ids=lambda p: p.stem)
def test_header_setup_summary_and_hygiene(nb):
    cs = cells(nb)
    text = "\n".join(text_of(c) for c in cs)
    head = text_of(cs[0])
    assert cs[0]["cell_type"] == "markdown" and head.startswith(f"# {nb.stem[:2]} · ")
    assert "What you will learn" in head
    assert re.search(r"\| level \| time \| prerequisites \|", head), "header table: level, time, prerequisites"
    row = head.split("|---|---|---|")[1].splitlines()[1]
    level, time, prereq = [c.strip() for c in row.strip("|").split("|")]
    assert level in ("beginner", "intermediate", "advanced")
    assert "small mode" in time and "measured" in time and "T4" in time and "estimated" in time
    assert prereq
    # the Colab badge points at this very notebook in the one repository setting
    assert build.badge_line(build.repository(), nb.name) in head
    first_code = next(c for c in cs if c["cell_type"] == "code")
    assert "bgekit.setup(" in text_of(first_code)  # prints the mode
    assert f'REPOSITORY = "{build.repository()}"' in text_of(first_code)
    assert re.search(r"^## Summary", text, re.M)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cs if c["cell_type"] == "code")
    assert not re.search(r"sk-[A-Za-z0-9]{20,}|api_key\s*=\s*['\"][^'\"$<{ ]{12,}", text)


@pytest.mark.parametrize("nb", LEARNER, ids=lambda p: p.stem)
def test_exercises_have_a_check_and_no_solution_in_the_learner_notebook(nb):
    learner = cells(nb)
    full = cells(NB_DIR / "solutions" / nb.name)
    solutions = [i for i, c in enumerate(full) if "solution" in c["metadata"].get("tags", [])]
    assert solutions, "every notebook has at least one exercise with a solution"
    learner_text = "\n".join(text_of(c) for c in learner)
    for i in solutions:
        sol = text_of(full[i])
        # the solution's code is not in the learner's notebook (not as a cell, not pasted into another)
        body = [ln for ln in sol.splitlines() if ln.strip() and not ln.lstrip().startswith(("def ", "#", "return"))]
        assert body and not any(ln in learner_text for ln in body if len(ln.strip()) > 25), sol[:200]
        # the stub the learner fills in comes before it, and a check follows it
        assert "todo(" in text_of(full[i - 1]), f"cell before solution {i} should be the learner's stub"
        assert "with check(" in text_of(full[i + 1]), f"cell after solution {i} should be the exercise check"
    assert all("solution" not in c["metadata"].get("tags", []) for c in learner)
    assert len(learner) == len(full) - len(solutions)
