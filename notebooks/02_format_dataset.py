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
# # 02 · Format the dataset: prompt + chain of thought + answer
#
# Load FreedomIntelligence/medical-o1-reasoning-SFT (or a local file in the same schema), check every row,
# turn each into token ids with the model's own chat template, look at the lengths, and split off a
# validation set.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/02_format_dataset.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/02_format_dataset.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: none needed (CPU); *Internet*: on; secrets under *Add-ons > Secrets*; nothing to attach.
#
# **Reads:** nothing (the data comes from the Hub or `DATASET_NAME` as a local path).
# **Writes:** `WORK_DIR/data/train.jsonl`, `val.jsonl`, `stats.json`, `token_lengths.png`, and `run.json`: the
# settings 03-07 share (model, maximum length, template, precision, 4-bit), decided here once.
# **Time on a T4 (an estimate; not yet measured on one):** 1-2 minutes for 2,000 rows.
#
# Each example is `prompt + Complex_CoT + "\n</think>\n\n" + Response + eos`, where the prompt is the
# model's chat template with the generation prompt (it ends `<｜Assistant｜><think>\n`). Three traps the
# usual tutorials fall into are avoided here and tested in `tests/`:
# - rendering the whole conversation through the DeepSeek template drops the chain of thought
#   (the template keeps only the text after `</think>`), so we append the completion ourselves;
# - the template writes a BOS and the tokenizer adds another, so we tokenise without special tokens;
# - pad = eos in these tokenizers, so the final eos must stay a label or the model never learns to stop.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
MODEL_NAME = "unsloth/DeepSeek-R1-Distill-Llama-8B"  # the tokenizer must be the one you will train
DATASET_NAME = "FreedomIntelligence/medical-o1-reasoning-SFT"  # Hub name, or a local .json/.jsonl/.csv or folder
DATA_CONFIG = "en"  # "en" (25k rows), "zh" (Chinese), "en_mix" or "zh_mix"
MAX_EXAMPLES = 2000  # rows to use; 0 uses all (about 25k; 60 steps of batch 8 see 480)
VAL_SIZE = 100  # rows held out for validation loss, chosen by SEED
TEMPLATE = "r1_chat"  # "r1_chat" (the model's own), "alpaca_r1" (seed tutorial), "zh_r1" (Chinese)
MAX_SEQ_LENGTH = 2048  # longer examples are dropped and counted, never cut (a cut example loses its eos)
PRECISION = "auto"  # for 03-07: "auto" is bf16 where the GPU has it and fp16 on a T4; "fp16" or "bf16" forces one
LOAD_IN_4BIT = True  # for 03-07: QLoRA's 4-bit base weights, 16-bit adapters (ignored on CPU)
COMPLETION_ONLY_LOSS = True  # loss on CoT + response only; False trains on the question too
SEED = 3407  # decides the train/val split
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
# ## Load and check the rows
# Every row must have a non-empty `Question`, `Complex_CoT` and `Response`; the first bad one is named
# with its row number and column.

# %%
from medical_r1.data import SFT_COLUMNS, load_sft_rows, validate_rows
from medical_r1.models import load_tokenizer

tokenizer = load_tokenizer(MODEL_NAME)
rows = load_sft_rows(DATASET_NAME, DATA_CONFIG, MAX_EXAMPLES)
validate_rows(rows)
print(f"{len(rows)} rows loaded and valid (columns {SFT_COLUMNS})")

# %% [markdown]
# ## One example, rendered
# The prompt is what inference will send: the template's BOS, the question, and `<think>\n`.

# %%
from src_helpers import encode_example, render_completion, render_prompt

example = rows[0]
print(render_prompt(tokenizer, example["Question"], TEMPLATE))

# %% [markdown]
# The completion is what the model learns to write after the prompt: the chain of thought, `</think>`, the
# answer, and the eos token that teaches it to stop.

# %%
print(render_completion(example["Complex_CoT"], example["Response"]) + tokenizer.eos_token)

# %% [markdown]
# ## The same example as token ids
# Prompt and completion are tokenised separately and joined, so the inference prompt is exactly the start of
# the training ids. A label of -100 means "no loss here": the prompt is masked (unless
# `COMPLETION_ONLY_LOSS = False`), and the last row is the eos, which is a label.

# %%
from medical_r1.data import token_table

encoded = encode_example(tokenizer, example, TEMPLATE, COMPLETION_ONLY_LOSS)
print(f"{len(encoded['input_ids'])} tokens: {encoded['prompt_len']} of prompt, "
      f"{len(encoded['input_ids']) - encoded['prompt_len']} of completion")
token_table(tokenizer, encoded)

# %% [markdown]
# ## Format every row
# Examples longer than `MAX_SEQ_LENGTH` are dropped and counted, never cut (a cut example loses its eos).

# %%
from medical_r1.data import format_rows

records, dropped = format_rows(rows, tokenizer, TEMPLATE, MAX_SEQ_LENGTH, COMPLETION_ONLY_LOSS)
print(f"{len(records)} examples kept; {dropped} dropped for being longer than {MAX_SEQ_LENGTH} tokens")

# %% [markdown]
# ## Token lengths
# With the real tokenizer, English examples average about 680 tokens and none of the English rows we
# measured exceed 2,048, so `MAX_SEQ_LENGTH = 2048` drops almost nothing. Chinese runs about 1.5
# characters per token against English's 4.75.

# %%
from medical_r1.artifacts import artifact
from medical_r1.data import dataset_stats
from medical_r1.display import plot_histogram, stats_table

stats = dataset_stats(records)
plot_histogram([len(r["input_ids"]) for r in records], MAX_SEQ_LENGTH, artifact(WORK_DIR, "length_histogram"))
stats_table(stats)

# %% [markdown]
# ## Split and save
# The validation rows are drawn by `SEED`, so 03 and 04 score the same held-out examples.

# %%
from medical_r1.artifacts import write_json, write_jsonl
from medical_r1.data import format_record, split_train_val

train, val = split_train_val(records, VAL_SIZE, SEED)
write_jsonl(artifact(WORK_DIR, "train_data"), train)
write_jsonl(artifact(WORK_DIR, "val_data"), val)
write_json(artifact(WORK_DIR, "data_stats"), format_record(
    MODEL_NAME, DATASET_NAME, DATA_CONFIG, TEMPLATE, MAX_SEQ_LENGTH, COMPLETION_ONLY_LOSS, len(rows), dropped,
    len(train), len(val), stats))
print(f"train: {len(train)} examples, val: {len(val)} examples, written under {WORK_DIR}/data/")

# %% [markdown]
# ## The run manifest
# The settings every later notebook shares are decided here, once: 03-07 read them from `run.json` instead of
# carrying their own copies, so a changed `MAX_SEQ_LENGTH` or `MODEL_NAME` cannot differ between the notebook that
# formatted the data and those that train, evaluate and chat. To change one, change it here and run 02 again.

# %%
from medical_r1.manifest import write_run_manifest

print(write_run_manifest(WORK_DIR, model_name=MODEL_NAME, max_seq_length=MAX_SEQ_LENGTH, template=TEMPLATE,
                         precision=PRECISION, load_in_4bit=LOAD_IN_4BIT))
