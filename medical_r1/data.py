"""The SFT rows: load (Hub, or a local file or folder in the same schema), validate, format into token ids
and labels, measure and split.
"""
from __future__ import annotations

import pathlib
import random

from medical_r1 import REPO_ROOT
from medical_r1.artifacts import read_json, read_jsonl, require_artifact
from medical_r1.params import DATA_CONFIG_FILES
from src_helpers import encode_example, render_completion, render_prompt

SFT_COLUMNS = ("Question", "Complex_CoT", "Response")


SAMPLE_DATA_DIR = REPO_ROOT / "data" / "sample"


class SchemaError(ValueError):
    pass


def load_sft_rows(dataset_name: str, data_config: str, max_examples: int = 0) -> list[dict]:
    """Rows of medical-o1-reasoning-SFT: from a local file or folder (same schema) or from the Hub."""
    if data_config not in DATA_CONFIG_FILES:
        raise ValueError(f"data_config must be one of {sorted(DATA_CONFIG_FILES)}, got {data_config!r}")
    path = pathlib.Path(dataset_name)
    if path.is_dir():
        path = path / DATA_CONFIG_FILES[data_config]
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: a local dataset folder holds one file per config "
                                    f"({', '.join(DATA_CONFIG_FILES.values())})")
    if path.is_file():
        rows = _read_rows(path)
    elif dataset_name.count("/") == 1 and not dataset_name.startswith((".", "/")):
        import datasets

        split = f"train[:{max_examples}]" if max_examples else "train"
        rows = datasets.load_dataset(dataset_name, data_config, split=split).to_list()
    else:
        raise FileNotFoundError(f"dataset {dataset_name!r} is neither a local file or folder nor a Hub name")
    return rows[:max_examples] if max_examples else rows


def _read_rows(path: pathlib.Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return data
    if path.suffix == ".csv":
        import csv

        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .json, .jsonl or .csv)")


def validate_rows(rows: list[dict]) -> None:
    """Raise SchemaError naming the first bad row and column; the message says what to fix."""
    if not rows:
        raise SchemaError("the dataset has no rows")
    missing = [c for c in SFT_COLUMNS if c not in rows[0]]
    if missing:
        raise SchemaError(f"row 0 has no column {missing[0]!r}; columns found: {sorted(rows[0])}. "
                          f"Rename your columns to {list(SFT_COLUMNS)}.")
    for i, row in enumerate(rows):
        for column in SFT_COLUMNS:
            value = row.get(column)
            if not isinstance(value, str):
                raise SchemaError(f"row {i}, column {column!r}: expected a string, got {type(value).__name__}")
            if not value.strip():
                raise SchemaError(f"row {i}, column {column!r} is empty")


def format_rows(rows, tokenizer, template: str, max_seq_length: int, completion_only_loss: bool = True):
    """Encode every row; drop (never cut) those longer than max_seq_length. Returns (records, n_dropped)."""
    records, dropped = [], 0
    for i, row in enumerate(rows):
        enc = encode_example(tokenizer, row, template, completion_only_loss)
        if len(enc["input_ids"]) > max_seq_length:
            dropped += 1
            continue
        records.append({
            "row": i, "question": row["Question"],
            "prompt": render_prompt(tokenizer, row["Question"], template),
            "completion": render_completion(row["Complex_CoT"], row["Response"]) + tokenizer.eos_token,
            "input_ids": enc["input_ids"], "labels": enc["labels"], "prompt_len": enc["prompt_len"],
        })
    if rows and not records:
        shortest = min(len(encode_example(tokenizer, row, template, completion_only_loss)["input_ids"]) for row in rows)
        raise ValueError(f"MAX_SEQ_LENGTH ({max_seq_length}) is shorter than every one of the {len(rows)} examples "
                         f"(the shortest has {shortest} tokens), so none is left to train on: raise MAX_SEQ_LENGTH.")
    return records, dropped


def token_length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {"count": len(s), "mean": round(sum(s) / len(s), 1), "median": pct(50), "p90": pct(90),
            "p99": pct(99), "max": s[-1], "min": s[0]}


def dataset_stats(records: list[dict]) -> dict:
    return {
        "whole example": token_length_stats([len(r["input_ids"]) for r in records]),
        "prompt": token_length_stats([r["prompt_len"] for r in records]),
        "completion": token_length_stats([len(r["input_ids"]) - r["prompt_len"] for r in records]),
    }


def split_train_val(records: list[dict], val_size: int, seed: int):
    """Deterministic split: the same rows go to val for the same seed, whatever the order of the calls."""
    if val_size >= len(records):
        raise ValueError(f"VAL_SIZE ({val_size}) leaves no example to train on: {len(records)} examples are usable; "
                         f"lower VAL_SIZE or raise MAX_EXAMPLES.")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:val_size])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def format_record(model_name, dataset_name, data_config, template, max_seq_length, completion_only_loss,
                  rows, dropped, n_train, n_val, stats) -> dict:
    """What 02 saves beside the data, so 03 and 04 use the same tokenizer, template and length."""
    return {"model_name": model_name, "dataset_name": dataset_name, "data_config": data_config,
            "template": template, "max_seq_length": max_seq_length, "completion_only_loss": completion_only_loss,
            "rows": rows, "dropped_over_length": dropped, "train": n_train, "val": n_val, "token_lengths": stats}


def load_formatted_data(work_dir, model_name: str, max_seq_length: int):
    """02's train and val records, after checking they were made for this model and length."""
    record = read_json(require_artifact(work_dir, "data_stats"))
    if record["model_name"] != model_name:
        raise ValueError(f"the data in {work_dir}/data was tokenised for {record['model_name']!r}, not "
                         f"{model_name!r}: run 02_format_dataset with MODEL_NAME = {model_name!r}")
    if record["max_seq_length"] > max_seq_length:
        raise ValueError(f"the data was formatted for max_seq_length {record['max_seq_length']}, longer than "
                         f"{max_seq_length}: use the same MAX_SEQ_LENGTH in 02 and 03")
    return (read_jsonl(require_artifact(work_dir, "train_data")),
            read_jsonl(require_artifact(work_dir, "val_data")))


def records_to_dataset(records: list[dict]):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [r["input_ids"] for r in records],
                                       "labels": [r["labels"] for r in records]})


def token_table(tokenizer, encoded: dict, edge: int = 6):
    """One encoded example as a table of token ids, their text and their labels: the first tokens, those around
    the prompt/completion boundary, and the last ones. Masked labels (-100) show the prompt the loss skips;
    the last row is the eos, which must be a label."""
    import pandas as pd

    ids, labels, cut = encoded["input_ids"], encoded["labels"], encoded["prompt_len"]
    shown = sorted({*range(min(edge, len(ids))), *range(max(0, cut - edge), min(len(ids), cut + edge)),
                    *range(max(0, len(ids) - edge), len(ids))})
    return pd.DataFrame([{"position": i, "token id": ids[i], "text": repr(tokenizer.decode([ids[i]])),
                          "label": labels[i], "part": "prompt (masked)" if labels[i] == -100 else
                          ("prompt" if i < cut else "completion")} for i in shown]).set_index("position")
