"""Where does a DDP step lose time against one GPU? 03's trainer (make_trainer, the same SFTConfig) at the
Qwen-1.5B shape, one process and two under torchrun at the same effective batch, with torch.profiler over two
optimizer steps after warm-up. Per process: wall and GPU-busy ms per step, NCCL kernel time, host<->device
copies (Unsloth's checkpoint offload), and the top kernels and host calls.

On a 2-GPU machine, after bench_ddp.py has built the model and formatted the data (or with them built here):
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 python bench/profile_ddp.py --out $OUT
Writes profile_ddp.json, with the (GPU bus id, pid) of every process nvidia-smi saw on a GPU during each run.
--no-profiler times the steps alone; --logging-steps N logs every N steps without the progress bar, to see what
the first process's per-step logging costs both.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gpu"), str(ROOT / "scripts"), str(ROOT / "bench")]

MODEL_DIR = "/tmp/models/qwen-1.5b"
DATA_DIR = pathlib.Path("/tmp/ddp/formatted")


def worker(out: pathlib.Path, grad_accum: int, first: int, steps: int, profiled: bool, logging_steps: int):
    import bench_train
    import torch

    from medical_r1 import models as models_mod
    from medical_r1 import params, training
    from medical_r1 import runtime as rt_mod
    from medical_r1.data import load_formatted_data

    rank, world = rt_mod.process_rank()
    runtime, backend = rt_mod.setup_backend("unsloth", "bf16")
    p = params.Params(model_name=MODEL_DIR, work_dir=f"/tmp/ddp/profile_work{world}", grad_accum=grad_accum,
                      max_steps=first + steps, eval_steps=10_000, save_steps=10_000, report_to="none")
    train, val = load_formatted_data(str(DATA_DIR), MODEL_DIR, p.max_seq_length)
    model, tok = models_mod.load_model_and_tokenizer(MODEL_DIR, backend, runtime, p.max_seq_length)
    model = models_mod.add_lora(model, backend, p)
    trainer = training.make_trainer(model, tok, train, val, p, backend, runtime)
    if logging_steps != 1:  # the experiment: less host work per step on the first process alone
        from transformers.trainer_callback import ProgressCallback

        trainer.args.logging_steps = logging_steps
        trainer.remove_callback(ProgressCallback)
    result = {"pid": os.getpid(), "cuda_current_device": torch.cuda.current_device(), "profiled": profiled,
              "logging_steps": trainer.args.logging_steps}

    micro_batches = []  # per micro-batch: its size and when it started
    compute_loss = trainer.compute_loss

    def timed_compute_loss(model, inputs, *args, **kwargs):
        micro_batches.append({"tokens": int(inputs["input_ids"].numel()), "label_tokens": int((inputs["labels"] != -100).sum()),
                              "shape": list(inputs["input_ids"].shape), "start": time.perf_counter()})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = timed_compute_loss
    trainer.add_callback(bench_train.profiler_callback(first, steps, result, profiled))  # after Unsloth's import
    trainer.train()
    result["micro_batches"] = [{k: v for k, v in m.items() if k != "start"} for m in micro_batches]
    starts = [m["start"] for m in micro_batches]
    result["seconds_between_micro_batches"] = [round(b - a, 4) for a, b in zip(starts, starts[1:])]
    result.update(world_size=world, rank=rank, grad_accum_per_process=training.per_process_grad_accum(grad_accum),
                  peak=rt_mod.peak_gpu_memory_gib())
    (out / f"profile_{world}gpu_rank{rank}.json").write_text(json.dumps(result, indent=1))


def gpu_processes() -> set:
    """(GPU bus id, pid) for every process nvidia-smi sees with a context on a GPU."""
    listed = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_bus_id,pid", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False).stdout
    return {tuple(x.strip() for x in line.split(",")) for line in listed.splitlines() if "," in line}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--first", type=int, default=6, help="optimizer steps before the profiled ones")
    parser.add_argument("--steps", type=int, default=2, help="profiled optimizer steps")
    parser.add_argument("--no-profiler", action="store_true", help="time the steps only (the profiler slows the host)")
    parser.add_argument("--logging-steps", type=int, default=1,
                        help="log every N steps, without the progress bar (03 logs every step)")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--prepare", action="store_true", help="build the model and format the data, then stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args.out, args.grad_accum, args.first, args.steps, not args.no_profiler, args.logging_steps)
    if not args.prepare:  # in a child process, so that this one holds no GPU context while the runs are watched
        subprocess.run([sys.executable, __file__, "--prepare", "--out", str(args.out)], check=True)
        return launch(args)
    import real_shapes
    import run_series

    if not pathlib.Path(MODEL_DIR, "config.json").exists():
        real_shapes.build_model("qwen-1.5b", MODEL_DIR)
    if not DATA_DIR.exists():
        run_series.run({"offline": True, "parameters": {
            "MODEL_NAME": MODEL_DIR, "DATASET_NAME": str(real_shapes.REF / "data" / "medical_o1_sft.json"),
            "DATA_CONFIG": "en", "MAX_EXAMPLES": 0, "VAL_SIZE": 16, "INSTALL_REQUIREMENTS": "never"}}, DATA_DIR,
            only=["02"])


def launch(args):
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "8"}
    worker_args = [__file__, "--worker", "--out", str(args.out), "--grad-accum", str(args.grad_accum),
                   "--first", str(args.first), "--steps", str(args.steps), "--logging-steps", str(args.logging_steps),
                   *(["--no-profiler"] if args.no_profiler else [])]
    placement = {}
    for launcher, visible in (([sys.executable], "0"),
                              ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"], "0,1")):
        run = subprocess.Popen([*launcher, *worker_args], env={**env, "CUDA_VISIBLE_DEVICES": visible})
        while run.poll() is None:  # which processes hold a context on which GPU, sampled while training runs
            time.sleep(3)
            placement.setdefault(visible, set()).update(gpu_processes())
    report = {name.stem: json.loads(name.read_text()) for name in sorted(args.out.glob("profile_*gpu_rank*.json"))}
    report["gpu_processes"] = {k: sorted(v) for k, v in placement.items()}
    (args.out / "profile_ddp.json").write_text(json.dumps(report, indent=1))
    print("GPU (bus id) and pid of every process with a context there:", report["gpu_processes"])
    for name, r in report.items():
        if name == "gpu_processes":
            continue
        prof = r.get("profile", {})
        print(name, f"pid {r.get('pid')} on cuda:{r.get('cuda_current_device')}, wall {prof.get('wall_ms_per_step', 0):.0f} "
              f"ms/step;", "tokens (labels) per micro-batch:", [(m["tokens"], m["label_tokens"]) for m in r.get("micro_batches", [])])
        print("   seconds between micro-batches:", r.get("seconds_between_micro_batches"))
        if "gpu_busy_ms_per_step" in prof:
            print(f"{name}: GPU busy {prof['gpu_busy_ms_per_step']:.0f} ms/step, NCCL {prof['nccl_ms_per_step']:.1f}, "
                  f"DtoH {prof['memcpy_dtoh_ms_per_step']:.1f}, HtoD {prof['memcpy_htod_ms_per_step']:.1f}")
            for row in prof["top_gpu_ms_per_step"][:8]:
                print("   ", row)


if __name__ == "__main__":
    main()
