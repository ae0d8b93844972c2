"""Static lint of the notebooks: valid, paired, stripped, one parameters cell mirroring medical_r1.params.Params,
the tutorial's library calls in the cells, one bootstrap cell, and a helper package of small modules."""
import ast
import dataclasses
import json
import re
import subprocess
import sys

import jupytext
import nbformat
import papermill
import pytest

from medical_r1 import REPO_ROOT, manifest, params

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import set_repository  # noqa: E402

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["00_setup_secrets", "01_baseline_inference", "02_format_dataset", "03_train", "04_compare",
         "05_export_push", "06_chat", "07_grpo"]


def as_python(source: str) -> str:
    """A cell as IPython runs it: `!cmd` lines become get_ipython().system(...) calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{20,}|(?<![A-Za-z0-9])[0-9a-f]{40}(?![0-9a-f])|sk-[A-Za-z0-9]{20,}")


def test_the_notebooks_exist_with_their_scripts():
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
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(params.Params)}
    for line in lines:
        name, _, rest = line.partition(" = ")
        value, _, comment = rest.partition("  # ")
        assert comment.strip(), f"{name} needs a comment saying what it does"
        literal = ast.literal_eval(value)
        assert name.lower() in defaults, f"{name} is not a field of src_helpers.Params"
        assert literal == defaults[name.lower()], f"{name} = {literal!r} but Params has {defaults[name.lower()]!r}"
    # papermill must see every line, or it silently ignores an override of it.
    assert set(papermill.inspect_notebook(str(nb_path))) == {line.partition(" = ")[0] for line in lines}


def code_cells(nb_path) -> list[str]:
    return [c.source for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "code"]


def bootstrap_cell(nb_path) -> str:
    """The first code cell after the parameters: it finds or installs the helpers."""
    return code_cells(nb_path)[1]


def parameter_names(nb_path) -> set[str]:
    return set(papermill.inspect_notebook(str(nb_path)))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_header_has_badge_and_files_and_no_logic_in_cells(nb_path):
    """Cells call; they define nothing. Allowed: `with` (a guard around trainer.train) and `if PARAMETER:` (a
    switch of the parameters cell). The bootstrap cell is the one exception, the same in every notebook."""
    nb = nbformat.read(nb_path, as_version=4)
    header = nb.cells[0].source
    assert header.startswith("# ") and f"notebooks/{nb_path.stem}.ipynb" in header
    assert "colab.research.google.com/github/" in header
    assert "**Reads:**" in header and "**Writes:**" in header and "T4" in header
    logic = (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While, ast.If, ast.Try)
    switches = parameter_names(nb_path)
    for source in code_cells(nb_path)[2:]:
        tree = ast.parse(as_python(source))
        found = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, logic)
                 and not (isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id in switches)]
        assert not found, f"{found} in a cell of {nb_path.name}: logic belongs in medical_r1"


def test_the_bootstrap_cell_is_the_same_in_every_notebook_and_installs_from_the_repository():
    cells = {nb.stem: bootstrap_cell(nb) for nb in NOTEBOOKS}
    assert len(set(cells.values())) == 1, "the bootstrap cells differ: copy one notebook's into the others"
    cell = cells["00_setup_secrets"]
    repository = set_repository.current_repository()
    assert f'"git+https://github.com/{repository}"' in cell and "/kaggle/input/**/medical_r1-*.whl" in cell
    assert "git clone" not in cell and "--no-deps" in cell


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_badge_opens_the_repository_of_pyproject(nb_path):
    header = nbformat.read(nb_path, as_version=4).cells[0].source
    badge = re.search(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/notebooks/(\w+)\.ipynb", header)
    assert badge.groups() == (set_repository.current_repository(), nb_path.stem)


def test_one_command_points_every_notebook_at_a_fork(tmp_path):
    import shutil

    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(REPO_ROOT / "docs", tmp_path / "docs")
    changed = set_repository.set_repository("someone/my-fork", tmp_path)
    assert set_repository.current_repository(tmp_path) == "someone/my-fork"
    assert len([p for p in changed if p.suffix == ".ipynb"]) == len(NOTEBOOKS)
    for nb in sorted((tmp_path / "notebooks").glob("*.ipynb")):
        text = nb.read_text() + nb.with_suffix(".py").read_text()
        assert "medical-r1/medical-r1-notebooks" not in text
        assert "github.com/someone/my-fork" in bootstrap_cell(nb)
        assert f"colab.research.google.com/github/someone/my-fork/blob/main/notebooks/{nb.stem}.ipynb" in text
        paired = jupytext.read(nb.with_suffix(".py"))
        assert [c.source for c in paired.cells] == [c.source for c in nbformat.read(nb, as_version=4).cells]
    readme = (tmp_path / "README.md").read_text()
    assert "medical-r1/medical-r1-notebooks" not in readme
    assert "kaggle.com/kernels/welcome?src=https://github.com/someone/my-fork/blob/main/notebooks/03_train.ipynb" in readme
    with pytest.raises(ValueError, match="OWNER/NAME"):
        set_repository.set_repository("not a repo", tmp_path)


def test_the_readmes_first_screen_reaches_the_first_click_on_kaggle_and_colab():
    """A Kaggle or Colab user sees, within the first screen, each notebook's two badges (to this repository) and
    the heading of the clicks that follow; the rest is in docs/ and lab/, linked from it."""
    readme = (REPO_ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:25])
    repository = set_repository.current_repository()
    for nb in NOTEBOOKS:
        assert (f"kaggle.com/kernels/welcome?src=https://github.com/{repository}/blob/main/notebooks/{nb.stem}.ipynb"
                in first_screen)
        assert f"colab.research.google.com/github/{repository}/blob/main/notebooks/{nb.stem}.ipynb" in first_screen
    assert "## Run on Kaggle" in first_screen and "## Run on Colab" in readme
    linked = re.findall(r"\]\(((?:docs|lab)/[^)#]+)\)", readme)
    assert len(linked) >= 8 and all((REPO_ROOT / path).exists() for path in linked), linked
    # Step 4's list of what to attach is artifacts.NOTEBOOK_INPUTS in words.
    from medical_r1.artifacts import NOTEBOOK_INPUTS

    step = next(line for line in readme.split("\n4. ")[1:2])
    for notebook, inputs in NOTEBOOK_INPUTS.items():
        if inputs:
            said = " and ".join(", ".join(i[:2] for i in inputs).rsplit(", ", 1))
            assert f"{notebook[:2]} reads {said}" in " ".join(step.split()), (notebook, said)


LIBRARY_CALLS = {
    "01_baseline_inference": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.for_inference(model)",
                              "render_prompt(", "generate_answers("],
    "02_format_dataset": ["validate_rows(rows)", "render_prompt(", "render_completion(", "encode_example(",
                          "token_table(", "format_rows("],
    "03_train": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.get_peft_model(", "r=LORA_R",
                 "lora_alpha=LORA_ALPHA", "lora_dropout=LORA_DROPOUT", "target_modules=", "SFTConfig(",
                 "SFTTrainer(", "trainer.train(resume_from_checkpoint=checkpoint)", "training_guards(",
                 "training_callbacks("],
    "04_compare": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.for_inference(model)",
                   "generate_answers(", "evaluate_in_rounds("],
    "05_export_push": ["save_merged(", "verify_merge(", "merge_report(", "push_to_hub(", "check_disk_space("],
    "06_chat": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.for_inference(model)", "build_chat_app(",
                "chat_access(share_link(SHARE), CHAT_SHOW_API)",
                "app.launch(share=share_link(SHARE), js=FOLD_SCRIPT, **access)"],
    "07_grpo": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.get_peft_model(", "GRPOConfig(",
                "GRPOTrainer(", "reward_funcs=[correctness_reward, format_reward, length_guard_reward]",
                "trainer.train(resume_from_checkpoint=checkpoint)", "training_guards(", "without_eval_questions("],
}


@pytest.mark.parametrize("name", LIBRARY_CALLS)
def test_the_tutorials_library_calls_are_in_the_cells(name):
    script = (REPO_ROOT / "notebooks" / f"{name}.py").read_text()
    for call in LIBRARY_CALLS[name]:
        assert call in script, f"{name}.py should show {call}"


def keywords_of(call: ast.Call) -> dict[str, str]:
    return {k.arg or "**": ast.unparse(k.value) for k in call.keywords}


def test_03_configures_sfttrainer_like_make_trainer():
    """make_trainer (tests, benchmarks, GPU checks) must train what 03 trains: the same SFTConfig settings,
    with 03's parameter names for Params' fields."""
    notebook = ast.parse((REPO_ROOT / "notebooks" / "03_train.py").read_text())
    helper = ast.parse((REPO_ROOT / "medical_r1" / "training.py").read_text())
    make_trainer = next(n for n in helper.body if isinstance(n, ast.FunctionDef) and n.name == "make_trainer")

    def call(tree, name):
        return next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == name)

    def as_notebook(text):
        # Params' fields that 02 decides are read from its run manifest (run.json) as run.<field> in 03.
        text = re.sub(r"\bp\.(\w+)", lambda m: f"run.{m.group(1)}" if m.group(1) in manifest.FIELDS
                      else m.group(1).upper(), text)
        return text.replace("val_records", "val").replace("train_records", "train")

    ours = {k: as_notebook(v) for k, v in keywords_of(call(make_trainer, "SFTConfig")).items()}
    assert keywords_of(call(notebook, "SFTConfig")) == ours
    ours = {k: as_notebook(v) for k, v in keywords_of(call(make_trainer, "SFTTrainer")).items()}
    assert keywords_of(call(notebook, "SFTTrainer")) == ours


MODULES = sorted(p.stem for p in (REPO_ROOT / "medical_r1").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own_and_is_small(module):
    lines = len((REPO_ROOT / "medical_r1" / f"{module}.py").read_text().splitlines())
    assert lines <= 400, f"medical_r1/{module}.py has {lines} lines: split it by job"
    code = f"import medical_r1.{module}, sys; heavy = {{'torch', 'transformers', 'trl', 'unsloth'}} & set(sys.modules); " \
           "assert not heavy, heavy"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_src_helpers_is_the_tiny_template_module():
    source = (REPO_ROOT / "src_helpers.py").read_text()
    assert len(source.splitlines()) < 300
    imported = {n.module or n.names[0].name for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imported <= {"__future__"}, f"src_helpers should need nothing but the tokenizer it is given: {imported}"


def test_no_module_is_imported_by_all_the_others():
    imports = {m: set(re.findall(r"^from medical_r1\.(\w+) import", (REPO_ROOT / "medical_r1" / f"{m}.py").read_text(), re.M))
               for m in MODULES}
    for module in MODULES:
        users = [m for m in MODULES if module in imports[m]]
        assert len(users) < len(MODULES) - 1, f"every module imports medical_r1.{module}"


def test_kernel_metadata_is_valid():
    meta = json.loads((REPO_ROOT / "kernel-metadata.json").read_text())
    assert meta["kernel_type"] == "notebook" and meta["enable_gpu"] and meta["enable_internet"]
    assert (REPO_ROOT / meta["code_file"]).exists()
    assert re.fullmatch(r"[^/]+/[a-z0-9-]+", meta["id"])


def test_readme_bad_input_table_names_real_tests():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## When something is wrong")[1].split("\n## ")[0]
    named = re.findall(r"`(test_\w+)`", table)
    assert len(named) >= 15
    sources = "".join(p.read_text() for p in (REPO_ROOT / "tests").glob("test_*.py"))
    for name in named:
        assert f"def {name}(" in sources, f"README names {name}, which no test defines"
