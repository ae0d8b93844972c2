"""What bounds 04's decode step once Unsloth replays it as CUDA graphs? At the Llama-8B shape, 4-bit + LoRA
(random non-zero B) as 04 runs it, greedy, one left-padded batch of 04's prompts: per decode step, the wall
time, the GPU's busy time and its largest kernels, with the eager step, the graph step, and the graph step with the head's input re-laid out and the grouped
attention core (04 now). The prefill is
taken out by profiling a one-token generate of the same batch and subtracting it.

    python bench/profile_decode.py --model-dir /tmp/models/llama-8b --out $OUT
Writes profile_decode.json.
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import bench_generate  # noqa: E402

from medical_r1 import generation  # noqa: E402


def profiled_generate(model, tok, questions, new_tokens, trace=None):
    """(wall s, {kernel or op name: [GPU ms, calls]}) of one greedy generate call under torch.profiler;
    with `trace`, the timeline (ops with their input shapes) is written there as gzipped Chrome-trace JSON."""
    import gzip
    import os
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=bool(trace)) as prof:
        start = time.perf_counter()
        bench_generate.raw_generate(model, tok, questions, new_tokens)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    if trace:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as raw:
            prof.export_chrome_trace(raw.name)
        with open(raw.name, "rb") as src, gzip.open(trace, "wb") as dst:
            dst.write(src.read())
        os.unlink(raw.name)
    gpu = {e.key: [e.self_device_time_total / 1000, e.count] for e in prof.key_averages() if e.self_device_time_total > 0}
    return wall, gpu


def per_step(long, short, steps):
    """Per decode step: the long call's figures minus the one-token call's (its prefill), over `steps`."""
    (wall_long, gpu_long), (wall_short, gpu_short) = long, short
    ops = {k: [(v[0] - gpu_short.get(k, [0, 0])[0]) / steps, (v[1] - gpu_short.get(k, [0, 0])[1]) / steps]
           for k, v in gpu_long.items()}
    return {"wall_ms": 1000 * (wall_long - wall_short) / steps,
            "gpu_busy_ms": sum(v[0] for v in ops.values()),
            "kernels": sum(v[1] for v in ops.values()),
            "top_gpu": [(k[:90], round(v[0], 3), round(v[1], 1)) for k, v in sorted(ops.items(), key=lambda kv: -kv[1][0])[:15]]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=65, help="tokens per row in the profiled call")
    parser.add_argument("--modes", nargs="*", default=["eager", "graphs", "new"],
                        help="eager: 04 before; graphs: the CUDA-graph step alone; graphs_relayout: and the head's input "
                             "re-laid out; new: and the grouped attention core (04 now)")
    parser.add_argument("--trace-tokens", type=int, default=0,
                        help="also write the eager step's timeline for a call of this many tokens (decode_trace.json.gz)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    from unsloth import FastLanguageModel

    model, tok, _ = bench_generate.load_4bit_with_adapter(args.model_dir, adapter_std=0.02)
    FastLanguageModel.for_inference(model)
    questions = bench_generate.eval_questions(args.batch)
    report = {"device": torch.cuda.get_device_name(0), "batch": args.batch, "new_tokens": args.new_tokens}
    paths = {"eager": "old", "graphs": "graphs_only", "graphs_relayout": "graphs_relayout", "new": "new"}
    for name in args.modes:
        bench_generate.drop_captured_decode_steps(model)
        with generation.decode_speedups(model, "unsloth", **bench_generate.PATHS[paths[name]]):
            bench_generate.raw_generate(model, tok, questions, args.new_tokens)  # warm-up: compile, capture
            short = profiled_generate(model, tok, questions, 1)
            long = profiled_generate(model, tok, questions, args.new_tokens)
        report[name] = per_step(long, short, args.new_tokens - 1)
        print(name, json.dumps(report[name], indent=1), flush=True)
    if args.trace_tokens:
        with generation.decode_speedups(model, "unsloth", **bench_generate.PATHS["old"]):
            profiled_generate(model, tok, questions, args.trace_tokens, trace=args.out / "decode_trace.json.gz")
    (args.out / "profile_decode.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
