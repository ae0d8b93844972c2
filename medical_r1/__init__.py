"""The medical-R1 notebook series' helpers, one module per job.

- runtime: platform, GPU, backend choice, precision, script runs (torchrun)
- install: the pinned stack, installed beside the platform's own torch
- credentials: secrets from the environment, Colab or Kaggle, never printed
- params: the defaults every parameters cell mirrors, validated once
- artifacts: the files that pass between notebooks, written atomically; Kaggle's attached outputs
- data: load, validate, format, measure and split the SFT rows
- models: the loader (Unsloth's FastLanguageModel, or a transformers + PEFT stand-in), the tiny test model
- training: SFTConfig settings that depend on the runtime, guards (resume, NaN, OOM), training records
- tracking: Weights & Biases
- generation, benchmarks, rouge, judge: answers, the verdict, and the optional measures beside it
- scorer: which option an answer commits to (negation, elimination, second thoughts, hedges)
- rewards, grpo: 07's verifiable rewards and training items, and its records (adapter, curves, metrics)
- export, gguf, publish: the merge and its check, GGUF files, the model card and the Hub push
- display: figures and tables the notebooks show
- kaggle_folders: `kaggle kernels push` folders and the helper wheel as a Kaggle dataset
- sweep: grids of settings, one row per setting, the page that compares them
- gpu_processes, gpu_worker, cell_namespace: a notebook's cells run in one process per GPU (Kaggle's T4 x2),
  the kernel keeping the notebook's variables

Importing a module is cheap: torch, transformers, trl and unsloth are imported inside the functions that
use them, so the first cell works before the install cell and on a machine without a GPU.
"""
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent  # in a checkout: sample data, fixtures, requirements.txt
