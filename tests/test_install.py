"""The install cell beside the platform's own torch. The `registry` tests resolve the real pins against PyPI
(`pip install --dry-run --report`) in stand-in environments that hold a Kaggle/Colab torch stack."""

import json
import pathlib
import subprocess
import sys

import pytest

from medical_r1 import REPO_ROOT, install

STACKS = {version: packages for version, packages in
          json.loads((REPO_ROOT / "tests" / "fixtures" / "platform_torch.json").read_text()).items()
          if not version.startswith("_")}


@pytest.mark.parametrize("torch_version, xformers, torchao", [
    ("2.8.0+cu126", "0.0.32.post2", "0.16.0"),
    ("2.9.0+cu126", "0.0.33.post1", "0.16.0"),
    ("2.9.1", "0.0.33.post2", "0.16.0"),
    ("2.10.0+cu128", "0.0.34", "0.16.0"),
    ("2.11.0+cu130", None, "0.18.0"),  # no xformers is built for it
    ("2.13.0", None, "0.18.0"),  # newer than the table: said, not guessed
])
def test_xformers_and_torchao_are_chosen_by_the_installed_torch(torch_version, xformers, torchao):
    specs, note = install.torch_companions(torch_version)
    assert specs == [f"torchao=={torchao}"] + ([f"xformers=={xformers}"] if xformers else [])
    assert (f"xformers {xformers}" in note) if xformers else ("no xformers" in note and "torch's own attention" in note)


@pytest.mark.parametrize("torch_version, says", [
    ("2.7.1+cu126", "outside what unsloth"), ("2.15.0", "outside what unsloth"), (None, "torch is not installed")])
def test_a_torch_the_pins_cannot_run_on_gets_a_sentence_not_an_upgrade(torch_version, says):
    with pytest.raises(RuntimeError, match=says) as error:
        install.torch_companions(torch_version)
    assert "INSTALL_REQUIREMENTS" in str(error.value) or "pytorch.org" in str(error.value)


def test_the_platform_stack_is_held_as_constraints():
    held = install.platform_constraints({**STACKS["2.11.0"], "numpy": "2.0.2", "transformers": "4.57.1"})
    assert "torch==2.11.0+cu130" in held and "triton==3.6.0" in held and "torchvision==0.26.0+cu130" in held
    assert "cuda-bindings==13.0.3" in held and "nvidia-cudnn-cu13==9.19.0.56" in held
    assert not [line for line in held if line.startswith(("numpy", "transformers"))]


def stand_in_environment(folder, packages: dict) -> str:
    """A virtual environment with pip, and the platform's torch stack as installed distributions (metadata only:
    pip's resolver sees them installed; nothing can be imported)."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name, version in packages.items():
        info = pathlib.Path(site) / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("platform\n")
        (info / "RECORD").write_text("")
    return python


def dry_run_installs(report_path) -> dict:
    return {install.canonical(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report_path.read_text())["install"]}


def held_back(installs: dict) -> list:
    return [name for name in installs if install.is_platform_package(name)]


@pytest.mark.registry
@pytest.mark.parametrize("torch_version", sorted(STACKS))
def test_install_lands_every_pin_and_leaves_the_platform_torch_alone(tmp_path, torch_version):
    """The install cell's own commands, against PyPI, in an environment holding the platform's torch stack: its
    last command (--no-deps) is run as a dry run whose report lists exactly what it would install."""
    python = stand_in_environment(tmp_path / "env", STACKS[torch_version])
    report = tmp_path / "final.json"
    message = install.install_requirements("always", python=python, dry_run_report=report)
    installs = dry_run_installs(report)
    assert held_back(installs) == []
    for name, version in install.parse_requirements().items():
        assert installs.get(name) == version, name
    specs, _ = install.torch_companions(STACKS[torch_version]["torch"])
    for spec in specs:
        name, _, version = spec.partition("==")
        assert installs[name] == version
    assert ("xformers" in installs) == any(spec.startswith("xformers") for spec in specs)
    assert f"torch {STACKS[torch_version]['torch']}" in message and "restart" in message


@pytest.mark.registry
def test_a_plain_pip_install_of_the_pins_would_replace_the_platform_torch(tmp_path):
    """Why the install cell holds torch: the command it ran before (`pip install` of the pins with their
    dependencies) replaces a torch 2.9 image's torch and CUDA libraries. This also shows the check above can fail."""
    python = stand_in_environment(tmp_path / "env", STACKS["2.9.0"])
    report = tmp_path / "plain.json"
    pins = [f"{name}=={version}" for name, version in install.parse_requirements().items()]
    subprocess.run([python, "-m", "pip", "install", "-q", "--dry-run", "--report", str(report), *pins], check=True)
    assert "torch" in held_back(dry_run_installs(report))


def test_install_is_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="INSTALL_REQUIREMENTS"):
        install.install_requirements("sometimes")


def test_without_the_package_index_the_install_says_to_turn_the_internet_on(tmp_path, monkeypatch):
    """Kaggle with its internet off: pip finds nothing. One sentence says what to turn on; nothing is installed."""
    python = stand_in_environment(tmp_path / "env", STACKS["2.10.0"])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    before = sorted(install.installed_versions(python).items())
    with pytest.raises(RuntimeError, match="internet on") as error:
        install.install_requirements("always", python=python)
    assert "No matching distribution found for" in str(error.value)
    assert sorted(install.installed_versions(python).items()) == before

