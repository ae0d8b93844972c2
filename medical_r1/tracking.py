"""Weights & Biases: whether to log, online or offline, and the run's link and id.
"""
from __future__ import annotations

import os
import pathlib

from medical_r1.artifacts import artifact, read_json
from medical_r1.runtime import is_main_process


def resolve_report_to(report_to: str, work_dir=".", environ=os.environ) -> tuple[str, str]:
    """("wandb" or "none", a sentence saying why). "auto" logs to W&B when WANDB_API_KEY is set;
    "wandb" without a key logs offline under WORK_DIR/wandb, for `wandb sync` later."""
    import importlib.util

    wants = report_to == "wandb" or (report_to == "auto" and environ.get("WANDB_API_KEY"))
    if not wants:
        return "none", "not logging to W&B (REPORT_TO is 'none', or 'auto' without WANDB_API_KEY)"
    if environ.get("WANDB_MODE") == "disabled":
        return "none", "not logging to W&B: WANDB_MODE=disabled"
    if importlib.util.find_spec("wandb") is None:
        return "none", "not logging to W&B: the wandb package is not installed"
    environ.setdefault("WANDB_PROJECT", "medical-r1")
    environ["WANDB_DIR"] = str(pathlib.Path(work_dir).resolve())
    pathlib.Path(work_dir).mkdir(parents=True, exist_ok=True)
    if not environ.get("WANDB_API_KEY"):
        environ["WANDB_MODE"] = "offline"
        return "wandb", f"logging to W&B offline under {work_dir}/wandb (no WANDB_API_KEY); upload it later with `wandb sync`"
    return "wandb", f"logging to W&B project {environ['WANDB_PROJECT']!r}"


def _wandb_run():
    """The W&B run in progress, or None (wandb is only looked up, never imported, here)."""
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb else None


def wandb_run_link() -> str | None:
    """The W&B run's URL, or for an offline run the command that uploads it; None when W&B is off."""
    run = _wandb_run()
    if run is None:
        return None
    return run.url or f"wandb sync {pathlib.Path(run.dir).parent}"


def wandb_run_id() -> str | None:
    """The id of the W&B run in progress, so 04 can log its verdict into the same run."""
    run = _wandb_run()
    return run.id if run is not None else None


def log_comparison_to_wandb(work_dir, report_to: str, verdict: list[dict], losses: dict, rouge: dict, judge: dict,
                            pairs: list[dict] | None = None, stopping: dict | None = None,
                            environ=os.environ) -> str | None:
    """Log 04's verdict table and numbers to W&B, into the training run when 03 logged one (same run id),
    offline under WORK_DIR/wandb without a key; with `pairs` (base, SFT, SFT + GRPO) their table too; with
    `stopping` (medical_r1.rounds.stopping_record) the items used, the minutes and why it stopped. Returns the
    run link, or None when W&B is off."""
    mode, why = resolve_report_to(report_to, work_dir, environ)
    print(why)
    if mode != "wandb" or not is_main_process():  # one process logs, as the trainers do
        return None
    import wandb

    train = artifact(work_dir, "train_metrics")
    run_id = read_json(train).get("wandb_run_id") if train.exists() else None
    run = wandb.init(project=environ["WANDB_PROJECT"], dir=environ["WANDB_DIR"], id=run_id, resume="allow",
                     job_type="compare")
    columns = ["benchmark", "items", "base_accuracy", "tuned_accuracy", "difference", "difference_low",
               "difference_high", "decided", "base_no_answer", "tuned_no_answer", "verdict"]
    table = wandb.Table(columns=columns, data=[
        [r["benchmark"], r["items"], r["base_accuracy"], r["tuned_accuracy"], r["difference"],
         r["difference_interval"][0], r["difference_interval"][1], r["decided"], r["base_no_answer"],
         r["tuned_no_answer"], r["verdict"]] for r in verdict])
    numbers = {f"compare/{r['benchmark']}/{k}": r[k] for r in verdict for k in ("base_accuracy", "tuned_accuracy")}
    scalars = {**losses, "base_rouge_l": rouge.get("base_rouge_l"), "tuned_rouge_l": rouge.get("tuned_rouge_l"),
               "judge_tuned_win_rate": judge.get("tuned_win_rate")}
    numbers.update({f"compare/{k}": v for k, v in scalars.items() if isinstance(v, (int, float))})
    logged = {"compare/verdict": table}
    if pairs:
        logged["compare/pairs"] = wandb.Table(
            columns=["before", "after", "items", "accuracy_before", "accuracy_after", "difference", "decided",
                     "verdict"],
            data=[[p["before"], p["after"], p["overall"]["items"], p["overall"]["base_accuracy"],
                   p["overall"]["tuned_accuracy"], p["overall"]["difference"], p["overall"]["decided"], p["verdict"]]
                  for p in pairs])
        numbers.update({f"compare/{p['after']}_vs_{p['before']}/difference": p["overall"]["difference"] for p in pairs})
    if stopping:  # the items used and why 04 stopped ("decided", "budget" or "items")
        numbers.update({f"compare/stopping/{k}": v for k, v in stopping.items() if isinstance(v, (int, float))})
        numbers.update({"compare/stopping/stopped": stopping["stopped"],
                        "compare/stopping/outcome": stopping["outcome"]})
    run.log({**logged, **numbers})
    run.summary.update(numbers)
    link = wandb_run_link()
    run.finish()
    return link
