"""Installing the pinned stack beside the platform's own torch, as Unsloth's Colab and Kaggle notebooks do.

Kaggle and Colab ship a torch built for their CUDA driver. A plain `pip install` of the pins lets the resolver
replace it: unsloth wants xformers, and the newest xformers wants a newer torch, so on a torch 2.9 image pip
installed torch 2.14.1 with the CUDA 13 libraries (needing a newer driver). Here the platform's torch,
torchvision, torchaudio, triton and CUDA libraries are constraints pip may not change; xformers and torchao are
chosen by the installed torch; pip resolves everything else once (a dry run), and the packages it named are
installed with --no-deps, so nothing outside that list is touched.
"""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tempfile

from medical_r1 import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements.txt"

# The platform's own build: torch and what it was built with. pip may never change these.
PLATFORM_PACKAGES = ("torch", "torchvision", "torchaudio", "triton")
PLATFORM_PREFIXES = ("nvidia-", "cuda-")

# Each xformers wheel is built for one torch release (its metadata pins torch==X; PyPI, 2026-11-29); one built
# for another torch does not load. No release is built for torch 2.11: there Unsloth uses torch's own attention.
XFORMERS_BY_TORCH = {"2.8.0": "0.0.32.post2", "2.9.0": "0.0.33.post1", "2.9.1": "0.0.33.post2",
                     "2.10.0": "0.0.34"}
# torchao declares no torch requirement. peft >= 0.19 refuses torchao < 0.16.0, and torchao >= 0.17.0 imports
# only on torch >= 2.11 (unslothai/notebooks, update_all_notebooks.py, QAT_TORCHAO_BY_TORCH_MINOR).
TORCHAO_BY_TORCH_MINOR = {"2.8": "0.16.0", "2.9": "0.16.0", "2.10": "0.16.0", "2.11": "0.18.0"}
NEWEST_TORCHAO = "0.18.0"
TORCH_RANGE = ((2, 8), (2, 15))  # unsloth 2026.10.9 needs torch < 2.15; the table starts at 2.8


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(path=REQUIREMENTS) -> dict[str, str]:
    """{package: version} from a requirements file of `name==version` lines. Without a checkout (the package
    installed from its wheel on Kaggle, or from the repository on Colab), the same pins come from the
    package's own metadata, which pyproject.toml fills from requirements.txt when the wheel is built."""
    from importlib import metadata

    path = pathlib.Path(path)
    lines = path.read_text().splitlines() if path.exists() else metadata.requires("medical-r1") or []
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name.strip())] = version.strip()
    return pins


def installed_versions(python: str = sys.executable) -> dict[str, str]:
    """{package: version} of every distribution the interpreter `python` sees (another interpreter is asked
    in a subprocess, so the tests can point this at a stand-in environment)."""
    script = ("import importlib.metadata as m, json; "
              "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))")
    found = json.loads(subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout)
    return {canonical(name): version for name, version in found.items()}


def missing_requirements(path=REQUIREMENTS, installed: dict | None = None) -> list[str]:
    """Pinned packages that are absent or at another version, as `name==version` specs."""
    installed = installed_versions() if installed is None else installed
    return [f"{name}=={version}" for name, version in parse_requirements(path).items() if installed.get(name) != version]


def is_platform_package(name: str) -> bool:
    """torch, torchvision, torchaudio, triton or a CUDA library: the platform's own build, never to be changed."""
    return name in PLATFORM_PACKAGES or name.startswith(PLATFORM_PREFIXES)


def platform_constraints(installed: dict) -> list[str]:
    """The platform's torch and CUDA packages, pinned where they are."""
    return [f"{name}=={version}" for name, version in sorted(installed.items()) if is_platform_package(name)]


def torch_companions(torch_version: str | None) -> tuple[list[str], str]:
    """The xformers and torchao that work with this torch, as pip specs, and a sentence saying what was chosen.
    Raises RuntimeError, with what to do, for a torch the pins cannot run on."""
    if not torch_version:
        raise RuntimeError("torch is not installed here: Kaggle and Colab provide it; elsewhere install the torch "
                           "build for your CUDA driver first (pytorch.org), then run this cell again.")
    release = torch_version.split("+")[0]
    minor = tuple(int(part) for part in release.split(".")[:2])
    low, high = TORCH_RANGE
    if not low <= minor < high:
        raise RuntimeError(
            f"This platform's torch {torch_version} is outside what unsloth 2026.10.9 runs on (torch 2.8 to 2.14), "
            "and replacing the platform's torch would break its CUDA setup. Use a current Kaggle or Colab image, "
            "or install a torch in that range yourself and set INSTALL_REQUIREMENTS = 'never'.")
    torchao = TORCHAO_BY_TORCH_MINOR.get(f"{minor[0]}.{minor[1]}", NEWEST_TORCHAO)
    xformers = XFORMERS_BY_TORCH.get(release)
    specs = [f"torchao=={torchao}"] + ([f"xformers=={xformers}"] if xformers else [])
    if xformers:
        note = f"xformers {xformers} and torchao {torchao}, built for torch {release}"
    else:
        note = (f"torchao {torchao}; no xformers is built for torch {release}, so Unsloth uses torch's own "
                "attention (a little slower on a T4, same results)")
    return specs, note


def resolve(python: str, specs: list[str], constraints: list[str]) -> list[tuple[str, str]]:
    """What pip would install for `specs` with `constraints` held, from a dry run: [(name, version)]."""
    with tempfile.TemporaryDirectory() as tmp:
        constraints_file = pathlib.Path(tmp) / "platform.txt"
        constraints_file.write_text("\n".join(constraints) + "\n")
        report = pathlib.Path(tmp) / "report.json"
        done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--dry-run",
                               "--report", str(report), "-c", str(constraints_file), *specs],
                              capture_output=True, text=True)
        if done.returncode:
            said = done.stderr.strip()
            if "ResolutionImpossible" in said or "conflict" in said.lower():
                raise RuntimeError("pip cannot install the pinned packages beside this platform's torch without "
                                   f"replacing it; nothing was installed. pip said: {said[-1500:]}")
            raise RuntimeError("pip could not find the pinned packages; nothing was installed. Is the notebook's "
                               "internet on? (Kaggle: Settings > Internet; Colab: the runtime's network.) "
                               f"pip said: {said[-800:]}")
        items = json.loads(report.read_text())["install"]
    return [(canonical(item["metadata"]["name"]), item["metadata"]["version"]) for item in items]


def install_requirements(mode: str = "auto", path=REQUIREMENTS, python: str = sys.executable,
                         dry_run_report=None) -> str:
    """Install the pinned stack where it is missing, beside the platform's torch; one line says what was
    installed and whether the kernel must restart. mode: "auto" installs only on Kaggle or Colab (a local
    machine keeps its own environment), "always", or "never". With `dry_run_report` (a file path) the last
    step is a pip dry run that writes its report there instead of installing (the tests use it)."""
    from medical_r1.runtime import detect_platform

    if mode not in ("auto", "always", "never"):
        raise ValueError(f"INSTALL_REQUIREMENTS must be 'auto', 'always' or 'never', got {mode!r}")
    installed = installed_versions(python)
    missing = missing_requirements(path, installed)
    if not missing:
        return "all pinned requirements present"
    if mode == "never" or (mode == "auto" and detect_platform() == "local"):
        return f"not installing ({mode}, {detect_platform()}); differs from requirements.txt: {', '.join(missing)}"
    companions, note = torch_companions(installed.get("torch"))
    keeps_xformers = any(spec.startswith("xformers==") for spec in companions)
    pins = [f"{name}=={version}" for name, version in parse_requirements(path).items()]
    plan = [(name, version) for name, version in resolve(python, pins + companions, platform_constraints(installed))
            if name != "xformers" or keeps_xformers]  # unsloth asks for some xformers; only a matching one
    touched = [name for name, _ in plan if is_platform_package(name)]
    if touched:
        raise RuntimeError(f"refusing to change the platform's {', '.join(touched)}; nothing was installed")
    dry_run = ["--dry-run", "--report", str(dry_run_report)] if dry_run_report else []
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", *dry_run,
                    *[f"{name}=={version}" for name, version in plan]], check=True)
    imported = sorted(name for name, _ in plan if name.replace("-", "_") in sys.modules)
    restart = (f"restart the kernel ({', '.join(imported)} already imported), then run the notebook again"
               if imported else "no restart needed (none of them was imported yet)")
    return (f"installed {len(plan)} packages beside the platform's torch {installed['torch']} (left as it is, "
            f"with torchvision, triton and the CUDA libraries), with {note}; {restart}")
