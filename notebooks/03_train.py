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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/03_train.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/03_train.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; *Add Input > Your Work > Notebooks*: your runs of `02_format_dataset` (the notebook copies their files from `/kaggle/input` itself, or says which one is missing).
#
# **Reads:** `WORK_DIR/run.json` (02: model, maximum length, precision, 4-bit), `data/train.jsonl`, `val.jsonl`, `stats.json` (02).
# **Writes:** `WORK_DIR/adapter/`, `checkpoints/`, `loss_curve.png`, `train_metrics.json`.
# **Time on a T4 (an estimate; not yet measured on one):** about 21 minutes for 60 steps of the 8B model (4 packed rows of up to 2048 tokens per step, about 12 examples), plus loading and saving. The settings cell prints it for your settings, from `medical_r1/t4_estimate.py`: the training rate measured on a bigger GPU, scaled to a T4's fp16 matmul rate.
#
# The defaults are the tutorial's: r=16, alpha=16, dropout 0 on q/k/v/o/gate/up/down, 8-bit AdamW,
# learning rate 2e-4 for 60 steps, seed 3407. A T4 has no bf16, so training runs in fp16 there.
# One change makes it faster: packing. The tutorial pads each batch of 2 examples to the longer one and
# starts a new device step for every 2; we lay whole examples end to end in rows of up to 2,048 tokens, so
# no compute goes to padding and each device step is bigger. Each example still attends only to itself,
# and the loss is the same as without packing (`lab/bench/` and `tests/test_training.py` show both).
# With `WANDB_API_KEY` set (see 00), the run is logged to Weights & Biases and its link printed below.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
GPU_MEMORY_CAP_GIB = 0  # 0 uses the whole GPU; 15 makes a bigger GPU show what fits on a T4
LORA_R = 16  # adapter rank; 8-64 are common, higher learns more and forgets more
LORA_ALPHA = 16  # adapter scale; alpha equal to r keeps the update scale at 1
LORA_DROPOUT = 0.0  # 0 is what Unsloth optimises for
LEARNING_RATE = 2e-4  # 2e-4 is the tutorial value; 5e-6 to 2e-5 forgets less
MAX_STEPS = 60  # optimizer steps; 60 steps of 4 packed rows see about 720 English examples
PACKING = True  # lay whole examples end to end in rows of MAX_SEQ_LENGTH tokens: no padding, about 3 per row
BATCH_SIZE = 2  # rows per device step (examples when PACKING is off); a T4 fits 2 x 2048 tokens for the 8B
GRAD_ACCUM = 2  # device steps accumulated per update; an update sees BATCH_SIZE x GRAD_ACCUM rows
GRADIENT_CHECKPOINTING = "auto"  # "auto" recomputes activations only where free GPU memory is short (a T4); "on", "off"
WARMUP_STEPS = 5  # linear warm-up before the linear decay
WEIGHT_DECAY = 0.01  # AdamW weight decay on the adapters
OPTIM = "adamw_8bit"  # 8-bit AdamW saves memory (plain AdamW on CPU)
EVAL_STEPS = 20  # validation loss every this many steps
SAVE_STEPS = 20  # checkpoint every this many steps
REPORT_TO = "auto"  # "auto" logs to W&B when WANDB_API_KEY is set; "wandb" or "none"
SEED = 3407  # LoRA initialisation and data order
EARLY_STOPPING_PATIENCE = 0  # 0 trains MAX_STEPS; 3 stops after 3 evaluations without a better val loss
RESUME = True  # continue from the last checkpoint in WORK_DIR/checkpoints (after Kaggle's 12-hour stop)
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
from medical_r1.runtime import setup_script_run

setup_script_run(globals(), sys.argv)  # as a script (torchrun, accelerate launch): --NAME=value overrides
print(install_requirements(INSTALL_REQUIREMENTS))

# %% [markdown]
# ## One process per GPU
# With two GPUs (Kaggle's *GPU T4 x2*), the cells below run in two processes, one per GPU: each cell as you see it
# (and as you edit it), in both, and the first process's output shows in the cell. The trainer trains
# data-parallel across them, with the effective batch and schedule of one GPU (`GRAD_ACCUM` is split between them).
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
from medical_r1.data import load_formatted_data
from medical_r1.manifest import read_run_manifest
from medical_r1.params import Params
from medical_r1.runtime import setup_backend
from medical_r1.t4_estimate import describe_training

run = read_run_manifest(WORK_DIR)  # the settings 02 decided for the whole series (run.json)
print(run)
params = Params(work_dir=WORK_DIR, model_name=run.model_name, backend=BACKEND, max_seq_length=run.max_seq_length,
                load_in_4bit=run.load_in_4bit, precision=run.precision, lora_r=LORA_R, lora_alpha=LORA_ALPHA,
                lora_dropout=LORA_DROPOUT, learning_rate=LEARNING_RATE, max_steps=MAX_STEPS, packing=PACKING,
                batch_size=BATCH_SIZE, grad_accum=GRAD_ACCUM, gradient_checkpointing=GRADIENT_CHECKPOINTING,
                warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY, optim=OPTIM, eval_steps=EVAL_STEPS,
                save_steps=SAVE_STEPS, report_to=REPORT_TO, seed=SEED, gpu_memory_cap_gib=GPU_MEMORY_CAP_GIB,
                early_stopping_patience=EARLY_STOPPING_PATIENCE, num_gpus=NUM_GPUS)  # checks every value
train, val = load_formatted_data(WORK_DIR, run.model_name, run.max_seq_length)
runtime, backend = setup_backend(BACKEND, run.precision, GPU_MEMORY_CAP_GIB)
print(describe_training(run.model_name, MAX_STEPS, BATCH_SIZE, GRAD_ACCUM, run.max_seq_length, PACKING))

# %% [markdown]
# ## Load the model in 4 bits
# On a GPU, Unsloth's `FastLanguageModel` (on an older GPU or the CPU, a transformers + PEFT stand-in with the
# same calls, which says so).

# %%
from medical_r1.models import language_model_loader
from medical_r1.runtime import compute_dtype

FastLanguageModel = language_model_loader(backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=run.model_name,
    max_seq_length=run.max_seq_length,
    dtype=compute_dtype(runtime),  # bfloat16 from Ampere on, float16 on a T4, float32 on the CPU
    load_in_4bit=run.load_in_4bit,
)

# %% [markdown]
# ## Add LoRA adapters
# Small trainable matrices beside the frozen attention and MLP projections; only they are trained and saved.
# Training keeps each layer's activations for the backward pass unless they are recomputed there (gradient
# checkpointing): recomputing costs time, keeping them costs memory. `GRADIENT_CHECKPOINTING = "auto"` keeps them
# only where the GPU's free memory holds them (not on a T4) and says which it chose.

# %%
from medical_r1.params import LORA_TARGET_MODULES
from medical_r1.training import choose_gradient_checkpointing, weight_snapshot

checkpointing, why = choose_gradient_checkpointing(GRADIENT_CHECKPOINTING, model, backend, BATCH_SIZE,
                                                   run.max_seq_length)
print(why)
model = FastLanguageModel.get_peft_model(
    model,
    r=LORA_R,
    lora_alpha=LORA_ALPHA,
    lora_dropout=LORA_DROPOUT,
    target_modules=LORA_TARGET_MODULES,  # q, k, v, o, gate, up and down projections
    bias="none",
    use_gradient_checkpointing=checkpointing,  # "unsloth" recomputes activations in the backward pass (a T4)
    random_state=SEED,
    max_seq_length=run.max_seq_length,
)
before = weight_snapshot(model)  # to check after training that only the LoRA tensors moved

# %% [markdown]
# ## The training configuration
# Every value comes from the parameters cell. `runtime_training_args` adds only what depends on the machine:
# fp16 on a T4 or bf16 from Ampere on, 8-bit AdamW on a GPU (32-bit on the CPU), and CPU mode for the tests.
# Packing lays whole examples end to end in rows of up to `MAX_SEQ_LENGTH` tokens with no padding; each
# example attends only to itself (position ids restart at 0), and no example is cut: 02 dropped longer ones.

# %%
from trl import SFTConfig, SFTTrainer

from medical_r1.artifacts import artifact
from medical_r1.tracking import resolve_report_to
from medical_r1.training import per_process_grad_accum, runtime_training_args

report_to, why = resolve_report_to(REPORT_TO, WORK_DIR)
print(why)
config = SFTConfig(
    output_dir=str(artifact(WORK_DIR, "checkpoints")),
    max_steps=MAX_STEPS,
    learning_rate=LEARNING_RATE,
    per_device_train_batch_size=BATCH_SIZE,
    per_device_eval_batch_size=BATCH_SIZE,
    gradient_accumulation_steps=per_process_grad_accum(GRAD_ACCUM, batch_size=BATCH_SIZE),  # split across GPUs
    warmup_steps=WARMUP_STEPS,
    lr_scheduler_type="linear",
    weight_decay=WEIGHT_DECAY,
    seed=SEED,
    data_seed=SEED,
    max_length=run.max_seq_length,
    packing=PACKING,
    packing_strategy="bfd",  # best-fit decreasing: a fixed order, few rows
    logging_steps=1,
    logging_nan_inf_filter=False,  # the default hides a NaN loss behind earlier values
    eval_strategy="steps" if val else "no",
    eval_steps=EVAL_STEPS,
    save_strategy="steps",
    save_steps=SAVE_STEPS,
    save_total_limit=2,
    load_best_model_at_end=EARLY_STOPPING_PATIENCE > 0,  # early stopping keeps the best adapter
    metric_for_best_model="eval_loss" if EARLY_STOPPING_PATIENCE else None,
    greater_is_better=False,
    report_to=report_to,
    dataset_num_proc=None,
    **runtime_training_args(backend, runtime, OPTIM),
)

# %% [markdown]
# ## The trainer
# The data are already token ids and labels (02), so TRL adds no BOS, eos or masking of its own. The
# callbacks stop at a NaN or infinite loss, time each step, and stop early when `EARLY_STOPPING_PATIENCE` is set.

# %%
from medical_r1.data import records_to_dataset
from medical_r1.training import describe_training, training_callbacks

trainer = SFTTrainer(
    model=model,
    args=config,
    processing_class=tokenizer,
    train_dataset=records_to_dataset(train),
    eval_dataset=records_to_dataset(val) if val else None,
    callbacks=training_callbacks(EARLY_STOPPING_PATIENCE),
)
print(describe_training(trainer, train, val))

# %% [markdown]
# ## Train
# Checkpoints go to `WORK_DIR/checkpoints` every `SAVE_STEPS` steps. Kaggle stops a session after 12 hours:
# run this notebook again with the same `WORK_DIR` and it resumes from the last checkpoint by itself.
# A NaN or infinite loss stops training with advice, and an out-of-memory error says what to lower.

# %%
from medical_r1.training import resume_checkpoint, training_guards

checkpoint = resume_checkpoint(WORK_DIR, RESUME)
with training_guards(trainer, params):  # NaN loss and out-of-memory become advice; peak memory is measured
    result = trainer.train(resume_from_checkpoint=checkpoint)

# %% [markdown]
# ## Did it learn?
# Training loss should fall over the first steps; validation loss (red) is the honest number, measured on
# held-out examples. Only the LoRA tensors may change: the base weights stay frozen.

# %%
from medical_r1.display import show_image
from medical_r1.training import save_training_outputs, train_summary

metrics = save_training_outputs(WORK_DIR, trainer, model, tokenizer, params, backend, before, result)
print(train_summary(metrics))
show_image(artifact(WORK_DIR, "loss_curve"))
