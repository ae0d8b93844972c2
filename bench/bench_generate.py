"""Eval generation throughput on one GPU: the tutorials' loop (one question per generate call) against 04's
batched generation (src_helpers.generate_answers: left padding, length-sorted batches), with Unsloth's fast
inference, the 4-bit model plus a LoRA adapter (as 04 runs it), greedy, and the same number of output tokens
per question in both (min_new_tokens = max_new_tokens), on the benchmark's own multiple-choice prompts.

On the GPU machine (after installing .whl and building .gpu_ref, see BENCHMARKS.md):
    python bench/bench_generate.py --shape llama-8b --out $OUT
Prints a table and writes generate_bench.json.
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gpu"), str(ROOT / "bench")]
import bench_train  # noqa: E402

from medical_r1 import (
    artifacts,  # noqa: E402
    benchmarks,  # noqa: E402
    generation,  # noqa: E402
    params,  # noqa: E402
)
from medical_r1 import data as data_mod  # noqa: E402
from medical_r1 import models as models_mod  # noqa: E402
from medical_r1 import runtime as rt_mod  # noqa: E402

TARGET_SPEEDUP = 10.0


def eval_questions(n: int) -> list[dict]:
    """n prompts in 04's format, from the repo's sample of the HuatuoGPT-o1 eval file (cycled when n is larger)."""
    data = benchmarks.load_eval_data(str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"), 1000, seed=0)
    items = [item for name in sorted(data) for item in data[name]]
    return [{"id": f"{i}", "question": benchmarks.mc_question(items[i % len(items)])} for i in range(n)]


def timed_generation(model, tok, questions, batch_size, new_tokens) -> dict:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    answers = generation.generate_answers(model, tok, questions, "r1_chat", new_tokens, 0.6, 0.95, False, batch_size, 0,
                                  "unsloth", min_new_tokens=new_tokens)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(a["new_tokens"] for a in answers)
    return {"batch_size": batch_size, "questions": len(questions), "new_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "tokens_per_question": tokens / len(questions),
            **rt_mod.peak_gpu_memory_gib()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-8b")
    parser.add_argument("--model-dir", help="an existing model folder (else one is built)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--new-tokens", type=int, default=256, help="output tokens per question, in every mode")
    parser.add_argument("--loop-questions", type=int, default=8, help="questions for the one-at-a-time loop")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[params.Params().gen_batch_size, 32])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if not model_dir:
        import real_shapes

        model_dir = f"/tmp/models/{args.shape}"
        real_shapes.build_model(args.shape, model_dir)
    runtime, backend = rt_mod.setup_backend("unsloth", "bf16")
    model, tok = models_mod.load_model_and_tokenizer(model_dir, backend, runtime, 2048)
    model = models_mod.add_lora(model, backend, params.Params(model_name=model_dir))
    timed_generation(model, tok, eval_questions(2), 2, 8)  # warm-up: kernels compiled, caches allocated
    runs = {"one_at_a_time": timed_generation(model, tok, eval_questions(args.loop_questions), 1, args.new_tokens)}
    for b in args.batch_sizes:
        runs[f"batched_{b}"] = timed_generation(model, tok, eval_questions(2 * b), b, args.new_tokens)
    loop = runs["one_at_a_time"]["tokens_per_s"]
    for r in runs.values():
        r["speedup"] = r["tokens_per_s"] / loop
    default = runs[f"batched_{params.Params().gen_batch_size}"]
    report = {"meta": {"device": __import__("torch").cuda.get_device_name(0), **bench_train.package_versions(),
                       "shape": args.shape, "new_tokens_per_question": args.new_tokens},
              "runs": runs, "target": {"speedup_at_default_batch": default["speedup"], "target": TARGET_SPEEDUP,
                                       "met": default["speedup"] >= TARGET_SPEEDUP}}
    artifacts.write_json(args.out / "generate_bench.json", report)
    print("| mode | batch | questions | output tokens | s | tokens/s | speedup | peak alloc GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['batch_size']} | {r['questions']} | {r['new_tokens']} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:.0f} | {r['speedup']:.1f}x | {r['peak_allocated_gib']:.2f} |")
    print(json.dumps(report["target"]))


if __name__ == "__main__":
    main()
