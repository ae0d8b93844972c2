"""The merged 16-bit model: merged with PEFT in CPU RAM, and checked against base + adapter before any push.
"""
from __future__ import annotations

import pathlib
import shutil

from medical_r1.artifacts import artifact, read_json, require_artifact, save_pretrained_atomic
from medical_r1.models import load_tokenizer
from medical_r1.params import MODELS
from medical_r1.runtime import Runtime
from src_helpers import encode_prompt

PROBE_PROMPTS = ["A 45-year-old man has sudden chest pain.", "患者空腹血糖升高，应考虑什么？"]


def probe_logits(model, tokenizer, template: str = "r1_chat"):
    import torch

    device = model.get_input_embeddings().weight.device
    out = []
    with torch.no_grad():
        for q in PROBE_PROMPTS:
            ids = torch.tensor([encode_prompt(tokenizer, q, template)], device=device)
            out.append(model(input_ids=ids).logits.float().cpu())
    return out


def max_logit_difference(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def merge_dtype(runtime: Runtime):
    """The merged model's format: bfloat16 (the distills' own) for GPU runs, float32 for CPU runs."""
    import torch

    return torch.bfloat16 if runtime.cuda else torch.float32


def merge_base_name(work_dir) -> str:
    """The 16-bit base to merge into: the MODEL_NAME 03 trained from (Unsloth records its 4-bit copy in
    the adapter config, and a merge into dequantised 4-bit weights is not the model that was evaluated)."""
    name = read_json(require_artifact(work_dir, "train_metrics"))["model_name"]
    if name.endswith("bnb-4bit"):
        raise ValueError(f"{name} holds 4-bit weights only: merging needs 16-bit ones. Train from the 16-bit "
                         f"repository (e.g. {MODELS['llama-8b']}); Unsloth still loads it in 4 bits.")
    return name


def load_16bit_with_adapter(base_name: str, adapter_dir, dtype, merge: bool = False):
    """Base model in 16 bits (or float32) with the adapter, through plain transformers + PEFT, in CPU RAM:
    an 8B model needs 16 GB there (Kaggle has 30), and the GPU stays free."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_name, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.merge_and_unload() if merge else model


def _collect_garbage() -> None:
    """Return freed model memory now; callers `del` their own reference first (a `del` inside a helper
    would only drop the helper's copy of the name, and the caller's model would stay in RAM)."""
    import gc

    gc.collect()


def count_parameters(model_name: str) -> int:
    """Parameters of a model, from its config alone (built on the meta device: no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_name))
    return sum(t.numel() for t in model.parameters())


def merged_size_bytes(work_dir, runtime: Runtime) -> int:
    """Bytes the merged model takes on disk: 2 per parameter in bfloat16 (GPU runs), 4 in float32 (CPU)."""
    import torch

    bytes_per_parameter = 4 if merge_dtype(runtime) == torch.float32 else 2
    return count_parameters(merge_base_name(work_dir)) * bytes_per_parameter


def check_disk_space(folder, needed_bytes: int, disk_usage=shutil.disk_usage) -> None:
    """Refuse, before writing anything, when the folder's disk cannot hold needed_bytes (plus 10%)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = disk_usage(folder).free
    if free < needed_bytes * 1.1:
        raise RuntimeError(
            f"the merged model needs about {needed_bytes / 1e9:.1f} GB but {folder} has {free / 1e9:.1f} GB free "
            f"(Kaggle's /kaggle/working holds 20 GB). Set SAVE_MERGED = False to keep only the adapter "
            f"(it loads on top of the base model), point WORK_DIR at a larger disk (on Kaggle, /tmp is not "
            f"saved but is larger), or free space.")


def save_merged(work_dir, runtime: Runtime) -> pathlib.Path:
    """Merge LoRA into the 16-bit base weights with PEFT on the CPU and save, to a temporary folder first so
    a failed merge leaves nothing behind. The same code serves every backend, needs no GPU memory, and
    merges into the 16-bit weights MODEL_NAME names rather than into the 4-bit copy that trained:
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()`."""
    adapter_dir = require_artifact(work_dir, "adapter")
    model = load_16bit_with_adapter(merge_base_name(work_dir), adapter_dir, merge_dtype(runtime), merge=True)
    tokenizer = load_tokenizer(str(adapter_dir))
    path = save_pretrained_atomic(artifact(work_dir, "merged"), model, tokenizer)
    return path  # the merged model is freed on return, before verify_merge loads two more copies in turn


def merge_tolerance(dtype) -> float:
    """Largest |logit difference| allowed, relative to the largest |logit|. A float32 merge is exact up to
    rounding, so the check is strict there (the CPU path the tests run). In bfloat16 it is a coarse guard:
    a correct merge of a random-weight Qwen-1.5B shape (28 layers) differed from base + adapter by 11% of
    the largest logit (lab/gpu/RESULTS.md), because random networks amplify rounding; for an 8-layer one, 2.7%.
    Real weights were not available to calibrate it further."""
    import torch

    return 1e-4 if dtype == torch.float32 else 0.15


def compare_logits(reference: list, candidate: list) -> dict:
    agree = total = 0
    for x, y in zip(reference, candidate):
        agree += (x.argmax(-1) == y.argmax(-1)).sum().item()
        total += x.shape[0] * x.shape[1]
    scale = max(x.abs().max().item() for x in reference)
    diff = max_logit_difference(reference, candidate)
    return {"max_abs_diff": diff, "relative_diff": diff / scale, "argmax_agreement": agree / total}


def verify_merge(work_dir, runtime: Runtime) -> dict:
    """Logits of the saved merged model against base + adapter, in the same dtype on the CPU, on probe prompts."""
    from transformers import AutoModelForCausalLM

    adapter_dir = require_artifact(work_dir, "adapter")
    dtype = merge_dtype(runtime)
    tokenizer = load_tokenizer(str(adapter_dir))
    reference_model = load_16bit_with_adapter(merge_base_name(work_dir), adapter_dir, dtype)
    reference = probe_logits(reference_model, tokenizer)
    del reference_model  # before the merged copy loads: two 8B models do not fit Kaggle's 30 GB
    _collect_garbage()
    merged = AutoModelForCausalLM.from_pretrained(str(artifact(work_dir, "merged")), dtype=dtype)
    check = compare_logits(reference, probe_logits(merged, tokenizer))
    del merged
    _collect_garbage()
    check["tolerance"] = merge_tolerance(dtype)
    check["ok"] = check["relative_diff"] <= check["tolerance"]
    return check


def merge_report(work_dir, check: dict) -> dict:
    """export.json's merge part from verify_merge's check. Raises RuntimeError, so that nothing is pushed, when
    the merged model does not reproduce base + adapter."""
    out_dir = artifact(work_dir, "merged")
    report = {"merged": str(out_dir), "verified": check["ok"], "check": check,
              "summary": f"merged model written to {out_dir}; max |logit difference| vs base + adapter "
                         f"{check['max_abs_diff']:.2e} ({check['relative_diff']:.1e} of the largest logit, "
                         f"tolerance {check['tolerance']:.2g}); next-token agreement {check['argmax_agreement']:.1%}"}
    if not check["ok"]:
        raise RuntimeError(f"the merged model does not match base + adapter ({report['summary']}); it will "
                           f"not be pushed. Keep using the adapter in {artifact(work_dir, 'adapter')}.")
    return report


def no_merge_report() -> dict:
    return {"merged": None, "verified": None, "summary": "SAVE_MERGED is False: only the adapter is kept"}
