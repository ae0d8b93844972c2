"""Where does batched generation spend its time? A probe before changing 04's generation (issue: a verdict
that means something). At the Llama-8B shape, 4-bit + LoRA as 04 runs it, greedy, equal output tokens:
tokens/s of generate_answers at several batch sizes, with HF's static cache, and a torch.profiler view of
decode steps (GPU busy time against wall time: a GPU idle between kernels means launch overhead).

    python bench/probe_generate.py --model-dir /tmp/models/llama-8b --out $OUT
"""
import argparse
import json
import pathlib
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gpu"), str(ROOT / "bench")]
import bench_generate  # noqa: E402
import bench_train  # noqa: E402

from medical_r1 import models as models_mod  # noqa: E402
from medical_r1 import params  # noqa: E402
from medical_r1 import runtime as rt_mod  # noqa: E402
from medical_r1.generation import generate_answers  # noqa: E402


def timed(fn):
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--skip-batches", action="store_true", help="only the HF paths, after for_training")
    args = parser.parse_args()
    import torch

    runtime, backend = rt_mod.setup_backend("unsloth", "bf16")
    model, tok = models_mod.load_model_and_tokenizer(args.model_dir, backend, runtime, 2048)
    model = models_mod.add_lora(model, backend, params.Params(model_name=args.model_dir))
    report = {"device": torch.cuda.get_device_name(0), "new_tokens": args.new_tokens, "runs": {}}
    generate_answers(model, tok, bench_generate.eval_questions(2), "r1_chat", 8, 0.6, 0.95, False, 2, 0, backend)
    for b in ([] if args.skip_batches else args.batch_sizes):
        qs = bench_generate.eval_questions(b)
        _, s = timed(lambda: generate_answers(model, tok, qs, "r1_chat", args.new_tokens, 0.6, 0.95, False, b, 0,
                                              backend, min_new_tokens=args.new_tokens))
        report["runs"][f"generate_answers_{b}"] = {"tokens_per_s": b * args.new_tokens / s, "s": s,
                                                   **rt_mod.peak_gpu_memory_gib()}
        print(f"generate_answers batch {b}: {b * args.new_tokens / s:.0f} tok/s", flush=True)
    qs = bench_generate.eval_questions(32)
    if args.skip_batches:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_training(model)  # Unsloth's training kernels, HF's own generation (sdpa attention)
        model.eval()
    for name, extra in [("dynamic_cache", {}), ("static_cache", {"cache_implementation": "static"})]:
        try:
            bench_generate.raw_generate(model, tok, qs[:2], 8, **extra)
            _, s = timed(lambda: bench_generate.raw_generate(model, tok, qs, args.new_tokens, **extra))
            report["runs"][f"{name}_32"] = {"tokens_per_s": 32 * args.new_tokens / s, **rt_mod.peak_gpu_memory_gib()}
            print(f"{name} batch 32: {32 * args.new_tokens / s:.0f} tok/s", flush=True)
        except Exception as err:  # noqa: BLE001 (a probe: record what failed and go on)
            report["runs"][f"{name}_32"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            traceback.print_exc()
    from torch.profiler import ProfilerActivity, profile

    steps = 32
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _, s = timed(lambda: bench_generate.raw_generate(model, tok, qs, steps))
    events = prof.key_averages()
    report["profile_batch_32"] = {"decode_steps": steps, **bench_train.profile_summary(prof, steps, s),
                                  "kernels_per_step": sum(e.count for e in events if e.self_device_time_total > 0) / steps}
    print(json.dumps(report["profile_batch_32"], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"probe_generate{'_hf' if args.skip_batches else ''}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
