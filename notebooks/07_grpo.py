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
# # 07 · Reinforcement learning with verifiable rewards (GRPO)
#
# DeepSeek-R1 learned to reason by reinforcement learning whose reward is whether the final answer is right,
# and HuatuoGPT-o1 (the authors of this series' dataset) added such a stage after supervised fine-tuning. This
# notebook does the same with TRL's `GRPOTrainer`: for each multiple-choice question the model writes several
# answers, each is scored by the rules below, and the adapter moves towards the better ones.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/07_grpo.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/07_grpo.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; *Add Input > Your Work > Notebooks*: your runs of `02_format_dataset`, `03_train` (the notebook copies their files from `/kaggle/input` itself, or says which one is missing).
#
# **Reads:** `WORK_DIR/adapter/` (03) unless `START_FROM = "base"`, `run.json` (02: model, template, length, precision), the
# training items (by default MedQA's USMLE training split from the Hub, CC BY 4.0) and 04's evaluation file (to
# leave out any question it shares).
# **Writes:** `WORK_DIR/grpo_adapter/`, `grpo_checkpoints/`, `grpo_metrics.json`, `grpo_curve.png`.
# **Time on a T4 (an estimate; not yet measured on one):** about 140 s a step for the 8B model at the defaults,
# almost all of it writing the `NUM_GENERATIONS` answers: at a batch above 1 every decode step turns the 4-bit
# weights into fp16 copies, some 31 GB of memory traffic per token on a T4's 320 GB/s. 100 steps take about 4
# hours, in about 8.2 GiB of GPU memory (measured on a bigger GPU answering as a T4 does: lab/BENCHMARKS.md);
# answers that finish before `MAX_COMPLETION_LENGTH` take less. The settings cell prints it for your settings, from
# `medical_r1/t4_estimate.py`. The Qwen distills write their answers without Unsloth's CUDA graphs and take longer.
#
# The rewards (`medical_r1/rewards.py`, tested): correctness as HuatuoGPT-o1's RL stage scores it (1 for the
# right option, 0.1 for a wrong one, 0 for no answer), read by the same rules as 04, only after `</think>`; a
# small format reward for a closed `</think>` followed by a stated answer; and a penalty for an answer that runs
# to the length limit still thinking. 04 also lets the model read an answer the rules cannot; the rewards do not:
# the policy should learn to commit to an option in words. The training items are never 04's questions: the notebook leaves out any it
# shares.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
START_FROM = "adapter"  # "adapter" continues from 03's LoRA adapter; "base" starts a new adapter on MODEL_NAME
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
TRAIN_ITEMS = "GBaker/MedQA-USMLE-4-options"  # a Hub dataset's training split, or a JSON file in 04's schema
GRPO_ITEMS = 0  # how many training items to use; 0 uses all
EVAL_DATA = "https://raw.githubusercontent.com/FreedomIntelligence/HuatuoGPT-o1/main/evaluation/data/eval_data.json"  # 04's file, checked for overlap
NUM_GENERATIONS = 4  # answers written per question; GRPO compares them with each other
MAX_COMPLETION_LENGTH = 1024  # tokens per answer; R1 thinks at length, and an answer cut short earns nothing
GRPO_TEMPERATURE = 0.9  # sampling temperature of the answers: they must differ for GRPO to learn
GRPO_LEARNING_RATE = 5e-6  # small: RL moves a trained adapter gently
GRPO_MAX_STEPS = 100  # optimizer steps
GRPO_BATCH_SIZE = 4  # completions per device step (a multiple of NUM_GENERATIONS)
GRPO_GRAD_ACCUM = 1  # device steps accumulated per update
LORA_R = 16  # adapter rank, used only when starting from the base
LORA_ALPHA = 16  # adapter scale, used only when starting from the base
GRPO_SAVE_STEPS = 20  # checkpoint every this many steps
VLLM_GPU_MEMORY = 0.6  # share of GPU memory vLLM may take, used only when vLLM writes the answers (below)
REPORT_TO = "auto"  # "auto" logs to W&B when WANDB_API_KEY is set; "wandb" or "none"
SEED = 3407  # sampling and data order
RESUME = True  # continue from the last checkpoint in WORK_DIR/grpo_checkpoints
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
# (and as you edit it), in both, and the first process's output shows in the cell. The trainer trains
# data-parallel across them, with the effective batch and schedule of one GPU (each step's answers are split between them).
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
from medical_r1.artifacts import artifact
from medical_r1.benchmarks import load_eval_data
from medical_r1.manifest import read_run_manifest
from medical_r1.params import Params
from medical_r1.rewards import load_items, without_eval_questions
from medical_r1.runtime import setup_backend
from medical_r1.t4_estimate import describe_grpo

run = read_run_manifest(WORK_DIR)  # the settings 02 decided for the whole series (run.json)
print(run)
params = Params(work_dir=WORK_DIR, model_name=run.model_name, start_from=START_FROM, backend=BACKEND,
                max_seq_length=run.max_seq_length, precision=run.precision, load_in_4bit=run.load_in_4bit,
                train_items=TRAIN_ITEMS, grpo_items=GRPO_ITEMS, eval_data=EVAL_DATA, num_generations=NUM_GENERATIONS,
                max_completion_length=MAX_COMPLETION_LENGTH, grpo_temperature=GRPO_TEMPERATURE,
                grpo_learning_rate=GRPO_LEARNING_RATE, grpo_max_steps=GRPO_MAX_STEPS, grpo_batch_size=GRPO_BATCH_SIZE,
                grpo_grad_accum=GRPO_GRAD_ACCUM, lora_r=LORA_R, lora_alpha=LORA_ALPHA, grpo_save_steps=GRPO_SAVE_STEPS,
                vllm_gpu_memory=VLLM_GPU_MEMORY, report_to=REPORT_TO, seed=SEED, resume=RESUME,
                num_gpus=NUM_GPUS)  # checks every value
template = run.template
items = without_eval_questions(load_items(TRAIN_ITEMS, GRPO_ITEMS), load_eval_data(EVAL_DATA, 0, SEED))  # never 04's
runtime, backend = setup_backend(BACKEND, run.precision)
print(describe_grpo(run.model_name, GRPO_BATCH_SIZE, NUM_GENERATIONS, MAX_COMPLETION_LENGTH, GRPO_MAX_STEPS,
                    GRPO_GRAD_ACCUM))

# %% [markdown]
# ## The model
# 03's adapter loads with its base model, and its LoRA tensors keep training; `START_FROM = "base"` adds a new
# adapter instead. Most of a GRPO step is writing the answers. Where the `vllm` package is installed, Unsloth's
# `fast_inference` writes them with vLLM, as Unsloth's own GRPO notebooks do on Kaggle and Colab (this series'
# install leaves vLLM out: it is a large install of its own); otherwise the model's `generate` writes them, with
# Unsloth's CUDA-graph decode step where it graphs the model type (the Llama distills). The graphs need every weight
# on the GPU, so the load keeps the input embeddings there (Unsloth's "auto" would move them to CPU RAM if it judged
# memory short; with the 8B's moved, a GRPO step took 2.5x as long), and the trainer's `generate` calls run with the
# two decode speed-ups 04 uses for its answers (a step 1.25x faster at the 8B default; lab/BENCHMARKS.md). The next
# lines say which.

# %%
from medical_r1.grpo import embedding_offload, grpo_start, rollout_engine, rollouts_with_decode_speedups
from medical_r1.models import language_model_loader
from medical_r1.params import LORA_TARGET_MODULES
from medical_r1.runtime import compute_dtype
from medical_r1.training import weight_snapshot

start_name = grpo_start(WORK_DIR, START_FROM, run)  # 03's adapter folder (checked against run.json), or the base
fast_inference, why = rollout_engine(backend)
print(why)
offload_embedding, why = embedding_offload(start_name, backend)
print(why)
FastLanguageModel = language_model_loader(backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=start_name,
    max_seq_length=run.max_seq_length,
    dtype=compute_dtype(runtime),
    load_in_4bit=run.load_in_4bit,
    fast_inference=fast_inference,  # vLLM writes the answers
    max_lora_rank=LORA_R,  # vLLM's LoRA slots (used only with fast_inference)
    gpu_memory_utilization=VLLM_GPU_MEMORY,
    offload_embedding=offload_embedding,  # False keeps Unsloth's graph decode for the answers (line above)
)
model = FastLanguageModel.get_peft_model(  # on 03's adapter this keeps it (and makes it trainable)
    model,
    r=LORA_R,
    lora_alpha=LORA_ALPHA,
    target_modules=LORA_TARGET_MODULES,
    use_gradient_checkpointing="unsloth",
    random_state=SEED,
    max_seq_length=run.max_seq_length,
)
print(rollouts_with_decode_speedups(model, backend))  # the trainer's generate calls run as 04's generate_answers
before = weight_snapshot(model)  # to check after training that only the LoRA tensors moved

# %% [markdown]
# ## The rewards
# The rewards are the point of GRPO: the model is moved towards the answers they score higher. They are defined in
# `medical_r1/rewards.py` (tested in `tests/test_rewards.py`, where a test also shows 07's trainer learning a reward
# a tiny model can earn); the next cell prints them as they are, to read and to copy into your own. Each gets the
# batch's completions and the dataset's columns and returns one number per completion.

# %%
import inspect

from medical_r1.rewards import correctness_reward, format_reward, length_guard

print("\n".join(inspect.getsource(reward) for reward in (correctness_reward, format_reward, length_guard)))

# %% [markdown]
# What each rule gives a few written answers, before any training: the right option, a wrong one, a hedge, and
# an answer still thinking when it ran out of tokens.

# %%
from medical_r1.grpo import reward_examples

length_guard_reward = length_guard(MAX_COMPLETION_LENGTH)
reward_examples(items[0], [correctness_reward, format_reward, length_guard_reward], MAX_COMPLETION_LENGTH)

# %% [markdown]
# ## The configuration and the trainer
# Every value comes from the parameters cell; `runtime_training_args` adds what depends on the machine (fp16 on
# a T4, 8-bit AdamW on a GPU, CPU mode for the tests). Prompts are rendered by the same template as 03 and 04.

# %%
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from medical_r1.rewards import grpo_rows
from medical_r1.tracking import resolve_report_to
from medical_r1.training import per_process_batch, runtime_training_args, training_callbacks

report_to, why = resolve_report_to(REPORT_TO, WORK_DIR)
print(why)
config = GRPOConfig(
    output_dir=str(artifact(WORK_DIR, "grpo_checkpoints")),
    max_steps=GRPO_MAX_STEPS,
    learning_rate=GRPO_LEARNING_RATE,
    per_device_train_batch_size=per_process_batch(GRPO_BATCH_SIZE, num_generations=NUM_GENERATIONS),  # one GPU's batch
    gradient_accumulation_steps=GRPO_GRAD_ACCUM,
    num_generations=NUM_GENERATIONS,
    max_completion_length=MAX_COMPLETION_LENGTH,
    temperature=GRPO_TEMPERATURE,
    seed=SEED,
    logging_steps=1,
    logging_nan_inf_filter=False,  # the default hides a NaN loss behind earlier values
    save_strategy="steps",
    save_steps=GRPO_SAVE_STEPS,
    save_total_limit=2,
    report_to=report_to,
    **runtime_training_args(backend, runtime, "adamw_8bit"),
)
trainer = GRPOTrainer(
    model=model,
    processing_class=tokenizer,
    args=config,
    train_dataset=Dataset.from_list(grpo_rows(items, tokenizer, template)),
    reward_funcs=[correctness_reward, format_reward, length_guard_reward],
    callbacks=training_callbacks(),
)

# %% [markdown]
# ## Train
# Checkpoints go to `WORK_DIR/grpo_checkpoints`; run the notebook again with the same `WORK_DIR` to resume. A NaN
# or infinite loss stops training with advice, and an out-of-memory error says what to lower.

# %%
from medical_r1.training import resume_checkpoint, training_guards

checkpoint = resume_checkpoint(WORK_DIR, RESUME, "grpo_checkpoints")
with training_guards(trainer, params, "grpo_checkpoints"):  # NaN loss and out-of-memory become advice
    result = trainer.train(resume_from_checkpoint=checkpoint)

# %% [markdown]
# ## What moved
# Mean reward per step (each rule and their sum) and the answers' length; only the LoRA tensors may change.
# Did it help? Run 04 again: it loads this adapter beside 03's and compares base, SFT and SFT + GRPO on the
# same benchmark items, a row per pair.

# %%
from medical_r1.display import show_image
from medical_r1.grpo import save_grpo_outputs

metrics = save_grpo_outputs(WORK_DIR, trainer, model, tokenizer, before, START_FROM)
print(metrics["summary"])
show_image(artifact(WORK_DIR, "grpo_curve"))
