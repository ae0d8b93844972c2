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
# # 03 · Train: QLoRA fine-tuning with Unsloth and TRL
#
# Load the model in 4 bits, add LoRA adapters to the attention and MLP projections, and train on the
# formatted chain-of-thought data with TRL's SFTTrainer, watching validation loss as it goes.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/03_train.ipynb)
#
# **Reads:** `WORK_DIR/data/train.jsonl`, `val.jsonl`, `stats.json` (from 02).
# **Writes:** `WORK_DIR/adapter/`, `checkpoints/`, `loss_curve.png`, `train_metrics.json`.
# **Time on a T4 (an estimate; not yet measured on one):** about 25-35 minutes for 60 steps of the 8B model (4 packed rows of up to 2048 tokens per step, about 12 examples).
#
# The defaults are the tutorial's: r=16, alpha=16, dropout 0 on q/k/v/o/gate/up/down, 8-bit AdamW,
# learning rate 2e-4 for 60 steps, seed 3407. A T4 has no bf16, so training runs in fp16 there.
# One change makes it faster: packing. The tutorial pads each batch of 2 examples to the longer one and
# starts a new device step for every 2; we lay whole examples end to end in rows of up to 2,048 tokens, so
# no compute goes to padding and each device step is bigger. Each example still attends only to itself,
# and the loss is the same as without packing (`bench/` and `tests/test_training.py` show both).
# With `WANDB_API_KEY` set (see 00), the run is logged to Weights & Biases and its link printed below.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
MODEL_NAME = "unsloth/DeepSeek-R1-Distill-Llama-8B"  # must be the model whose tokenizer 02 used
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
MAX_SEQ_LENGTH = 2048  # must match 02's; longer examples were dropped there
PRECISION = "auto"  # "auto" trains in bf16 where the GPU has it and fp16 on a T4; "fp16" or "bf16" forces one
GPU_MEMORY_CAP_GIB = 0  # 0 uses the whole GPU; 15 makes a bigger GPU show what fits on a T4
LOAD_IN_4BIT = True  # QLoRA: 4-bit base weights, 16-bit adapters (ignored on CPU)
LORA_R = 16  # adapter rank; 8-64 are common, higher learns more and forgets more
LORA_ALPHA = 16  # adapter scale; alpha equal to r keeps the update scale at 1
LORA_DROPOUT = 0.0  # 0 is what Unsloth optimises for
LEARNING_RATE = 2e-4  # 2e-4 is the tutorial value; 5e-6 to 2e-5 forgets less
MAX_STEPS = 60  # optimizer steps; 60 steps of 4 packed rows see about 720 English examples
PACKING = True  # lay whole examples end to end in rows of MAX_SEQ_LENGTH tokens: no padding, about 3 per row
BATCH_SIZE = 2  # rows per device step (examples when PACKING is off); a T4 fits 2 x 2048 tokens for the 8B
GRAD_ACCUM = 2  # device steps accumulated per update; an update sees BATCH_SIZE x GRAD_ACCUM rows
WARMUP_STEPS = 5  # linear warm-up before the linear decay
WEIGHT_DECAY = 0.01  # AdamW weight decay on the adapters
OPTIM = "adamw_8bit"  # 8-bit AdamW saves memory (plain AdamW on CPU)
EVAL_STEPS = 20  # validation loss every this many steps
SAVE_STEPS = 20  # checkpoint every this many steps
REPORT_TO = "auto"  # "auto" logs to W&B when WANDB_API_KEY is set; "wandb" or "none"
SEED = 3407  # LoRA initialisation and data order
EARLY_STOPPING_PATIENCE = 0  # 0 trains MAX_STEPS; 3 stops after 3 evaluations without a better val loss
RESUME = True  # continue from the last checkpoint in WORK_DIR/checkpoints (after Kaggle's 12-hour stop)
INSTALL_REQUIREMENTS = "auto"  # "auto" installs requirements.txt's pins on Kaggle/Colab when missing; "never", "always"

# %%
# Colab and Kaggle open a notebook without the rest of the repository: fetch it once (needs internet).
# !test -f src_helpers.py || test -f ../src_helpers.py || test -d medical-r1-notebooks || git clone -q --depth 1 https://github.com/medical-r1/medical-r1-notebooks
import sys

sys.path[:0] = [".", "..", "medical-r1-notebooks"]  # the repo root: here, one folder up, or the clone above
import src_helpers as sh

sh.setup_script_run(globals(), sys.argv)  # as a script (torchrun, accelerate launch): --NAME=value overrides
print(sh.install_requirements(INSTALL_REQUIREMENTS))
params = sh.Params(work_dir=WORK_DIR, model_name=MODEL_NAME, backend=BACKEND, max_seq_length=MAX_SEQ_LENGTH,
                   load_in_4bit=LOAD_IN_4BIT, lora_r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                   learning_rate=LEARNING_RATE, max_steps=MAX_STEPS, packing=PACKING, batch_size=BATCH_SIZE,
                   grad_accum=GRAD_ACCUM, warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY, optim=OPTIM,
                   eval_steps=EVAL_STEPS, save_steps=SAVE_STEPS, report_to=REPORT_TO, seed=SEED, precision=PRECISION,
                   gpu_memory_cap_gib=GPU_MEMORY_CAP_GIB, early_stopping_patience=EARLY_STOPPING_PATIENCE)
train, val = sh.load_formatted_data(WORK_DIR, MODEL_NAME, MAX_SEQ_LENGTH)
sh.load_secrets()
runtime, backend = sh.setup_backend(BACKEND, PRECISION, GPU_MEMORY_CAP_GIB)

# %%
model, tokenizer = sh.load_model_and_tokenizer(MODEL_NAME, backend, runtime, MAX_SEQ_LENGTH, LOAD_IN_4BIT)
model = sh.add_lora(model, backend, params)
before = sh.weight_snapshot(model)
trainer = sh.make_trainer(model, tokenizer, train, val, params, backend, runtime)
print(sh.describe_training(trainer, train, val))

# %% [markdown]
# ## Train
# Checkpoints go to `WORK_DIR/checkpoints` every `SAVE_STEPS` steps. Kaggle stops a session after 12 hours:
# run this notebook again with the same `WORK_DIR` and it resumes from the last checkpoint by itself.
# A NaN or infinite loss stops training with advice, and an out-of-memory error says what to lower.

# %%
result = sh.train(trainer, params, RESUME)

# %% [markdown]
# ## Did it learn?
# Training loss should fall over the first steps; validation loss (red) is the honest number, measured on
# held-out examples. Only the LoRA tensors may change: the base weights stay frozen.

# %%
metrics = sh.save_training_outputs(WORK_DIR, trainer, model, tokenizer, params, backend, before, result)
print(sh.train_summary(metrics))
sh.show_image(sh.artifact(WORK_DIR, "loss_curve"))
