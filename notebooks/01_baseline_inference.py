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
# # 01 · Baseline: how the base model answers before fine-tuning
#
# Ask the untouched DeepSeek-R1 distill a fixed set of medical questions (English and Chinese) with the
# same prompt that training will use, so notebook 04 can put its answers next to the tuned model's.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/01_baseline_inference.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/01_baseline_inference.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; nothing to attach.
#
# **Reads:** nothing (the model comes from the Hub). **Writes:** `WORK_DIR/answers/base.jsonl`.
# **Time on a T4 (an estimate; not yet measured on one):** about 5-10 minutes for the 8B model (5 questions, up to 1,024 new tokens each).
#
# Sampling follows DeepSeek's recommendation for the R1 distills: temperature 0.6, top_p 0.95, no system prompt.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
MODEL_NAME = "unsloth/DeepSeek-R1-Distill-Llama-8B"  # or unsloth/DeepSeek-R1-Distill-Qwen-1.5B / -7B / -14B
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
MAX_SEQ_LENGTH = 2048  # longest prompt + answer the model is loaded for; 2048 covers >99% of the data
LOAD_IN_4BIT = True  # 4-bit weights: the 8B model fits a 15 GB T4 (ignored on CPU)
TEMPLATE = "r1_chat"  # prompt template: "r1_chat" (the model's own), "alpaca_r1" (seed tutorial), "zh_r1"
MAX_NEW_TOKENS = 1024  # R1 thinks at length; answers cut off before </think> are flagged, not guessed
TEMPERATURE = 0.6  # DeepSeek recommends 0.5-0.7 for the distills
TOP_P = 0.95  # nucleus sampling, DeepSeek's recommended value
DO_SAMPLE = True  # False gives greedy, repeatable answers (R1 distills may then repeat themselves)
GEN_BATCH_SIZE = 0  # questions generated together; 0: the most this GPU holds (128, 64 or 32, printed); on out-of-memory set a smaller number
SEED = 3407  # sampling seed
NUM_GPUS = "auto"  # "auto" uses every GPU (Kaggle's T4 x2: one process each, see below); 1 keeps to one
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
# ## One process per GPU
# With two GPUs (Kaggle's *GPU T4 x2*), the cells below run in two processes, one per GPU: each cell as you see it
# (and as you edit it), in both, and the first process's output shows in the cell. Each writes every other
# batch of answers and both get all of them back, in order: the same answers as one GPU.
# With one GPU (Colab) they run here, as in any notebook. The secrets are read first, so the processes inherit them.
# It stays a notebook: edit a parameter and Run all again (this cell starts the processes again from the values
# above), `!nvidia-smi`, `%pip` and `%%time` work, and Interrupt while nothing runs leaves the processes alone.
# Interrupt during a cell, or a process that fails, stops them all and says so; Run all then starts again
# (docs/two-gpus.md says how it works, and why this way).

# %%
from medical_r1.credentials import load_secrets
from medical_r1.gpu_processes import run_cells_on_all_gpus

load_secrets()
print(run_cells_on_all_gpus(NUM_GPUS, globals()))

# %%
from medical_r1.runtime import setup_backend

runtime, backend = setup_backend(BACKEND)

# %% [markdown]
# ## Load the model
# On a GPU, Unsloth's `FastLanguageModel` loads the weights in 4 bits (the 8B model takes about 6 GB of a
# T4's 15) and `for_inference` switches on its faster generation. Without Unsloth (an older GPU, or the CPU
# in the tests and the demo) `language_model_loader` returns a stand-in with the same calls, built on
# transformers + PEFT, and says so.

# %%
from medical_r1.models import language_model_loader
from medical_r1.runtime import compute_dtype

FastLanguageModel = language_model_loader(backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=MODEL_NAME,
    max_seq_length=MAX_SEQ_LENGTH,
    dtype=compute_dtype(runtime),  # bfloat16 from Ampere on, float16 on a T4, float32 on the CPU
    load_in_4bit=LOAD_IN_4BIT,
)
FastLanguageModel.for_inference(model)

# %% [markdown]
# ## The prompt
# This is exactly the text the model sees: the chat template's BOS, the question, and the generation
# prompt that opens the thought with `<think>\n`. Training appends the chain of thought right after it.

# %%
from medical_r1.generation import QUESTIONS
from src_helpers import render_prompt

print(render_prompt(tokenizer, QUESTIONS[0]["question"], TEMPLATE))

# %% [markdown]
# ## Answers
# The questions are generated together in batches of `GEN_BATCH_SIZE`, left-padded; each answer is split at
# the last `</think>` into the thinking and the answer. An answer still thinking when `MAX_NEW_TOKENS` runs
# out is flagged, not guessed.

# %%
from medical_r1.artifacts import artifact, write_jsonl
from medical_r1.display import answers_table
from medical_r1.generation import GenerationSettings, generate_answers

settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE, temperature=TEMPERATURE, top_p=TOP_P,
                              batch_size=GEN_BATCH_SIZE, seed=SEED)
answers = generate_answers(model, tokenizer, QUESTIONS, TEMPLATE, settings, backend)
write_jsonl(artifact(WORK_DIR, "baseline_answers"), answers)
answers_table(answers)
