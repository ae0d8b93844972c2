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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/01_baseline_inference.ipynb)
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
GEN_BATCH_SIZE = 32  # questions generated together (16x the one-at-a-time speed on an H200); lower it on out-of-memory
SEED = 3407  # sampling seed
INSTALL_REQUIREMENTS = "auto"  # "auto" installs requirements.txt's pins on Kaggle/Colab when missing; "never", "always"

# %%
# Colab and Kaggle open a notebook without the rest of the repository: fetch it once (needs internet).
# !test -f src_helpers.py || test -f ../src_helpers.py || test -d medical-r1-notebooks || git clone -q --depth 1 https://github.com/medical-r1/medical-r1-notebooks
import sys

sys.path[:0] = [".", "..", "medical-r1-notebooks"]  # the repo root: here, one folder up, or the clone above
import src_helpers as sh

print(sh.install_requirements(INSTALL_REQUIREMENTS))
runtime, backend = sh.setup_backend(BACKEND)

# %%
model, tokenizer = sh.load_model_and_tokenizer(MODEL_NAME, backend, runtime, MAX_SEQ_LENGTH, LOAD_IN_4BIT)

# %% [markdown]
# ## The prompt
# This is exactly the text the model sees: the chat template's BOS, the question, and the generation
# prompt that opens the thought with `<think>\n`. Training appends the chain of thought right after it.

# %%
print(sh.render_prompt(tokenizer, sh.QUESTIONS[0]["question"], TEMPLATE))

# %%
answers = sh.generate_answers(model, tokenizer, sh.QUESTIONS, TEMPLATE, MAX_NEW_TOKENS, TEMPERATURE, TOP_P,
                              DO_SAMPLE, GEN_BATCH_SIZE, SEED, backend)
sh.write_jsonl(sh.artifact(WORK_DIR, "baseline_answers"), answers)
sh.answers_table(answers)
