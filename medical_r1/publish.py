"""The model card, built from the run's own files, and the push to the Hugging Face Hub.
"""
from __future__ import annotations

import os
import pathlib

from medical_r1.artifacts import artifact, read_json, require_artifact, write_text
from medical_r1.params import DATASET_NAME, Params


def model_card(work_dir, hub_repo_id: str = "") -> str:
    """A Hub model card (README.md) from the run's own files: base model, data, training settings, losses,
    and the benchmark verdict when 04 has written one. Holds no secret: it is built from saved metrics."""
    train = read_json(require_artifact(work_dir, "train_metrics"))
    data = read_json(require_artifact(work_dir, "data_stats"))
    settings = {k: train["params"][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "learning_rate",
                                               "max_steps", "batch_size", "grad_accum", "optim", "seed",
                                               "max_seq_length", "completion_only_loss") if k in train["params"]}
    dataset = data["dataset_name"] if data["dataset_name"] == DATASET_NAME else "local data in its schema"
    lines = [
        "---", f"base_model: {train['model_name']}", "library_name: peft", "license: mit",
        f"datasets:\n- {DATASET_NAME}", "tags:\n- medical\n- reasoning\n- deepseek-r1\n- lora\n- unsloth\n- trl", "---",
        f"# {hub_repo_id or 'DeepSeek-R1 medical reasoning LoRA'}", "",
        f"LoRA fine-tune of `{train['model_name']}` on {dataset} (config `{data['data_config']}`, "
        f"{data['train']} training examples, template `{data['template']}`), trained with the medical-r1 notebooks "
        f"(backend: {train['backend']}).", "",
        "## Training", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in settings.items()], "",
        f"Training loss {train['first_loss']:.4f} -> {train['last_loss']:.4f}."
        + (f" Training run: {train['wandb']}" if str(train.get("wandb")).startswith("https://") else ""),
    ]
    if artifact(work_dir, "verdict").exists():
        verdict = read_json(artifact(work_dir, "verdict"))
        rows, stopping = verdict["rows"], verdict.get("stopping")
        lines += ["", "## Did fine-tuning help?", *(["", stopping["outcome"]] if stopping else []), "", "| benchmark | items | base | tuned | verdict |", "|---|---|---|---|---|",
                  *[f"| {r['benchmark']} | {r['items']} | {100 * r['base_accuracy']:.1f}% | "
                    f"{100 * r['tuned_accuracy']:.1f}% | {r['verdict']} |" for r in rows]]
    else:
        lines += ["", "No benchmark evaluation was run (notebook 04)."]
    lines += ["", "Not medical advice: a research artefact. Check every answer with a clinician."]
    return "\n".join(lines) + "\n"


def write_card(work_dir, card: str, report: dict) -> list[str]:
    """Put the model card beside the adapter and, when there is one, the merged model."""
    folders = [artifact(work_dir, "adapter")] + ([pathlib.Path(report["merged"])] if report.get("merged") else [])
    return [str(write_text(folder / "README.md", card)) for folder in folders]


def hub_upload_plan(p: Params, environ=os.environ) -> list[str]:
    """What 05 will push, or the reason it pushes nothing. Never holds the token itself."""
    if not p.push_to_hub:
        return []
    if not environ.get("HF_TOKEN"):
        raise RuntimeError("push_to_hub is on but HF_TOKEN is not set: add it as a Kaggle or Colab secret "
                           "(or an environment variable) and run 00_setup_secrets again")
    plan = [f"adapter -> {p.hub_repo_id}-lora"]
    if p.save_merged:
        plan.append(f"merged 16-bit model -> {p.hub_repo_id}")
    return plan


def push_to_hub(p: Params, plan: list[str], report: dict) -> list[str]:
    """Push what the plan lists. The token is read by huggingface_hub from the environment, never passed
    around or printed. A failure leaves the local files in place, so the cell can simply be re-run."""
    if not plan:
        return []
    from huggingface_hub import HfApi

    api = HfApi()
    uploads = [(f"{p.hub_repo_id}-lora", artifact(p.work_dir, "adapter"))]
    if p.save_merged and report.get("verified"):
        uploads.append((p.hub_repo_id, pathlib.Path(report["merged"])))
    pushed = []
    for repo_id, folder in uploads:
        try:
            api.create_repo(repo_id, private=p.hub_private, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id)
        except Exception as err:  # network, permissions, quota: the message never holds the token
            raise RuntimeError(f"pushing {folder} to {repo_id} failed ({type(err).__name__}: {err}). The local files "
                               f"are kept; {pushed or 'nothing'} was pushed. Fix the cause (a write token? "
                               f"internet on?) and run this cell again.") from err
        pushed.append(repo_id)
    return pushed
