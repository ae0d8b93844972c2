"""GPU check of issue 42: a notebook's "Run all" twice in one kernel, a parameter edited in between, as a person does
on Kaggle's T4 x2 (no restart). The kernel is driven through jupyter_client as Jupyter drives it; the parameters cell
is edited in place (its literal changed), the other cells run as the notebook holds them. Every kernel sees a T4
(lab/gpu/t4_mode), as in check_t4.py. Records each run's cells' errors, what the notebook said about its processes,
and the artifacts' step counts, to run_all_twice.json.

    python lab/gpu/check_run_all_twice.py --out $OUT --notebook 03 --first MAX_STEPS=60 --second MAX_STEPS=62
"""
import argparse
import json
import os
import pathlib
import queue
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu")]
import check_t4  # noqa: E402
from t4_mode import t4_device  # noqa: E402

from medical_r1 import artifacts  # noqa: E402


def edited(source: str, changes: dict) -> str:
    """The parameters cell with each NAME = literal line given a new literal, its comment kept."""
    for name, value in changes.items():
        source, count = re.subn(rf"^{name} = [^#\n]*?(\s*#|$)", lambda m: f"{name} = {value!r}{m.group(1)}", source,
                                flags=re.M)
        assert count == 1, f"{name} is not a line of the parameters cell"
    return source


def run_cell(kc, code: str, timeout: float) -> dict:
    msg_id = kc.execute(code)
    shown = {"text": "", "error": None}
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            if time.monotonic() > deadline:
                shown["error"] = f"timeout after {timeout} s"
                return shown
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            shown["text"] += content["text"]
        elif kind == "error":
            shown["error"] = f"{content['ename']}: {content['evalue']}"[-2000:]
        elif kind == "status" and content["execution_state"] == "idle":
            return shown


def main():
    import jupyter_client
    import nbformat

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--notebook", default="03")
    parser.add_argument("--work", type=pathlib.Path, default=check_t4.WORK)
    parser.add_argument("--first", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--second", nargs="*", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    path = next((ROOT / "notebooks").glob(f"{args.notebook}_*.ipynb"))
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    settings = {"WORK_DIR": str(args.work), "INSTALL_REQUIREMENTS": "never"}
    env = {**os.environ, **t4_device.child_environment(os.environ, args.work / "t4_device.jsonl"),
           "HF_HUB_OFFLINE": "1"}
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(ROOT / "notebooks"), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=300)
    record = {"notebook": path.name, "runs": []}
    try:
        for changes in (args.first, args.second):
            values = {**settings, **{k: json.loads(v) for k, v in (c.split("=", 1) for c in changes)}}
            start, cells = time.time(), []
            for cell in code:
                source = edited(cell.source, values) if "parameters" in cell.metadata.get("tags", []) else cell.source
                shown = run_cell(kc, source, timeout=3000)
                cells.append({"first_line": source.splitlines()[0][:80] if source else "", **shown})
                if shown["error"]:
                    break
            run = {"set": values, "seconds": round(time.time() - start), "errors": [c for c in cells if c["error"]],
                   "processes_said": [line for c in cells for line in c["text"].splitlines()
                                      if "processes" in line and "NUM_GPUS" in line]}
            for key in ("train_metrics", "grpo_metrics", "compare_metrics"):
                if artifacts.artifact(args.work, key).exists():
                    metrics = artifacts.read_json(artifacts.artifact(args.work, key))
                    run[key] = {"processes": metrics.get("processes"), "steps": [s for s, _ in
                                                                             metrics.get("train_losses", [])][-3:],
                                "max_steps": metrics.get("params", {}).get("max_steps"),
                                **{k: v for k, v in metrics.items() if "peak" in k}}
            record["runs"].append(run)
            print(json.dumps(run, indent=1)[:3000], flush=True)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    peaks = {}
    log = args.work / "t4_device.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        item = json.loads(line)
        if "peak_reserved_gib" in item:
            peaks[str(item["pid"])] = max(peaks.get(str(item["pid"]), 0), item["peak_reserved_gib"])
    record["peak_reserved_gib_by_process"] = peaks
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"run_all_twice_{args.notebook}.json").write_text(json.dumps(record, indent=1))
    return 0 if all(not r["errors"] for r in record["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
