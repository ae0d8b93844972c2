"""1 GPU against 2 GPUs (DDP through torchrun) with 03's own script, at the Qwen-1.5B shape: the same effective
batch (GRAD_ACCUM is split across the processes), the same data and steps. Reports seconds per optimizer step
after the first steps (compilation), the speedup, and the two loss curves side by side.

On a 2-GPU machine (install line: lab/BENCHMARKS.md); NVLink multicast stays off:
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 python lab/bench/bench_ddp.py --out $OUT
Writes ddp_bench.json and prints a table.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu"), str(ROOT / "scripts"), str(ROOT / "lab" / "bench")]
import bench_train  # noqa: E402
import real_shapes  # noqa: E402
import run_series  # noqa: E402

from medical_r1 import artifacts  # noqa: E402

TARGET_SPEEDUP = 1.8


def train(work: pathlib.Path, steps: int, grad_accum: int, launcher: list[str], env: dict) -> dict:
    args = {"WORK_DIR": str(work), "BACKEND": "unsloth",  # the model and bf16 come from 02's run.json
            "MAX_STEPS": steps, "GRAD_ACCUM": grad_accum, "EVAL_STEPS": 10_000, "SAVE_STEPS": 10_000, "REPORT_TO": "none",
            "INSTALL_REQUIREMENTS": "never", "RESUME": False}
    cmd = [*launcher, str(ROOT / "notebooks" / "03_train.py"), *[f"--{k}={v}" for k, v in args.items()]]
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if done.returncode:
        return {"error": f"exit {done.returncode}"}
    return artifacts.read_json(artifacts.artifact(work, "train_metrics"))


def steady_seconds_per_step(step_end_s: list[float], skip: int) -> float:
    """Mean seconds per step after the first `skip` steps (compilation, allocator warm-up)."""
    return (step_end_s[-1] - step_end_s[skip - 1]) / (len(step_end_s) - skip)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--skip", type=int, default=4, help="first steps left out of the timing")
    parser.add_argument("--grad-accum", type=int, nargs="+", default=[2, 8],
                        help="GRAD_ACCUM values to compare (the effective batch is the same on 1 and 2 GPUs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "PYTHONUNBUFFERED": "1"}
    model_dir = "/tmp/models/qwen-1.5b"
    real_shapes.build_model("qwen-1.5b", model_dir)
    base = pathlib.Path("/tmp/ddp/formatted")
    recipe = {"offline": True, "parameters": {
        "MODEL_NAME": model_dir, "DATASET_NAME": str(real_shapes.REF / "data" / "medical_o1_sft.json"),
        "DATA_CONFIG": "en", "MAX_EXAMPLES": 0, "VAL_SIZE": 16, "PRECISION": "bf16", "INSTALL_REQUIREMENTS": "never"}}
    run_series.run(recipe, base, only=["02"])
    report = {"meta": {"device": __import__("torch").cuda.get_device_name(0), **bench_train.package_versions(),
                       "shape": "qwen-1.5b", "steps": args.steps, "timed_from_step": args.skip + 1}, "runs": {}}
    print("| GRAD_ACCUM | GPUs | s / step (steady) | speedup | peak reserved GiB | loss first -> last |")
    print("|---|---|---|---|---|---|")
    for accum in args.grad_accum:
        runs = {}
        for gpus, launcher, visible in (
                (1, [sys.executable], "0"),
                (2, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"], "0,1")):
            work = pathlib.Path(f"/tmp/ddp/accum{accum}_{gpus}gpu")
            shutil.copytree(base, work)
            metrics = train(work, args.steps, accum, launcher, {**env, "CUDA_VISIBLE_DEVICES": visible})
            if "error" not in metrics:
                metrics["seconds_per_step"] = steady_seconds_per_step(metrics["step_end_s"], args.skip)
            runs[gpus] = metrics
        one, two = runs[1], runs[2]
        result = {"grad_accum": accum, "runs": runs}
        if "error" not in one and "error" not in two:
            result["speedup"] = one["seconds_per_step"] / two["seconds_per_step"]
            result["met"] = result["speedup"] >= TARGET_SPEEDUP
            result["max_relative_loss_difference"] = max(
                abs(a[1] - b[1]) / a[1] for a, b in zip(one["train_losses"], two["train_losses"]))
            for gpus, r in runs.items():
                print(f"| {accum} | {gpus} | {r['seconds_per_step']:.3f} | {result['speedup'] if gpus == 2 else 1:.2f}x | "
                      f"{r['peak_reserved_gib']} | {r['train_losses'][0][1]:.4f} -> {r['train_losses'][-1][1]:.4f} |")
        report["runs"][f"grad_accum_{accum}"] = result
        artifacts.write_json(args.out / "ddp_bench.json", report)
    print(json.dumps({k: {x: v.get(x) for x in ("speedup", "met", "max_relative_loss_difference")}
                      for k, v in report["runs"].items()}))


if __name__ == "__main__":
    main()
