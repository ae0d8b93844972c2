"""04's generation, old path against new in one run, at equal output tokens (min_new_tokens = max_new_tokens):
generate_answers on the 4-bit model plus a LoRA adapter with Unsloth's inference mode (as 04 runs it), greedy,
04's own multiple-choice prompts; rows old_batched_B (Unsloth's eager decode step, the head's input as it
comes: 04 before), graphs_only_batched_B (the CUDA-graph decode step alone) and new_batched_B (graph step and the
head's input re-laid out: 04's path now). Also checks the two give the same logits for the first decode steps,
and runs the default batch at --t4-new-tokens under a 15 GiB cap in float16 (in its own process).
--loop-questions N adds the tutorials' one-question-per-call loop.

On the GPU machine (after installing .whl and building .gpu_ref, see BENCHMARKS.md):
    python bench/bench_generate.py --shape llama-8b --out $OUT
Prints a table and writes generate_bench.json and t4_cap.json.
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
    export,  # noqa: E402
    generation,  # noqa: E402
    params,  # noqa: E402
)
from medical_r1 import data as data_mod  # noqa: E402
from medical_r1 import models as models_mod  # noqa: E402
from medical_r1 import runtime as rt_mod  # noqa: E402
from src_helpers import encode_prompt  # noqa: E402


def eval_questions(n: int) -> list[dict]:
    """n prompts in 04's format, from the repo's sample of the HuatuoGPT-o1 eval file (cycled when n is larger)."""
    data = benchmarks.load_eval_data(str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"), 1000, seed=0)
    items = [item for name in sorted(data) for item in data[name]]
    return [{"id": f"{i}", "question": benchmarks.mc_question(items[i % len(items)])} for i in range(n)]


def timed_generation(model, tok, questions, batch_size, new_tokens, backend="unsloth", graphs=False,
                     warm=True, relayout=True, **generate_kwargs) -> dict:
    """Tokens/s of generate_answers on these questions at equal output tokens (min_new_tokens = max_new_tokens);
    graphs turns on Unsloth's CUDA-graph decode step, relayout=False leaves the head's input as it comes (04's
    path before both: graphs=False, relayout=False). A warm-up call with the same shapes comes first."""
    import torch

    run = lambda n: generation.generate_answers(model, tok, questions, "r1_chat", n, 0.6, 0.95, False,  # noqa: E731
                                                batch_size, 0, backend, min_new_tokens=n, decode_graphs=graphs,
                                                head_relayout=relayout, **generate_kwargs)

    if warm:
        run(new_tokens if generate_kwargs.get("cache_implementation") == "static" else 8)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    answers = run(new_tokens)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(a["new_tokens"] for a in answers)
    return {"batch_size": batch_size, "questions": len(questions), "new_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "tokens_per_question": tokens / len(questions),
            **rt_mod.peak_gpu_memory_gib()}


def raw_generate(model, tok, questions, new_tokens, **extra):
    """One greedy model.generate call on a left-padded batch, as generate_answers makes it, with extra kwargs."""
    import torch

    encoded = [encode_prompt(tok, q["question"], "r1_chat") for q in questions]
    width = max(map(len, encoded))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded], device="cuda")
    mask = (torch.arange(width, device="cuda")[None, :] >= torch.tensor([width - len(e) for e in encoded],
                                                                          device="cuda")[:, None]).long()
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=tok.pad_token_id, **extra)


def load_4bit_with_adapter(model_dir, precision="bf16", memory_cap_gib=0, max_seq_length=4096, adapter_std=0.0):
    """(model, tokenizer, backend) as 04 runs it: the 4-bit base with a LoRA adapter, through Unsloth.
    adapter_std > 0 draws LoRA's B from N(0, adapter_std) (seed 0): a trained adapter is not zero, and with a
    zero one the base and the tuned model, or a wrong merge, could not differ."""
    import torch

    runtime, backend = rt_mod.setup_backend("unsloth", precision, memory_cap_gib=memory_cap_gib)
    model, tok = models_mod.load_model_and_tokenizer(model_dir, backend, runtime, max_seq_length)
    model = models_mod.add_lora(model, backend, params.Params(model_name=model_dir))
    if adapter_std:
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, adapter_std)
    return model, tok, backend


def first_step_logits(model, tok, questions, steps, graphs, relayout):
    """Greedy logits of the first decode steps for a left-padded batch, as generate_answers makes it, with
    Unsloth's eager decode step and the head's input as it comes (04 before) or with its CUDA-graph replay and
    the head's input re-laid out (04 now)."""
    import torch
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
    with generation.environment({"UNSLOTH_DECODE_CUDA_GRAPHS": "1" if graphs else "0"}), \
            generation.head_reads_weights_once(model, relayout):
        out = raw_generate(model, tok, questions, steps, output_logits=True, return_dict_in_generate=True)
    return torch.stack(out.logits, 1).float(), out.sequences[:, -steps:]


def compare_first_steps(reference, candidate) -> dict:
    """05's logit comparison (largest difference, relative to the largest logit; argmax agreement) of two
    first_step_logits results, and whether their greedy tokens are equal."""
    import torch

    (ref, ref_tokens), (cand, cand_tokens) = reference, candidate
    return {**export.compare_logits([ref], [cand]), "greedy_tokens_equal": torch.equal(ref_tokens.cpu(), cand_tokens.cpu())}


def t4_cap_run(model_dir, new_tokens, out):
    """The default batch at new_tokens output tokens each, under a 15 GiB cap in float16 (what a T4 has), on
    the 4-bit path a T4 runs: does it fit? Peak memory recorded."""
    model, tok, _ = load_4bit_with_adapter(model_dir, "fp16", memory_cap_gib=15)
    batch = params.Params().gen_batch_size
    try:
        row = timed_generation(model, tok, eval_questions(batch), batch, new_tokens, graphs=True, warm=False)
    except Exception as err:  # noqa: BLE001 (recorded: an out-of-memory here is the finding)
        row = {"error": f"{type(err).__name__}: {str(err)[:300]}", **rt_mod.peak_gpu_memory_gib()}
    row.update(cap_gib=15, dtype="float16", path="4-bit + LoRA, Unsloth CUDA-graph decode")
    artifacts.write_json(out / "t4_cap.json", row)
    print("t4 cap", row, flush=True)


def main():
    import os
    import subprocess

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-8b")
    parser.add_argument("--model-dir", help="an existing model folder (else one is built)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--new-tokens", type=int, default=256, help="output tokens per question, in every mode")
    parser.add_argument("--loop-questions", type=int, default=0, help="questions for the one-at-a-time loop")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--t4-cap", action="store_true", help="(internal) the 15 GiB run, in its own process")
    parser.add_argument("--t4-new-tokens", type=int, default=1024)
    parser.add_argument("--deadline-s", type=float, default=420, help="skip the remaining rows after this")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if not model_dir:
        import real_shapes

        model_dir = f"/tmp/models/{args.shape}"
        real_shapes.build_model(args.shape, model_dir)
    if args.t4_cap:
        return t4_cap_run(model_dir, args.t4_new_tokens, args.out)
    started = time.perf_counter()
    model, tok, _ = load_4bit_with_adapter(model_dir, adapter_std=0.02)
    runs, rows = {}, []
    if args.loop_questions:
        rows.append(("one_at_a_time", lambda: timed_generation(model, tok, eval_questions(args.loop_questions), 1,
                                                                 args.new_tokens)))
    for b in args.batch_sizes:
        rows.append((f"old_batched_{b}", lambda b=b: timed_generation(model, tok, eval_questions(b), b,
                                                                      args.new_tokens, graphs=False, relayout=False)))
        rows.append((f"graphs_only_batched_{b}", lambda b=b: timed_generation(model, tok, eval_questions(b), b,
                                                                              args.new_tokens, graphs=True,
                                                                              relayout=False)))
        rows.append((f"new_batched_{b}", lambda b=b: timed_generation(model, tok, eval_questions(b), b,
                                                                      args.new_tokens, graphs=True)))
    for name, fn in rows:
        if time.perf_counter() - started > args.deadline_s:
            runs[name] = {"skipped": "deadline"}
            continue
        try:
            runs[name] = fn()
        except Exception as err:  # noqa: BLE001 (record and go on)
            runs[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(name, runs[name], flush=True)
    for b in args.batch_sizes:
        if "tokens_per_s" in runs.get(f"new_batched_{b}", {}) and "tokens_per_s" in runs.get(f"old_batched_{b}", {}):
            runs[f"new_batched_{b}"]["speedup_vs_old_same_batch"] = (
                runs[f"new_batched_{b}"]["tokens_per_s"] / runs[f"old_batched_{b}"]["tokens_per_s"])
    questions = eval_questions(8)
    before = first_step_logits(model, tok, questions, 8, graphs=False, relayout=False)
    checks = {"graphs_vs_eager_first_8_steps": compare_first_steps(
                  before, first_step_logits(model, tok, questions, 8, graphs=True, relayout=False)),
              "new_vs_old_first_8_steps": compare_first_steps(
                  before, first_step_logits(model, tok, questions, 8, graphs=True, relayout=True))}
    print(checks, flush=True)
    model = None  # free the GPU for the capped run
    torch.cuda.empty_cache()
    report = {"meta": {"device": torch.cuda.get_device_name(0), **bench_train.package_versions(),
                       "shape": args.shape, "new_tokens_per_question": args.new_tokens},
              "runs": runs, "checks": checks}
    artifacts.write_json(args.out / "generate_bench.json", report)
    subprocess.run([sys.executable, __file__, "--model-dir", model_dir, "--out", str(args.out), "--t4-cap",
                    "--t4-new-tokens", str(args.t4_new_tokens)], check=False, env=os.environ)
    cap = args.out / "t4_cap.json"
    report["t4_cap"] = json.loads(cap.read_text()) if cap.exists() else {"error": "the capped run wrote nothing"}
    artifacts.write_json(args.out / "generate_bench.json", report)
    print("| mode | batch | output tokens | s | tokens/s | peak alloc / reserved GiB |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        if "tokens_per_s" in r:
            print(f"| {name} | {r['batch_size']} | {r['new_tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                  f"{r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f} |")
        else:
            print(f"| {name} | {r} |")
    print(json.dumps({"checks": checks, "t4_cap": report["t4_cap"]}))


if __name__ == "__main__":
    main()
