"""GPU check in T4 mode: the whole series 00-07 with the notebooks' own defaults (BACKEND and PRECISION "auto",
GEN_BATCH_SIZE 0, the packed 8B default, 60 steps, 1,024 new tokens) while torch and Unsloth
see a T4 (lab/gpu/t4_mode/t4_device.py: capability 7.5, bf16 only by emulation, 15 GiB, no FlashAttention). Only
what cannot come from the Hub here is set: the random Llama-8B-shape model, the real-schema data (.gpu_ref), the
sample benchmark file, offline mode; and 04's EVAL_MINUTES, 1 (FOUR_MINUTES), so that its rounds stop on the budget
(random weights never decide), with each round's rate read back from eval/answers.jsonl. Writes t4_check.json and
prints one row per notebook: what it decided (precision, attention, batch, install line) and its peak memory.

On the GPU machine (with .whl and .gpu_ref carried, as lab/gpu/RESULTS.md says):
    python lab/gpu/check_t4.py --out $OUT --only 00 01 02 03      # then, same machine and work dir:
    python lab/gpu/check_t4.py --out $OUT --only 04 05 06
Two processes sharing the one GPU, each in T4 mode with its own 15 GiB (issue 36; NCCL refuses two processes on one
GPU, so they use gloo between them, which MEDICAL_R1_SHARE_ONE_GPU=1 sets):
    MEDICAL_R1_SHARE_ONE_GPU=1 python lab/gpu/check_t4.py --out $OUT --only 00 01 02 03 --set NUM_GPUS=2
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "lab" / "gpu")]
import real_shapes  # noqa: E402
import run_series  # noqa: E402
from t4_mode import t4_device  # noqa: E402

from medical_r1 import artifacts, install  # noqa: E402
from medical_r1 import data as data_mod  # noqa: E402

WORK = pathlib.Path("/tmp/gpu_check/t4-defaults")
MODEL = pathlib.Path("/tmp/models/llama-8b")
LOG = WORK / "t4_device.jsonl"
# Lines of a notebook's output that say what it decided.
DECISIONS = re.compile(r"platform: |^backend: |generation batch|^not installing|^installed |^all pinned|Unsloth.*(Tesla|GPU)|"
                       r"Torch: |Bfloat16|Xformers|FA2|^GPU memory|precision|attention|^gradient checkpointing|^embeddings|"
                       r"^answers written|^measured .*tokens/s|^Decided at|^Not decided", re.M)
# 04's time budget here: short enough that the budget, not the answer, stops its rounds (issue 43).
FOUR_MINUTES = 1


def parameters() -> dict:
    """The notebooks' defaults, but for where the model, data and benchmark file come from."""
    return {"MODEL_NAME": str(MODEL), "DATASET_NAME": str(real_shapes.REF / "data" / "medical_o1_sft.json"),
            "EVAL_DATA": str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"),
            "TRAIN_ITEMS": str(data_mod.SAMPLE_DATA_DIR / "grpo_train.json")}


def said(notebook: pathlib.Path) -> list[str]:
    """The decision lines the executed notebook printed."""
    lines = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")) or "".join(output.get("data", {}).get("text/plain", ""))
            lines += [line.strip()[:300] for line in text.splitlines() if DECISIONS.search(line.strip())]
    return lines


def new_log_lines(offset: int) -> tuple[list[dict], int]:
    if not LOG.exists():
        return [], offset
    text = LOG.read_text()
    return [json.loads(line) for line in text[offset:].splitlines() if line], len(text)


def rounds_record(work: pathlib.Path) -> dict:
    """04's rounds as eval/answers.jsonl kept them (per round and model: items, generated tokens, seconds, tokens/s)
    and how it stopped (verdict.json's stopping)."""
    answers = artifacts.artifact(work, "eval_answers")
    rounds = []
    for line in answers.read_text().splitlines() if answers.exists() else []:
        record = json.loads(line)
        tokens = sum(a["new_tokens"] for a in record["answers"])
        rounds.append({"round": record["round"], "model": record["model"], "items": len(record["answers"]),
                       "new_tokens": tokens, "seconds": round(record["seconds"], 1),
                       "tokens_per_s": round(tokens / record["seconds"], 1)})
    verdict = artifacts.artifact(work, "verdict")
    return {"per_round": rounds, "stopping": artifacts.read_json(verdict).get("stopping") if verdict.exists() else None}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "gpu_check")
    parser.add_argument("--only", nargs="*", default=["00", "01", "02", "03", "05", "06", "07", "04"])  # 04 last
    parser.add_argument("--work", type=pathlib.Path, default=WORK, help="the series' WORK_DIR (another: a second run)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="a parameter changed from its default, VALUE in JSON (GRPO_MAX_STEPS=2: a short 07)")
    args = parser.parse_args()
    work = args.work
    changed = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    args.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not (MODEL / "config.json").exists():
        start = time.time()
        real_shapes.build_model_in_child("llama-8b", MODEL)
        print(f"built llama-8b in {time.time() - start:.0f} s", flush=True)
    # Every kernel papermill starts inherits these: sitecustomize.py makes its torch answer as a T4.
    os.environ.update(t4_device.child_environment(os.environ, LOG))
    import torch

    results_path = args.out / "t4_check.json"
    results = json.loads((work / "t4_check.json").read_text()) if (work / "t4_check.json").exists() else {
        "device": subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True).stdout.strip(), "torch": torch.__version__,
        "arch_list": torch.cuda.get_arch_list(),
        "install_would_choose": install.torch_companions(torch.__version__)[1], "notebooks": {}}
    offset = LOG.stat().st_size if LOG.exists() else 0
    for number in args.only:
        record = {"changed": changed} if changed else {}
        try:
            budget = {"EVAL_MINUTES": FOUR_MINUTES} if number == "04" else {}
            record["seconds"] = run_series.run({"offline": True, "parameters": {**parameters(), **budget, **changed}},
                                               work, only=[number])
            record["ok"] = True
        except Exception as err:  # record the failure and go on
            record["ok"], record["error"] = False, f"{type(err).__name__}: {str(err)[-1500:]}"
        executed = next((work / "executed").glob(f"{number}_*.ipynb"), None)
        record["said"] = said(executed) if executed else []
        lines, offset = new_log_lines(offset)
        peaks = [line for line in lines if "peak_reserved_gib" in line]
        record["peak_reserved_gib"] = max((p["peak_reserved_gib"] for p in peaks), default=None)
        record["peak_allocated_gib"] = max((p["peak_allocated_gib"] for p in peaks), default=None)
        by_process = {}
        for p in peaks:  # each process's own peak (the kernel's, or each GPU process's under NUM_GPUS > 1)
            by_process[str(p["pid"])] = max(by_process.get(str(p["pid"]), 0), p["peak_reserved_gib"])
        record["peak_reserved_gib_by_process"] = by_process
        record["t4_answers_to"] = sorted({f"{line['asked']} <- {line['by']}" for line in lines if "asked" in line})
        record["kept"] = sorted({line["kept"] for line in lines if "kept" in line})
        if number == "04":
            record["rounds"] = rounds_record(work)
        results["notebooks"][number] = record
        for key in ("runtime", "train_metrics", "compare_metrics", "export_report", "grpo_metrics"):
            if artifacts.artifact(work, key).exists():
                results[key] = artifacts.read_json(artifacts.artifact(work, key))
        for path in (work / "t4_check.json", results_path):
            artifacts.write_json(path, results)
        print(f"{number}: ok={record['ok']} peak reserved {record['peak_reserved_gib']} GiB "
              f"{record.get('error', '')[:300]}", flush=True)
        print("   " + "\n   ".join(record["said"][:12]), flush=True)
    return 0 if all(r["ok"] for r in results["notebooks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
