"""Point the notebooks at your fork: rewrite the repository URL everywhere it appears.

    python scripts/set_repository.py YOUR_NAME/YOUR_FORK

The URL is defined once, as [project.urls] Repository in pyproject.toml; the notebooks' Colab and Kaggle badges and
their install line (pip install git+<URL>, used on Colab when the helpers are not beside the notebook) and
the README's and docs' links carry copies, which a test checks against it. This rewrites pyproject.toml, every
notebook and its paired script, README.md and docs/, so the pairs stay in sync.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPOSITORY = re.compile(r'^Repository = "https://github\.com/([\w.-]+/[\w.-]+)"$', re.M)


def current_repository(root=ROOT) -> str:
    """owner/name from pyproject.toml's [project.urls] Repository."""
    return REPOSITORY.search((pathlib.Path(root) / "pyproject.toml").read_text()).group(1)


def files_with_the_url(root=ROOT) -> list[pathlib.Path]:
    root = pathlib.Path(root)
    return [root / "pyproject.toml", root / "README.md", *sorted((root / "docs").glob("*.md")),
            *sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")), *sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))]


def set_repository(new: str, root=ROOT) -> list[pathlib.Path]:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", new):
        raise ValueError(f"give the fork as OWNER/NAME, got {new!r}")
    old = current_repository(root)
    changed = []
    for path in files_with_the_url(root):
        text = path.read_text(encoding="utf-8")
        updated = text.replace(f"github.com/{old}", f"github.com/{new}").replace(
            f"colab.research.google.com/github/{old}/", f"colab.research.google.com/github/{new}/")
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            changed.append(path)
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", help="OWNER/NAME of your fork on GitHub")
    args = parser.parse_args()
    try:
        changed = set_repository(args.repository)
    except ValueError as err:
        sys.exit(str(err))
    print(f"now {args.repository}: rewrote {len(changed)} files")


if __name__ == "__main__":
    main()
