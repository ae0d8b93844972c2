"""Build the Kaggle push folders: the helpers' wheel as a dataset, and one folder per notebook.

    python scripts/build_kaggle.py --user YOUR_KAGGLE_NAME
    kaggle datasets create -p kaggle/medical-r1-helpers        # once; `kaggle datasets version` after changes
    kaggle kernels push -p kaggle/02_format_dataset             # then 01 and 03 once 02 has finished, 04, 05

Each notebook folder holds the notebook and its kernel-metadata.json: private, internet on, the T4
accelerator, the helpers' dataset as dataset_sources and the earlier notebooks it reads as kernel_sources.
The settings every notebook shares come from the repository's kernel-metadata.json.
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from medical_r1.kaggle_folders import build  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", required=True, help="your Kaggle user name")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "kaggle")
    args = parser.parse_args()
    dataset, *notebooks = build(args.user, args.out)
    print(f"{dataset}: kaggle datasets create -p {dataset}   (the helpers' wheel; once)")
    for folder in notebooks:
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        after = ", ".join(meta["kernel_sources"]) or "nothing"
        print(f"{folder}: kaggle kernels push -p {folder}   (reads the outputs of {after})")


if __name__ == "__main__":
    main()
