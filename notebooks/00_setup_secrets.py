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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/00_setup_secrets.ipynb)
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
# Colab and Kaggle open a notebook without the rest of the repository: fetch it once (needs internet).
# !test -f src_helpers.py || test -f ../src_helpers.py || test -d medical-r1-notebooks || git clone -q --depth 1 https://github.com/medical-r1/medical-r1-notebooks
import sys

sys.path[:0] = [".", "..", "medical-r1-notebooks"]  # the repo root: here, one folder up, or the clone above
import src_helpers as sh

print(sh.install_requirements(INSTALL_REQUIREMENTS))

# %% [markdown]
# ## The runtime and the backend
# Unsloth needs an NVIDIA GPU of compute capability 7.0 or newer (T4, L4, A100, H100). On an older GPU
# the series falls back to plain transformers + PEFT with bitsandbytes 4-bit; on a machine without a GPU
# it runs on the CPU in float32, which is only sensible for the tiny demo model.

# %%
runtime, backend = sh.setup_backend(BACKEND)

# %% [markdown]
# ## Secrets
# Each line says where a secret was found, or what will be skipped without it. Values are never shown.

# %%
secrets = sh.load_secrets()
print(sh.secrets_summary(secrets))
print("\n".join(sh.login_services()))

# %%
sh.write_json(sh.artifact(WORK_DIR, "runtime"), sh.runtime_record(runtime, backend, secrets))
print("wrote", sh.artifact(WORK_DIR, "runtime"))
