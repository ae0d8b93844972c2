"""`kaggle kernels push` folders, one per notebook, and the helpers as a wheel in a Kaggle dataset.

Kaggle runs each notebook in its own session. A notebook reads the earlier notebooks' files from their
outputs, which its metadata attaches as kernel_sources (artifacts.NOTEBOOK_INPUTS says which), and gets the
helpers offline from the dataset attached as dataset_sources: its first cell pip-installs the wheel it finds
under /kaggle/input. Nothing is fetched from a repository that may not exist.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

from medical_r1 import REPO_ROOT
from medical_r1.artifacts import NOTEBOOK_INPUTS, save_dir_atomic

SHARED_METADATA = REPO_ROOT / "kernel-metadata.json"
GPU_FREE = {"02_format_dataset"}  # needs only the tokenizer: spare the weekly GPU quota
USER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]")  # Kaggle user names: lowercase letters, digits, -
HELPERS_DATASET = "medical-r1-helpers"  # the dataset slug that holds the wheel
PACKAGE_FILES = ("pyproject.toml", "requirements.txt", "README.md", "src_helpers.py", "medical_r1")


def kernel_slug(notebook: str) -> str:
    return "medical-r1-" + notebook.replace("_", "-")


def kernel_title(notebook: str) -> str:
    """A title whose Kaggle slug is kernel_slug(notebook) (Kaggle derives the URL from the title)."""
    return "Medical R1 " + notebook.replace("_", " ").title()


def kernel_metadata(notebook: str, user: str, shared: dict) -> dict:
    meta = {**shared, "id": f"{user}/{kernel_slug(notebook)}", "title": kernel_title(notebook),
            "code_file": f"{notebook}.ipynb", "dataset_sources": [f"{user}/{HELPERS_DATASET}"],
            "kernel_sources": [f"{user}/{kernel_slug(source)}" for source in NOTEBOOK_INPUTS[notebook]]}
    if notebook in GPU_FREE:
        meta["enable_gpu"] = False
        meta.pop("machine_shape", None)
    return meta


def build_wheel(out_dir) -> pathlib.Path:
    """The helpers' wheel (src_helpers + medical_r1), built offline from a clean copy of the package files, so
    the checkout gets no build/ or egg-info folders."""
    out_dir = pathlib.Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for name in PACKAGE_FILES:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, pathlib.Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out_dir), tmp], check=True)
    return next(out_dir.glob("medical_r1-*.whl"))


def dataset_metadata(user: str) -> dict:
    return {"id": f"{user}/{HELPERS_DATASET}", "title": "Medical R1 helpers",
            "subtitle": "The medical-r1 notebooks' helper package, as a wheel",
            "licenses": [{"name": "MIT"}]}


def build(user: str, out_dir) -> list[pathlib.Path]:
    """Write out_dir/medical-r1-helpers (the wheel and dataset-metadata.json) and out_dir/NN_name for each
    notebook (the notebook and its kernel-metadata.json). Returns the folders, the dataset's first."""
    if not USER_NAME.fullmatch(user or ""):
        raise ValueError(f"--user must be your Kaggle user name (lowercase letters, digits and '-'), got {user!r}")
    shared = json.loads(SHARED_METADATA.read_text())
    out_dir = pathlib.Path(out_dir)

    def save_dataset(tmp):
        build_wheel(tmp)
        (pathlib.Path(tmp) / "dataset-metadata.json").write_text(json.dumps(dataset_metadata(user), indent=2) + "\n")

    folders = [save_dir_atomic(out_dir / HELPERS_DATASET, save_dataset)]
    for notebook in NOTEBOOK_INPUTS:
        def save(tmp, notebook=notebook):
            shutil.copy(REPO_ROOT / "notebooks" / f"{notebook}.ipynb", pathlib.Path(tmp) / f"{notebook}.ipynb")
            meta = kernel_metadata(notebook, user, shared)
            (pathlib.Path(tmp) / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

        folders.append(save_dir_atomic(out_dir / notebook, save))
    return folders
