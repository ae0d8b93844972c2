"""The files that pass between notebooks, under one WORK_DIR. Every file is written to a temporary name
and renamed, so a failure leaves nothing half-written; on Kaggle, earlier notebooks' attached outputs are
copied in. Where a notebook runs in several processes (one per GPU), only the first writes: the others hold the
same values (generate_answers gathers every process's answers), and one writer leaves no file written twice.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Iterable

from medical_r1.runtime import is_main_process

ARTIFACTS = {
    "runtime": ("runtime.json", "00_setup_secrets"),
    "baseline_answers": ("answers/base.jsonl", "01_baseline_inference"),
    "train_data": ("data/train.jsonl", "02_format_dataset"),
    "val_data": ("data/val.jsonl", "02_format_dataset"),
    "data_stats": ("data/stats.json", "02_format_dataset"),
    "run_manifest": ("run.json", "02_format_dataset"),
    "length_histogram": ("data/token_lengths.png", "02_format_dataset"),
    "adapter": ("adapter", "03_train"),
    "train_metrics": ("train_metrics.json", "03_train"),
    "loss_curve": ("loss_curve.png", "03_train"),
    "checkpoints": ("checkpoints", "03_train"),
    "tuned_answers": ("answers/tuned.jsonl", "04_compare"),
    "comparison_html": ("comparison.html", "04_compare"),
    "compare_metrics": ("compare_metrics.json", "04_compare"),
    "verdict": ("verdict.json", "04_compare"),
    "verdict_html": ("verdict.html", "04_compare"),
    "verdict_pairs": ("verdict_pairs.json", "04_compare"),
    "verdict_pairs_html": ("verdict_pairs.html", "04_compare"),
    "eval_answers": ("eval/answers.jsonl", "04_compare"),
    "eval_manifest": ("eval/manifest.json", "04_compare"),
    "merged": ("merged_16bit", "05_export_push"),
    "gguf": ("gguf", "05_export_push"),
    "export_report": ("export.json", "05_export_push"),
    "grpo_adapter": ("grpo_adapter", "07_grpo"),
    "grpo_checkpoints": ("grpo_checkpoints", "07_grpo"),
    "grpo_metrics": ("grpo_metrics.json", "07_grpo"),
    "grpo_curve": ("grpo_curve.png", "07_grpo"),
}


def artifact(work_dir, key: str) -> pathlib.Path:
    return pathlib.Path(work_dir) / ARTIFACTS[key][0]


# The earlier notebooks whose files each notebook reads. On Kaggle every notebook runs in its own session,
# so its push folder lists these as kernel_sources and Kaggle mounts their outputs under /kaggle/input.
NOTEBOOK_INPUTS = {
    "00_setup_secrets": [],
    "01_baseline_inference": [],
    "02_format_dataset": [],
    "03_train": ["02_format_dataset"],
    "04_compare": ["01_baseline_inference", "02_format_dataset", "03_train"],
    "05_export_push": ["02_format_dataset", "03_train", "04_compare"],
    "06_chat": ["02_format_dataset", "03_train", "05_export_push"],
    "07_grpo": ["02_format_dataset", "03_train"],
}


KAGGLE_INPUT = pathlib.Path("/kaggle/input")


KAGGLE_WORKING = pathlib.Path("/kaggle/working")


def copy_from_kaggle_input(work_dir, key: str, input_root=None) -> pathlib.Path | None:
    """Find an earlier notebook's output among the Kaggle notebook outputs attached as inputs (read-only,
    under input_root/<its slug>/...), and copy it into WORK_DIR. None when there is no such copy."""
    work = pathlib.Path(work_dir).as_posix()
    work = work.removeprefix(KAGGLE_WORKING.as_posix()).lstrip("/")  # outputs are mounted without this prefix
    relative = pathlib.PurePosixPath(work) / ARTIFACTS[key][0]
    input_root = pathlib.Path(KAGGLE_INPUT if input_root is None else input_root)
    if not input_root.is_dir():
        return None
    found = sorted(input_root.glob(f"**/{relative}"))
    if not found:
        return None
    target = artifact(work_dir, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if found[0].is_dir():
        save_dir_atomic(target, lambda d: shutil.copytree(found[0], d, dirs_exist_ok=True))
    else:
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(found[0], partial)
        os.replace(partial, target)
    print(f"copied {key} from {found[0]} (a Kaggle notebook output attached as input)")
    return target


def require_artifact(work_dir, key: str) -> pathlib.Path:
    """The path of an earlier notebook's output, or a FileNotFoundError naming the notebook to run. On Kaggle
    the file is first looked for among the attached outputs of the earlier notebooks."""
    path = artifact(work_dir, key)
    if not path.exists() and copy_from_kaggle_input(work_dir, key) is None:
        notebook = ARTIFACTS[key][1]
        if KAGGLE_INPUT.is_dir():
            raise FileNotFoundError(f"{path.name} from {notebook} is missing: attach your run of {notebook} under "
                                    f"Add Input > Your Work > Notebooks (and run it first if it has not finished).")
        raise FileNotFoundError(f"{path} is missing: run notebooks/{notebook}.ipynb first "
                                f"with the same WORK_DIR ({work_dir}).")
    return path


def _atomic_write(path, write) -> pathlib.Path:
    path = pathlib.Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(path, obj) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n"))


def write_jsonl(path, rows: Iterable[dict]) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path):
    """A JSON file's content; one that does not parse raises ValueError naming the file and the line."""
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): if the series wrote it, run "
                         "the notebook that writes it again") from err


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON Lines file; a broken line raises ValueError naming the file and the line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                                 f"fix or remove that line") from err
    return rows


def write_text(path, text: str) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.write(text))


def save_dir_atomic(path, save) -> pathlib.Path:
    """Call save(tmp_dir), then move tmp_dir to path, replacing an older copy only once the new one is whole."""
    path = pathlib.Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_pretrained_atomic(path, model, tokenizer) -> pathlib.Path:
    """A model and its tokenizer saved together into path by save_dir_atomic: whole, or not at all."""
    return save_dir_atomic(path, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
