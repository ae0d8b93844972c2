"""Build one `kaggle kernels push` folder per notebook: a copy of the notebook and its kernel-metadata.json.

    python scripts/build_kaggle.py --user YOUR_KAGGLE_NAME        # writes kaggle/NN_name/ for the six notebooks
    kaggle kernels push -p kaggle/02_format_dataset               # then 03 once 02 has finished, and so on

Kaggle runs each notebook in its own session. A notebook reads the earlier notebooks' files from their
outputs, which its metadata attaches as kernel_sources (src_helpers.NOTEBOOK_INPUTS says which) and which
`require_artifact` copies into WORK_DIR; so push a notebook once those it reads have finished. Each notebook
fetches the rest of the repository itself (internet on), as it does on Colab.

The settings every notebook shares (T4, internet, private) come from the repository's kernel-metadata.json,
which is itself a valid push of 03 from the repository root.
"""
import argparse
import json
import pathlib
import re
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import src_helpers as sh  # noqa: E402

SHARED = ROOT / "kernel-metadata.json"
GPU_FREE = {"02_format_dataset"}  # needs only the tokenizer: spare the weekly GPU quota
USER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]")  # Kaggle user names: lowercase letters, digits, -


def kernel_slug(notebook: str) -> str:
    return "medical-r1-" + notebook.replace("_", "-")


def kernel_title(notebook: str) -> str:
    """A title whose Kaggle slug is kernel_slug(notebook) (Kaggle derives the URL from the title)."""
    return "Medical R1 " + notebook.replace("_", " ").title()


def kernel_metadata(notebook: str, user: str, shared: dict) -> dict:
    meta = {**shared, "id": f"{user}/{kernel_slug(notebook)}", "title": kernel_title(notebook),
            "code_file": f"{notebook}.ipynb",
            "kernel_sources": [f"{user}/{kernel_slug(source)}" for source in sh.NOTEBOOK_INPUTS[notebook]]}
    if notebook in GPU_FREE:
        meta["enable_gpu"] = False
        meta.pop("machine_shape", None)
    return meta


def build(user: str, out_dir) -> list[pathlib.Path]:
    if not USER_NAME.fullmatch(user or ""):
        raise ValueError(f"--user must be your Kaggle user name (lowercase letters, digits and '-'), got {user!r}")
    shared = json.loads(SHARED.read_text())
    out_dir = pathlib.Path(out_dir)
    folders = []
    for notebook in sh.NOTEBOOK_INPUTS:
        def save(tmp, notebook=notebook):
            shutil.copy(ROOT / "notebooks" / f"{notebook}.ipynb", pathlib.Path(tmp) / f"{notebook}.ipynb")
            meta = kernel_metadata(notebook, user, shared)
            (pathlib.Path(tmp) / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

        folders.append(sh.save_dir_atomic(out_dir / notebook, save))
    return folders


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", required=True, help="your Kaggle user name")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "kaggle")
    args = parser.parse_args()
    for folder in build(args.user, args.out):
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        after = ", ".join(meta["kernel_sources"]) or "nothing"
        print(f"{folder}: kaggle kernels push -p {folder}   (reads the outputs of {after})")


if __name__ == "__main__":
    main()
