# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Setup: runtime, GPU and secrets
#
# Find out where this notebook runs, which GPU it has, which training backend the series will use,
# and which secrets are available, without ever printing a secret's value.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/00_setup_secrets.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/00_setup_secrets.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; nothing to attach.
#
# **Reads:** nothing. **Writes:** `WORK_DIR/runtime.json` (platform, GPU, backend, which secrets were found).
# **Time on a T4 (an estimate; not yet measured on one):** under a minute (a few minutes more the first time, if the install cell installs packages).
#
# Secrets are looked up in the environment, then in Colab's *Secrets* panel (key icon, left bar; turn on
# "Notebook access"), then in Kaggle's *Add-ons > Secrets*. Set `HF_TOKEN` (a write token from
# huggingface.co/settings/tokens) to push models, and `WANDB_API_KEY` to log training to Weights & Biases.
# Both are optional: without them the series runs and skips those steps.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
BACKEND = "auto"  # "auto" picks unsloth on a GPU of compute capability 7.0+; or "unsloth", "transformers", "cpu"
INSTALL_REQUIREMENTS = "auto"  # "auto" installs requirements.txt's pins on Kaggle/Colab when missing; "never", "always"

# %%
# The helpers: src_helpers.py (prompt templates, encoding) and the medical_r1 package. In a checkout of the
# repository they are found where they are. Opened alone, the notebook installs them with pip: on Kaggle from
# the wheel in the attached medical-r1-helpers dataset (offline), on Colab from the repository.
import glob
import importlib.util
import subprocess
import sys

sys.path[:0] = [".", ".."]  # the repository root, whether the notebook runs from it or from notebooks/
if importlib.util.find_spec("medical_r1") is None:
    wheels = glob.glob("/kaggle/input/**/medical_r1-*.whl", recursive=True)
    source = wheels[0] if wheels else "git+https://github.com/medical-r1/medical-r1-notebooks"
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", source]).returncode:
        raise ModuleNotFoundError(
            f"The medical_r1 helpers are not here and pip could not install them from {source}: on Kaggle attach "
            "the medical-r1-helpers dataset (scripts/build_kaggle.py), on Colab turn the network on, or run "
            "the notebook from a checkout of the repository.")
    importlib.invalidate_caches()

# %%
from medical_r1.install import install_requirements

print(install_requirements(INSTALL_REQUIREMENTS))

# %% [markdown]
# ## The runtime and the backend
# Unsloth needs an NVIDIA GPU of compute capability 7.0 or newer (T4, L4, A100, H100). On an older GPU
# the series falls back to plain transformers + PEFT with bitsandbytes 4-bit; on a machine without a GPU
# it runs on the CPU in float32, which is only sensible for the tiny demo model.

# %%
from medical_r1.runtime import setup_backend

runtime, backend = setup_backend(BACKEND)

# %% [markdown]
# ## Secrets
# Each line says where a secret was found, or what will be skipped without it. Values are never shown.

# %%
from medical_r1.credentials import load_secrets, login_services, secrets_summary

secrets = load_secrets()
print(secrets_summary(secrets))
print("\n".join(login_services()))

# %%
from medical_r1.artifacts import artifact, write_json
from medical_r1.runtime import runtime_record

write_json(artifact(WORK_DIR, "runtime"), runtime_record(runtime, backend, secrets))
print("wrote", artifact(WORK_DIR, "runtime"))
