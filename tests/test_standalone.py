"""A notebook opened alone (Colab badge, `kaggle kernels push`) gets its helpers from pip, not from a clone:
the bootstrap cell, run in a fresh virtual environment far from any checkout, installs the wheel it finds in
the attached Kaggle dataset, and says in one sentence what to do when there is neither a wheel nor a network."""
import pathlib
import subprocess
import venv

import nbformat
import pytest

from medical_r1 import REPO_ROOT
from medical_r1.kaggle_folders import build_wheel
from medical_r1.install import parse_requirements


@pytest.fixture
def fresh_python(tmp_path_factory):
    """A new virtual environment with pip and nothing else: no torch, no medical_r1."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=True)
    return str(folder / "bin" / "python")


def bootstrap_source(kaggle_input: pathlib.Path, repository_url: str | None = None) -> str:
    source = nbformat.read(REPO_ROOT / "notebooks" / "03_train.ipynb", as_version=4)
    cell = [c.source for c in source.cells if c.cell_type == "code"][1]
    assert "/kaggle/input/" in cell
    cell = cell.replace("/kaggle/input/", f"{kaggle_input}/")
    if repository_url:
        cell = cell.replace(cell.split('else "', 1)[1].split('"', 1)[0], repository_url)
    return cell


def run_cell(python: str, cell: str, cwd: pathlib.Path, after: str = "") -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True)
    return subprocess.run([python, "-c", cell + "\n" + after], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def test_on_kaggle_the_helpers_come_from_the_attached_wheel(tmp_path, fresh_python):
    wheel_dir = tmp_path / "input" / "medical-r1-helpers"
    build_wheel(wheel_dir)
    after = ("import src_helpers, medical_r1.data, medical_r1.training\n"
             "from medical_r1.install import parse_requirements\n"
             "print(medical_r1.__file__); print(sorted(parse_requirements().items()))")
    result = run_cell(fresh_python, bootstrap_source(tmp_path / "input"), tmp_path / "kaggle" / "working", after)
    assert result.returncode == 0, result.stderr[-3000:]
    where, pins = result.stdout.strip().splitlines()[-2:]
    assert "site-packages" in where  # installed, not found in a checkout
    assert pins == str(sorted(parse_requirements(REPO_ROOT / "requirements.txt").items()))  # from the wheel's metadata


def test_without_a_wheel_or_network_the_cell_says_what_to_do_in_one_sentence(tmp_path, fresh_python):
    cell = bootstrap_source(tmp_path / "input", f"file://{tmp_path}/no-such-repository")
    result = run_cell(fresh_python, cell, tmp_path / "colab" / "content")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: The medical_r1 helpers are not here and pip could not install them")
    assert "medical-r1-helpers dataset" in last and "network" in last and last.count(". ") == 0
