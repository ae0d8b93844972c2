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
# # 04 · Compare: base vs fine-tuned
#
# Answer the same questions as 01 with the fine-tuned adapter, show both answers side by side, and
# measure validation loss with and without the adapter on the held-out split.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/medical-r1/medical-r1-notebooks/blob/main/notebooks/04_compare.ipynb) [![Open In Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/medical-r1/medical-r1-notebooks/blob/main/notebooks/04_compare.ipynb)
#
# **On Kaggle:** *Settings > Accelerator*: GPU T4 x2; *Internet*: on; secrets under *Add-ons > Secrets*; *Add Input > Your Work > Notebooks*: your runs of `01_baseline_inference`, `02_format_dataset`, `03_train` (the notebook copies their files from `/kaggle/input` itself, or says which one is missing).
#
# **Reads:** `WORK_DIR/run.json` and `data/val.jsonl` (02), `adapter/` and `train_metrics.json` (03), `answers/base.jsonl` (01).
# **Writes:** `WORK_DIR/answers/tuned.jsonl`, `comparison.html`, `verdict.json`/`.html`, `verdict_pairs.json`/`.html`
# (base, SFT and, once 07 has run, SFT + GRPO), `compare_metrics.json`, and as it goes `eval/answers.jsonl` with
# `eval/manifest.json` (a rerun continues from them).
# **Time on a T4 (an estimate; not yet measured on one):** the benchmarks take what `EVAL_MINUTES` gives them (60)
# or less, about 400 items per model for the 8B model with every answer at its 1,024-token limit (the plan cell prints
# it for your settings, from `medical_r1/t4_estimate.py`); the rest about 5-10 minutes.
#
# Lower validation loss means the tuned model finds the reference reasoning more likely; it does not
# by itself mean the answers are more correct. Read the answers, and do not trust one question.

# %% tags=["parameters"]
WORK_DIR = "runs/medical-r1"  # every notebook reads and writes its files under this folder
BACKEND = "auto"  # "auto", "unsloth", "transformers" or "cpu"
MAX_NEW_TOKENS = 1024  # keep equal to 01's so the two answers are comparable
TEMPERATURE = 0.6  # keep equal to 01's
TOP_P = 0.95  # keep equal to 01's
DO_SAMPLE = True  # keep equal to 01's
GEN_BATCH_SIZE = 0  # questions generated together; 0: the most this GPU holds (128, 64 or 32, printed); on out-of-memory set a smaller number
SEED = 3407  # sampling seed, and which benchmark items are drawn
EVAL_DATA = "https://raw.githubusercontent.com/FreedomIntelligence/HuatuoGPT-o1/main/evaluation/data/eval_data.json"  # or a local file in its schema
EVAL_MINUTES = 60  # the benchmarks stop when decided or before a round would overrun this (about 400 items per model on a T4, estimated); more minutes, smaller changes seen
EVAL_ITEMS = 0  # at most this many items per model; 0: all 8,381 (the time budget stops it first)
EVAL_DECIDE = "headline"  # stop once "headline" (all benchmarks together) is decided, or "every" benchmark row too
EVAL_GREEDY = True  # greedy decoding for the benchmarks, so a rerun scores the same; False samples
EVAL_MAX_NEW_TOKENS = 1024  # answers still thinking at this length count as "unfinished", never guessed
EVAL_SIMILARITY = False  # True reads an answer naming no option as its most similar option (counted apart)
EVAL_MODEL_READER = 0.5  # where the rules read no answer, the model reads its own, accepted at this probability or above (counted apart); 0 turns it off
ROUGE_ITEMS = 10  # validation questions whose answers are scored by ROUGE-L against the reference
JUDGE_MODEL = ""  # an LLM judge, e.g. "gpt-4o-mini", compares the ROUGE answers blind; empty keeps it off
JUDGE_BASE_URL = "https://api.openai.com/v1"  # any OpenAI-compatible endpoint; the key is the JUDGE_API_KEY secret
REPORT_TO = "auto"  # "auto" logs the verdict to 03's W&B run when WANDB_API_KEY is set; "wandb" or "none"
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
from medical_r1.artifacts import read_jsonl, require_artifact
from medical_r1.manifest import check_trained_as_run, read_run_manifest
from medical_r1.runtime import setup_backend

base_answers = read_jsonl(require_artifact(WORK_DIR, "baseline_answers"))
val = read_jsonl(require_artifact(WORK_DIR, "val_data"))
run = read_run_manifest(WORK_DIR)  # the settings 02 decided for the whole series (run.json)
print(run)
check_trained_as_run(run, WORK_DIR)  # 03's adapter belongs to this run's model
template = run.template
adapter_dir = require_artifact(WORK_DIR, "adapter")
runtime, backend = setup_backend(BACKEND, run.precision)

# %% [markdown]
# ## Load the base model with the adapter
# `from_pretrained` on the adapter folder loads the base model it was trained on, with the adapter on top.
# Switching the adapter off (`model.disable_adapter()`) gives back the base model, so one loaded model
# answers as both.

# %%
from medical_r1.models import language_model_loader
from medical_r1.runtime import compute_dtype

FastLanguageModel = language_model_loader(backend)
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=str(adapter_dir),
    max_seq_length=run.max_seq_length,
    dtype=compute_dtype(runtime),
    load_in_4bit=run.load_in_4bit,
)
FastLanguageModel.for_inference(model)
base_name = model.peft_config["default"].base_model_name_or_path

# %% [markdown]
# ## The tuned model's answers to 01's questions

# %%
from medical_r1.artifacts import artifact, write_jsonl
from medical_r1.generation import QUESTIONS, GenerationSettings, generate_answers

settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE, temperature=TEMPERATURE, top_p=TOP_P,
                              batch_size=GEN_BATCH_SIZE, seed=SEED)  # as 01 answered them
tuned_answers = generate_answers(model, tokenizer, QUESTIONS, template, settings, backend)
write_jsonl(artifact(WORK_DIR, "tuned_answers"), tuned_answers)

# %% [markdown]
# ## Validation loss, base vs tuned
# The same held-out examples, scored once with the adapter switched off (the base model) and once with it on.

# %%
from medical_r1.artifacts import write_text
from medical_r1.generation import base_vs_tuned_loss, comparison_html, comparison_rows

losses = base_vs_tuned_loss(model, val)
rows = comparison_rows(base_answers, tuned_answers)
write_text(artifact(WORK_DIR, "comparison_html"), comparison_html(rows, losses))
print(f"validation loss: base {losses['base_val_loss']:.4f} -> tuned {losses['tuned_val_loss']:.4f}")

# %%
from medical_r1.display import show_html

show_html(artifact(WORK_DIR, "comparison_html"))

# %% [markdown]
# ## Did fine-tuning help? Benchmark accuracy, base vs tuned
# Each item is answered twice by the same loaded model, once with the adapter switched off. The answer is read
# only after the last \`</think>\`, the way it is written (`medical_r1/scorer.py`): the last committed statement
# ("the answer is c", \\boxed{C}, 本题选B, "C is correct", a line holding only the option), else the one option
# named and not dismissed, by its letter or its text; never a letter inside a name such as "E. coli" or "D-dimer".
# Where these rules read nothing, the model reads its own answer (zero-shot answer extraction: its output, then
# "Therefore, among A through D, the answer is (", and the letters' probabilities), accepted only at
# `EVAL_MODEL_READER` or above. An answer that never closed its thought is "unfinished"; one that commits to no
# single option is "unreadable". Both count as wrong, are never guessed, and the page shows per model how many
# answers each rule read, so that a change in answering style after fine-tuning is visible.
#
# **In rounds, for as long as you give it.** The items are drawn in one seeded random order, one benchmark after
# another in turn, and answered in rounds: each round one generation batch per GPU of the same items, answered by
# the base model (adapter off), the fine-tuned model and, once 07 has run, SFT + GRPO (its adapter loaded beside
# 03's). After each round the table below updates in place, and 04 stops as soon as the answer is decided
# (`EVAL_DECIDE`), before a round that would overrun `EVAL_MINUTES`, or after `EVAL_ITEMS`. The intervals are
# confidence sequences, valid however often they are looked at and whenever 04 stops (docs/evaluation.md). Two
# GPUs answer twice the items in the same minutes. Every round's answers go to `eval/answers.jsonl` as they are
# written: run 04 again after a stop (Kaggle's limit, a crash, Interrupt) and it goes on where it stopped; raise
# `EVAL_MINUTES` to buy more rounds. A changed model, adapter, setting or evaluation file is refused, never mixed.
#
# The benchmarks and ROUGE share one set of generation settings (`eval_settings`), its batch chosen once here from
# this GPU's free memory for the longest prompt. First, how long a round takes here, measured on a short warm-up.

# %%
from medical_r1.benchmarks import benchmark_plan, benchmark_questions, load_eval_data
from medical_r1.generation import choose_batch_size
from medical_r1.rounds import check_manifest, check_stopping, draw_order, evaluation_manifest, load_grpo_adapter
from medical_r1.t4_estimate import describe_evaluation

check_stopping(EVAL_MINUTES, EVAL_ITEMS, EVAL_DECIDE)
eval_data = load_eval_data(EVAL_DATA, 0, SEED)
order = draw_order(eval_data, SEED, EVAL_ITEMS)  # the order every model answers in, round by round
grpo_dir = load_grpo_adapter(model, WORK_DIR, base_name)  # None until 07 has run
compared = ("base", "tuned") + (("grpo",) if grpo_dir else ())
eval_settings = choose_batch_size(model, tokenizer, benchmark_questions(eval_data)[1], template, settings.replace(
    max_new_tokens=EVAL_MAX_NEW_TOKENS, do_sample=not EVAL_GREEDY))  # the benchmarks and ROUGE
adapters = {"tuned": adapter_dir, **({"grpo": grpo_dir} if grpo_dir else {})}
check_manifest(WORK_DIR, evaluation_manifest(base_name, adapters, template, eval_settings, EVAL_SIMILARITY,
                                             EVAL_MODEL_READER, eval_data))  # the stored answers belong to these
print(benchmark_plan(model, tokenizer, order, template, eval_settings, backend, EVAL_MINUTES, len(compared)))
print(describe_evaluation(base_name, eval_settings.batch_size, EVAL_MAX_NEW_TOKENS, EVAL_MINUTES, len(compared)))

# %%
from medical_r1.rounds import evaluate_in_rounds

evaluation = evaluate_in_rounds(model, tokenizer, order, template, eval_settings, backend, WORK_DIR, compared,
                                EVAL_MINUTES, EVAL_DECIDE, EVAL_SIMILARITY, EVAL_MODEL_READER)
print(evaluation["outcome"])

# %%
from medical_r1.artifacts import write_json
from medical_r1.rounds import stopping_record
from medical_r1.verdict_pages import verdict_html

pairs, stopping = evaluation["pairs"], stopping_record(evaluation)
verdict = pairs[0]["rows"]  # base -> SFT, per benchmark and overall
write_json(artifact(WORK_DIR, "verdict"), {"rows": verdict, "base": evaluation["scored"]["base"],
                                           "tuned": evaluation["scored"]["tuned"], "stopping": stopping})
write_text(artifact(WORK_DIR, "verdict_html"), verdict_html(verdict, evaluation["outcome"], "grpo" in compared))
show_html(artifact(WORK_DIR, "verdict_html"))

# %% [markdown]
# ## And after reinforcement learning (07)?
# 04 compares what exists. Once 07 has run, run 04 again: 07's adapter answers the same items in the same rounds
# (those already answered by the others are read back, not answered again), and the table gains a row per pair:
# base → SFT, SFT → SFT + GRPO, base → SFT + GRPO, sharing the 5% chance of a false claim between them.

# %%
from medical_r1.verdict_pages import pairs_html

write_json(artifact(WORK_DIR, "verdict_pairs"), {"pairs": pairs, "grpo": evaluation["scored"].get("grpo"),
                                                 "stopping": stopping})
write_text(artifact(WORK_DIR, "verdict_pairs_html"), pairs_html(pairs, evaluation["outcome"]))
show_html(artifact(WORK_DIR, "verdict_pairs_html"))

# %% [markdown]
# ## ROUGE-L against the reference answers
# How much of the reference response's wording the answers reproduce, on held-out questions. It rewards
# imitation, not correctness: read it beside the benchmark verdict, not instead of it.

# %%
from medical_r1.rouge import rouge_comparison, rouge_summary

rouge = rouge_comparison(model, tokenizer, val, ROUGE_ITEMS, template, eval_settings, backend)
print(rouge_summary(rouge))

# %% [markdown]
# ## A blind LLM judge (optional, off by default)
# With `JUDGE_MODEL` and a `JUDGE_API_KEY` secret, a model behind any OpenAI-compatible endpoint compares
# the base and tuned answers above with the reference. It sees them as "Answer 1" and "Answer 2" in an
# order drawn at random for each question, never which is which. One judge is one opinion: read it with
# the benchmark verdict.

# %%
from medical_r1.judge import judge_summary, run_judge

judge = run_judge(rouge["answers"], JUDGE_MODEL, JUDGE_BASE_URL, SEED)
print(judge_summary(judge))

# %% [markdown]
# ## Save, and log to W&B
# Everything above goes into `compare_metrics.json`; with W&B on, the verdict table, the pairs' table and the
# numbers are logged into the training run of 03 (or an offline run to upload with `wandb sync`).

# %%
from medical_r1.tracking import log_comparison_to_wandb

metrics = {**losses, "rouge": rouge, "judge": judge, "verdict": verdict, "base_model": base_name,
           "questions": len(rows), "pairs": [{k: p[k] for k in ("before", "after", "verdict", "overall")} for p in pairs]}
metrics["stopping"] = stopping  # the items used, the rounds, the minutes, and why it stopped
metrics["wandb"] = log_comparison_to_wandb(WORK_DIR, REPORT_TO, verdict, losses, rouge, judge, pairs, stopping)
write_json(artifact(WORK_DIR, "compare_metrics"), metrics)
print("W&B:", metrics["wandb"] or "off")
