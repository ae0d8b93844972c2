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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/02_format_dataset.ipynb)
#
# **Reads:** nothing (the data comes from the Hub or `DATASET_NAME` as a local path).
# **Writes:** `WORK_DIR/data/train.jsonl`, `val.jsonl`, `stats.json`, `token_lengths.png`.
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
COMPLETION_ONLY_LOSS = True  # loss on CoT + response only; False trains on the question too
SEED = 3407  # decides the train/val split
INSTALL_REQUIREMENTS = "auto"  # "auto" installs requirements.txt's pins on Kaggle/Colab when missing; "never", "always"

# %%
# Colab and Kaggle open a notebook without the rest of the repository: fetch it once (needs internet).
# !test -f src_helpers.py || test -f ../src_helpers.py || test -d medical-r1-notebooks || git clone -q --depth 1 https://github.com/medical-r1/medical-r1-notebooks
import sys

sys.path[:0] = [".", "..", "medical-r1-notebooks"]  # the repo root: here, one folder up, or the clone above
import src_helpers as sh

print(sh.install_requirements(INSTALL_REQUIREMENTS))
tokenizer = sh.load_tokenizer(MODEL_NAME)
rows = sh.load_sft_rows(DATASET_NAME, DATA_CONFIG, MAX_EXAMPLES)
sh.validate_rows(rows)
print(f"{len(rows)} rows loaded and valid (columns {sh.SFT_COLUMNS})")

# %%
records, dropped = sh.format_rows(rows, tokenizer, TEMPLATE, MAX_SEQ_LENGTH, COMPLETION_ONLY_LOSS)
print(f"{len(records)} examples kept; {dropped} dropped for being longer than {MAX_SEQ_LENGTH} tokens")

# %% [markdown]
# ## One formatted example
# The prompt is what inference will send; the completion is what the model learns to write after it.

# %%
print(records[0]["prompt"] + records[0]["completion"])

# %% [markdown]
# ## Token lengths
# With the real tokenizer, English examples average about 680 tokens and none of the English rows we
# measured exceed 2,048, so `MAX_SEQ_LENGTH = 2048` drops almost nothing. Chinese runs about 1.5
# characters per token against English's 4.75.

# %%
stats = sh.dataset_stats(records)
sh.plot_histogram([len(r["input_ids"]) for r in records], MAX_SEQ_LENGTH, sh.artifact(WORK_DIR, "length_histogram"))
sh.stats_table(stats)

# %%
train, val = sh.split_train_val(records, VAL_SIZE, SEED)
sh.write_jsonl(sh.artifact(WORK_DIR, "train_data"), train)
sh.write_jsonl(sh.artifact(WORK_DIR, "val_data"), val)
sh.write_json(sh.artifact(WORK_DIR, "data_stats"), sh.format_record(
    MODEL_NAME, DATASET_NAME, DATA_CONFIG, TEMPLATE, MAX_SEQ_LENGTH, COMPLETION_ONLY_LOSS, len(rows), dropped,
    len(train), len(val), stats))
print(f"train: {len(train)} examples, val: {len(val)} examples, written under {WORK_DIR}/data/")
