"""Static lint of the notebooks: valid, paired, stripped, one parameters cell mirroring src_helpers.Params."""
import ast
import json
import re

import jupytext
import nbformat
import papermill
import pytest

import src_helpers as sh

NOTEBOOKS = sorted((sh.REPO_ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["00_setup_secrets", "01_baseline_inference", "02_format_dataset", "03_train", "04_compare",
         "05_export_push"]
def as_python(source: str) -> str:
    """A cell as IPython runs it: `!cmd` lines become get_ipython().system(...) calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{20,}|(?<![A-Za-z0-9])[0-9a-f]{40}(?![0-9a-f])|sk-[A-Za-z0-9]{20,}")


def test_the_six_notebooks_exist_with_their_scripts():
    assert [nb.stem for nb in NOTEBOOKS] == NAMES
    for nb in NOTEBOOKS:
        assert nb.with_suffix(".py").exists(), f"{nb.name} has no paired py:percent script"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_stripped(nb_path):
    raw = nb_path.read_bytes()
    assert b"\r\n" not in raw
    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
            ast.parse(as_python(cell.source))
    assert not TOKEN_LIKE.search(raw.decode("utf-8")), "a token-like string is committed"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_has_not_drifted(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    script = jupytext.read(nb_path.with_suffix(".py"))
    strip = lambda cells: [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in cells]  # noqa: E731
    assert strip(nb.cells) == strip(script.cells), \
        f"{nb_path.name} and its .py differ: run `jupytext --sync notebooks/{nb_path.stem}.py`"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_of_commented_literals_matching_params(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    lines = [line for line in cells[0].source.splitlines() if line.strip()]
    defaults = {f.name: f.default if f.default is not sh.dataclasses.MISSING else f.default_factory()
                for f in sh.dataclasses.fields(sh.Params)}
    for line in lines:
        name, _, rest = line.partition(" = ")
        value, _, comment = rest.partition("  # ")
        assert comment.strip(), f"{name} needs a comment saying what it does"
        literal = ast.literal_eval(value)
        assert name.lower() in defaults, f"{name} is not a field of src_helpers.Params"
        assert literal == defaults[name.lower()], f"{name} = {literal!r} but Params has {defaults[name.lower()]!r}"
    # papermill must see every line, or it silently ignores an override of it.
    assert set(papermill.inspect_notebook(str(nb_path))) == {line.partition(" = ")[0] for line in lines}


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_header_has_badge_and_files_and_no_logic_in_cells(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    header = nb.cells[0].source
    assert header.startswith("# ") and f"notebooks/{nb_path.stem}.ipynb" in header
    assert "colab.research.google.com/github/" in header
    assert "**Reads:**" in header and "**Writes:**" in header and "T4" in header
    logic = (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While, ast.If, ast.With, ast.Try)
    for cell in nb.cells:
        if cell.cell_type == "code":
            found = [type(n).__name__ for n in ast.walk(ast.parse(as_python(cell.source))) if isinstance(n, logic)]
            assert not found, f"{found} in a cell of {nb_path.name}: logic belongs in src_helpers"


def test_kernel_metadata_is_valid():
    meta = json.loads((sh.REPO_ROOT / "kernel-metadata.json").read_text())
    assert meta["kernel_type"] == "notebook" and meta["enable_gpu"] and meta["enable_internet"]
    assert (sh.REPO_ROOT / meta["code_file"]).exists()
    assert re.fullmatch(r"[^/]+/[a-z0-9-]+", meta["id"])


def test_readme_bad_input_table_names_real_tests():
    readme = (sh.REPO_ROOT / "README.md").read_text()
    table = readme.split("## When something is wrong")[1].split("\n## ")[0]
    named = re.findall(r"`(test_\w+)`", table)
    assert len(named) >= 15
    sources = "".join(p.read_text() for p in (sh.REPO_ROOT / "tests").glob("test_*.py"))
    for name in named:
        assert f"def {name}(" in sources, f"README names {name}, which no test defines"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_clone_cell_fetches_the_repository_the_badge_opens(nb_path):
    """Opened alone (Colab badge, Kaggle push), a notebook clones the repository its badge points at, and
    only when src_helpers.py is not already beside it or one folder up."""
    nb = nbformat.read(nb_path, as_version=4)
    badge_repo = re.search(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/", nb.cells[0].source).group(1)
    clone = [line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
             if line.startswith("!") and "git clone" in line]
    assert len(clone) == 1
    assert clone[0].startswith("!test -f src_helpers.py || test -f ../src_helpers.py || ")
    assert f"https://github.com/{badge_repo}" in clone[0]
    assert f'"{badge_repo.split("/")[1]}"' in "".join(c.source for c in nb.cells)  # the clone is on sys.path
