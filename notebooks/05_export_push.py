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
# # 05 · Export: merged 16-bit model, and an optional push to the Hub
#
# Merge the LoRA adapter into the base weights, check that the merged model gives the same logits as
# base + adapter, and push to the Hugging Face Hub only when asked and a token is set.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/05_export_push.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/05_export_push.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; *Add Input > Your Work > Notebooks*: your runs of `02_format_dataset`, `03_train`, `04_compare` (the notebook copies their files from `/kaggle/input` itself, or says which one is missing).
#
# **Reads:** `WORK_DIR/adapter/`, `train_metrics.json` (03), `data/stats.json` (02), `verdict.json` (04, for the card). **Writes:** `WORK_DIR/merged_16bit/`, `gguf/` (when asked), `export.json`.
# **Time on a T4 (an estimate; not yet measured on one):** about 10-15 minutes for the 8B model, mostly loading 16 GB twice (the merged model is about 16 GB on disk).
#
# Pushing needs `HF_TOKEN` (a write token) as a secret, `PUSH_TO_HUB = True` and `HUB_REPO_ID`.
# Repositories are created private unless `HUB_PRIVATE = False`.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
SAVE_MERGED = True  # write the merged 16-bit model (about 2 bytes per parameter on disk)
PUSH_TO_HUB = False  # True pushes the adapter (and the merged model if SAVE_MERGED) to the Hub
HUB_REPO_ID = ""  # "your-name/DeepSeek-R1-Medical"; the adapter goes to "<HUB_REPO_ID>-lora"
HUB_PRIVATE = True  # create the Hub repositories as private
GGUF_QUANTIZATIONS = []  # ["q4_k_m", "q8_0"] also writes GGUF files and Ollama Modelfiles (Unsloth and llama.cpp)
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
from medical_r1.credentials import load_secrets
from medical_r1.params import Params
from medical_r1.publish import hub_upload_plan
from medical_r1.install import install_requirements
from medical_r1.runtime import setup_backend

print(install_requirements(INSTALL_REQUIREMENTS))
params = Params(work_dir=WORK_DIR, backend=BACKEND, save_merged=SAVE_MERGED, push_to_hub=PUSH_TO_HUB,
                hub_repo_id=HUB_REPO_ID, hub_private=HUB_PRIVATE, gguf_quantizations=GGUF_QUANTIZATIONS)
load_secrets()
upload_plan = hub_upload_plan(params)  # refuses now, before the merge, when a push is asked for without a token
runtime, backend = setup_backend(BACKEND)

# %% [markdown]
# ## Merge
# The adapter is merged into the 16-bit base weights in CPU RAM (16 GB for the 8B model; Kaggle has 30):
# `PeftModel.from_pretrained(base, adapter).merge_and_unload()`, then `save_pretrained`. The GPU is not
# needed. Unsloth's `save_pretrained_merged` scored exactly the same in the check below when we measured both
# on a GPU (lab/gpu/RESULTS.md); PEFT's merge runs on every backend and keeps this process free of Unsloth's
# patches, which break a plain model on the CPU. The disk is checked first, so a merge that cannot fit is
# refused before anything is written.

# %%
from medical_r1.export import check_disk_space, merged_size_bytes, save_merged

if SAVE_MERGED:
    check_disk_space(WORK_DIR, merged_size_bytes(WORK_DIR, runtime))
    save_merged(WORK_DIR, runtime)

# %% [markdown]
# ## Verify
# The merged model must predict what base + adapter predicts: both are run on probe prompts in the same
# format, and a merge that differs by more than rounding explains is refused and nothing is pushed. In
# float32 (CPU) the check is strict; in bfloat16 it allows 15% of the largest logit, a coarse guard
# calibrated only on random weights (see lab/gpu/RESULTS.md).

# %%
from medical_r1.export import merge_report, no_merge_report, verify_merge

report = no_merge_report()
if SAVE_MERGED:
    report = merge_report(WORK_DIR, verify_merge(WORK_DIR, runtime))
print(report["summary"])

# %% [markdown]
# ## GGUF for llama.cpp and Ollama (optional)
# With `GGUF_QUANTIZATIONS`, Unsloth writes quantised GGUF files (q4_k_m is about 4.9 GB for the 8B model,
# q8_0 about 8.5 GB) and each gets an Ollama Modelfile whose chat template is the training prompt:
# `ollama create medical-r1 -f Modelfile.<name>` in `WORK_DIR/gguf`. Unsloth fetches and builds llama.cpp on
# first use; where it cannot (no internet, no compiler) the cell says so and skips, and the rest is unaffected.

# %%
from medical_r1.gguf import export_gguf

report["gguf"] = export_gguf(WORK_DIR, backend, runtime, GGUF_QUANTIZATIONS)
print(report["gguf"]["skipped"] or "\n".join(report["gguf"]["files"]))

# %% [markdown]
# ## Model card and push
# The card (README.md beside the adapter and the merged model) is built from this run's saved files:
# base model, data, training settings, losses, and 04's verdict table when it exists. The push uploads
# the adapter to `<HUB_REPO_ID>-lora` and the verified merged model to `HUB_REPO_ID`; a failure keeps the
# local files, so the cell can simply be run again.

# %%
from medical_r1.artifacts import artifact, write_json
from medical_r1.publish import model_card, push_to_hub, write_card

write_card(WORK_DIR, model_card(WORK_DIR, HUB_REPO_ID), report)
report["pushed"] = push_to_hub(params, upload_plan, report)
write_json(artifact(WORK_DIR, "export_report"), report)
print("pushed:", report["pushed"] or "nothing (PUSH_TO_HUB is False)")
