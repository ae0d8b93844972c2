"""04's generation, old path against new in one run, at equal output tokens (min_new_tokens = max_new_tokens):
generate_answers on the 4-bit model plus a LoRA adapter with Unsloth's inference mode (as 04 runs it), greedy,
04's own multiple-choice prompts. Rows per batch B: old_batched_B (Unsloth's eager decode step, the head's input
as it comes, Unsloth's attention core: 04 before), graphs_relayout_batched_B (the CUDA-graph decode step and the
head's input re-laid out, Unsloth's attention core), new_batched_B (all three: 04's path now); graphs_only and
relayout_only rows on request (--only-rows). Each row captures its own decode graphs. Also compares the first
decode steps' logits of each path with the old one, records what layout the head receives, and runs the
default batch at --t4-new-tokens under a 15 GiB cap in float16 (in its own process; --t4-mode makes torch and
Unsloth see a T4 there, --t4-offload-embedding and --t4-batch set its load and batch, --t4-cap-only runs only it).
--loop-questions N adds the tutorials' one-question-per-call loop. --repeat N runs the rows N times alternated
(A, B, C, A, B, C, ... in the one process, the host's load recorded before each): each row then gives the median
run with the range of its tokens/s, and each speed-up the median of the paired runs' ratios.

On the GPU machine (after installing .whl and building .gpu_ref, see lab/BENCHMARKS.md):
    python lab/bench/bench_generate.py --shape llama-8b --out $OUT
Prints a table and writes generate_bench.json and t4_cap.json.
"""
import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu"), str(ROOT / "lab" / "bench")]
import bench_train  # noqa: E402
import repeat  # noqa: E402

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


# The paths the rows and checks compare: which of generate's speed-ups (generation.decode_speedups) are on.
PATHS = {"old": dict(graphs=False, relayout=False, grouped=False),  # 04 before
         "graphs_only": dict(graphs=True, relayout=False, grouped=False),
         "relayout_only": dict(graphs=False, relayout=True, grouped=False),
         "graphs_relayout": dict(graphs=True, relayout=True, grouped=False),
         "new_float32_core": dict(graphs=True, relayout=True, grouped=True, fused=False),
         "new": dict(graphs=True, relayout=True, grouped=True)}  # 04 now


def timed_generation(model, tok, questions, batch_size, new_tokens, backend="unsloth", path="new", warm=True,
                     **generate_kwargs) -> dict:
    """Tokens/s of generate_answers on these questions at equal output tokens (min_new_tokens = max_new_tokens),
    on one of PATHS. A warm-up call with the same shapes comes first."""
    import torch

    on = {"fused": True, **PATHS[path]}
    run = lambda n: generation.generate_answers(  # noqa: E731 (greedy, n tokens each, at this batch)
        model, tok, questions, "r1_chat", generation.GenerationSettings(max_new_tokens=n, do_sample=False,
                                                                        batch_size=batch_size, seed=0),
        backend, min_new_tokens=n,
        decode_graphs=on["graphs"], head_relayout=on["relayout"], grouped_attention=on["grouped"],
        fused_attention=on["fused"], **generate_kwargs)

    auto = ""
    if not batch_size:
        longest = max(len(encode_prompt(tok, q["question"], "r1_chat")) for q in questions)
        batch_size, auto = generation.auto_batch_size(model, longest, new_tokens)
    if backend == "unsloth":
        drop_captured_decode_steps(model)
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
            **rt_mod.peak_gpu_memory_gib(), "auto_batch": auto,
            "decode_graphs": decode_graph_stats(model) if backend == "unsloth" else {}}


def drop_captured_decode_steps(model):
    """Unsloth keys a captured decode step by batch size, not by the hooks around it: without this, a row
    replays the step an earlier row captured (the first GPU run of this benchmark measured the head
    re-layout that way, i.e. not at all). Each row captures its own."""
    from unsloth.models import _decode_graphs

    _decode_graphs.invalidate(model)


def decode_graph_stats(model) -> dict:
    """Unsloth's counters of captured and replayed decode steps (to show a row ran the path it names)."""
    from unsloth.models import _decode_graphs

    return next((_decode_graphs.stats(m) for m in model.modules() if "_unsloth_decode_graphs" in m.__dict__), {})


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


def load_4bit_with_adapter(model_dir, precision="bf16", memory_cap_gib=0, max_seq_length=4096, adapter_std=0.0,
                           **unsloth_options):
    """(model, tokenizer, backend) as 04 runs it: the 4-bit base with a LoRA adapter, through Unsloth.
    adapter_std > 0 draws LoRA's B from N(0, adapter_std) (seed 0): a trained adapter is not zero, and with a
    zero one the base and the tuned model, or a wrong merge, could not differ."""
    import torch

    runtime, backend = rt_mod.setup_backend("unsloth", precision, memory_cap_gib=memory_cap_gib)
    model, tok = models_mod.load_model_and_tokenizer(model_dir, backend, runtime, max_seq_length, **unsloth_options)
    model = models_mod.add_lora(model, backend, params.Params(model_name=model_dir))
    if adapter_std:
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, adapter_std)
    return model, tok, backend


def first_step_logits(model, tok, questions, steps, path, forced=None):
    """Greedy logits of the first decode steps for a left-padded batch, as generate_answers makes it, on one of
    PATHS. forced: [batch, steps] tokens to feed back
    instead of the path's own choices (teacher forcing), so that two paths' logits are compared on the same
    inputs at every step: a random-weight model's near-flat logits make greedy choices flip at rounding, and
    from there two free runs see different text."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from unsloth import FastLanguageModel

    class Force(LogitsProcessor):
        def __init__(self):
            self.step = 0

        def __call__(self, input_ids, scores):
            only = torch.full_like(scores, float("-inf"))
            only.scatter_(1, forced[:, self.step:self.step + 1].to(scores.device), 0.0)
            self.step += 1
            return only

    extra = {"logits_processor": LogitsProcessorList([Force()])} if forced is not None else {}
    FastLanguageModel.for_inference(model)
    drop_captured_decode_steps(model)
    with generation.decode_speedups(model, "unsloth", **PATHS[path]):
        out = raw_generate(model, tok, questions, steps, output_logits=True, return_dict_in_generate=True, **extra)
    return torch.stack(out.logits, 1).float(), out.sequences[:, -steps:]


def head_input_layouts(model, tok, questions, graphs) -> list:
    """(shape, strides) of what the output head receives in a short generate call as 04 makes it (the first
    entry is the prefill), with the eager or the CUDA-graph decode step; recorded before any re-layout."""
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
    drop_captured_decode_steps(model)
    seen = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append([list(args[0].shape), list(args[0].stride())]))
    try:
        with generation.decode_speedups(model, "unsloth", graphs=graphs, relayout=False, grouped=False):
            raw_generate(model, tok, questions, 4)
    finally:
        handle.remove()
    return seen


def grouped_core_check(batch=32, kv_heads=8, groups=4, length=700, head_dim=128) -> dict:
    """generation.grouped_query_decode_attention on this GPU in bfloat16 against the attention Unsloth's core
    computes (K and V repeated per query group, float32 math), on random values laid out as Unsloth's decode
    cache, with left padding: the largest difference, relative to the largest output."""
    import math
    import types

    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    paged = torch.randn(length + 64, 2, batch, kv_heads, head_dim, generator=g, device="cuda").bfloat16()
    attn = types.SimpleNamespace(paged_attention_K=paged[:, 0], paged_attention_V=paged[:, 1])
    queries = torch.randn(batch, 1, kv_heads * groups, head_dim, generator=g, device="cuda").bfloat16().transpose(1, 2)
    keep = torch.arange(length, device="cuda")[None, :] >= torch.arange(batch, device="cuda")[:, None] * 7
    got = generation.grouped_query_decode_attention(attn, queries, length, keep[:, None, None, :]).float()
    keys = attn.paged_attention_K[:length].permute(1, 2, 0, 3).float().repeat_interleave(groups, 1)
    values = attn.paged_attention_V[:length].permute(1, 2, 0, 3).float().repeat_interleave(groups, 1)
    scores = (queries.float() @ keys.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~keep[:, None, None, :],
                                                                                         float("-inf"))
    want = scores.softmax(-1) @ values
    diff = (got - want).abs().max().item()
    return {"max_abs_diff": diff, "relative_diff": diff / want.abs().max().item()}


# Largest logit difference between two bfloat16 paths, relative to the largest logit, that still counts as
# "the same within rounding": bfloat16 rounds at 0.4% relative, and a changed reduction order in each of 32
# layers may compound a few such roundings.
BF16_LOGIT_TOLERANCE = 0.02


def compare_first_steps(reference, candidate) -> dict:
    """05's logit comparison (largest difference, relative to the largest logit; argmax agreement) of two
    first_step_logits results, and whether their greedy tokens are equal."""
    import torch

    (ref, ref_tokens), (cand, cand_tokens) = reference, candidate
    check = export.compare_logits([ref], [cand])
    scale = ref.abs().max().item()
    check["relative_diff_per_step"] = [round((ref[:, k] - cand[:, k]).abs().max().item() / scale, 5)
                                       for k in range(ref.shape[1])]
    check["tolerance"] = BF16_LOGIT_TOLERANCE
    check["within_tolerance"] = check["relative_diff"] <= check["tolerance"]
    return {**check, "greedy_tokens_equal": torch.equal(ref_tokens.cpu(), cand_tokens.cpu())}


def t4_cap_run(model_dir, new_tokens, out, batch=0, offload_embedding="default"):
    """A batch (0: GEN_BATCH_SIZE's default, chosen from free memory as 04 does) at new_tokens output tokens each,
    under a 15 GiB cap in float16 (what a T4 has), on the 4-bit path a T4 runs: does it fit, how fast, through
    Unsloth's graphs or not? In T4 mode (--t4-mode) Unsloth also decides as on a T4 (its "auto" keeps the 8B's
    input embeddings on the GPU there; moved to CPU RAM they would turn its graphs off); offload_embedding "auto"
    and "false" pass Unsloth's choices explicitly."""
    options = {} if offload_embedding == "default" else {"offload_embedding": {"auto": "auto", "false": False}[
        offload_embedding]}
    model, tok, _ = load_4bit_with_adapter(model_dir, "fp16", memory_cap_gib=15, **options)
    batch = batch or params.Params().gen_batch_size
    questions = eval_questions(2 * max(batch, generation.AUTO_BATCH_SIZES[-1]))
    try:
        row = timed_generation(model, tok, questions, batch, new_tokens, path="new", warm=False)
    except Exception as err:  # noqa: BLE001 (recorded: an out-of-memory here is the finding)
        row = {"error": f"{type(err).__name__}: {str(err)[:300]}", **rt_mod.peak_gpu_memory_gib()}
    row.update(cap_gib=15, dtype="float16", path="4-bit + LoRA, 04's decode path", offload_embedding=offload_embedding,
               t4_mode=os.environ.get("MEDICAL_R1_T4") == "1")
    artifacts.write_json(out / "t4_cap.json", row)
    print("t4 cap", row, flush=True)


def capped_run(model_dir, args) -> dict:
    """t4_cap_run in a process of its own (in T4 mode with --t4-mode); what it wrote to t4_cap.json."""
    import subprocess

    from t4_mode import t4_device

    env = t4_device.child_environment(os.environ) if args.t4_mode else os.environ
    subprocess.run([sys.executable, __file__, "--model-dir", model_dir, "--out", str(args.out), "--t4-cap",
                    "--t4-new-tokens", str(args.t4_new_tokens), "--t4-batch", str(args.t4_batch),
                    "--t4-offload-embedding", args.t4_offload_embedding], check=False, env=env)
    cap = args.out / "t4_cap.json"
    result = json.loads(cap.read_text()) if cap.exists() else {"error": "the capped run wrote nothing"}
    print(json.dumps(result), flush=True)
    return result


def aggregate_repeats(all_runs: dict) -> dict:
    """{row: [run per round]} -> {row: the median run (by tokens/s), with every run and the spread}; a row
    none of whose runs finished keeps its first run (its error)."""
    rows = {}
    for name, runs in all_runs.items():
        timed = [r for r in runs if "tokens_per_s" in r]
        if not timed:
            rows[name] = runs[0]
            continue
        spread = repeat.spread([r["tokens_per_s"] for r in timed])
        middle = min(timed, key=lambda r: abs(r["tokens_per_s"] - spread["median"]))
        rows[name] = {**middle, "tokens_per_s": spread["median"], "tokens_per_s_spread": spread, "runs": runs}
    return rows


def speedup(runs: dict, new: str, old: str):
    """new over old: the median of the paired runs' ratios where rows were repeated, else the one ratio."""
    a, b = runs.get(new, {}), runs.get(old, {})
    if "runs" in a and "runs" in b:
        return repeat.paired_ratios(a["runs"], b["runs"], "tokens_per_s")["median"]
    return a["tokens_per_s"] / b["tokens_per_s"] if "tokens_per_s" in a and "tokens_per_s" in b else None


def main():
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-8b")
    parser.add_argument("--model-dir", help="an existing model folder (else one is built)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--new-tokens", type=int, default=256, help="output tokens per question, in every mode")
    parser.add_argument("--loop-questions", type=int, default=0, help="questions for the one-at-a-time loop")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 0], help="0: chosen as 04 does (auto)")
    parser.add_argument("--t4-cap", action="store_true", help="(internal) the 15 GiB run, in its own process")
    parser.add_argument("--t4-new-tokens", type=int, default=1024)
    parser.add_argument("--t4-batch", type=int, default=0, help="the capped run's batch (0: chosen as 04 does)")
    parser.add_argument("--t4-mode", action="store_true",
                        help="the capped run's torch and Unsloth see a T4 (lab/gpu/t4_mode), so Unsloth decides as there")
    parser.add_argument("--t4-offload-embedding", choices=["default", "auto", "false"], default="default",
                        help="the capped run's offload_embedding: Unsloth's default, 'auto', or 'false' (on the GPU)")
    parser.add_argument("--t4-cap-only", action="store_true", help="only the capped run")
    parser.add_argument("--only-rows", nargs="*", help="run only these rows (names as in the table)")
    parser.add_argument("--skip-t4-cap", action="store_true", help="leave out the 15 GiB run")
    parser.add_argument("--skip-checks", action="store_true", help="leave out the logit and layout checks")
    parser.add_argument("--deadline-s", type=float, default=420, help="skip the remaining rows after this")
    parser.add_argument("--repeat", type=int, default=1, help="run the rows N times, alternated; medians, ranges")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if not model_dir:
        import real_shapes

        model_dir = f"/tmp/models/{args.shape}"
        real_shapes.build_model(args.shape, model_dir)
    if args.t4_cap:
        return t4_cap_run(model_dir, args.t4_new_tokens, args.out, args.t4_batch, args.t4_offload_embedding)
    if args.t4_cap_only:
        return capped_run(model_dir, args)
    started = time.perf_counter()
    model, tok, _ = load_4bit_with_adapter(model_dir, adapter_std=0.02)
    runs, rows = {}, []
    if args.loop_questions:
        rows.append(("one_at_a_time", lambda: timed_generation(model, tok, eval_questions(args.loop_questions), 1,
                                                                 args.new_tokens, path="relayout_only")))
    default_rows = ("old", "graphs_relayout", "new_float32_core", "new")
    for b in args.batch_sizes:
        for path in PATHS:
            name = f"{path}_batched_{b or 'auto'}"
            if name in (args.only_rows or []) or (not args.only_rows and path in default_rows):
                rows.append((name, lambda b=b, path=path: timed_generation(
                    model, tok, eval_questions(b or generation.AUTO_BATCH_SIZES[0]), b, args.new_tokens, path=path)))
    all_runs = {name: [] for name, _ in rows}
    for k, name in repeat.alternated([row[0] for row in rows], args.repeat):
        fn = dict(rows)[name]
        host = repeat.host_snapshot()
        if time.perf_counter() - started > args.deadline_s:
            all_runs[name].append({"skipped": "deadline", "round": k})
            continue
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 (record and go on)
            result = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        all_runs[name].append({**result, "round": k, "host_before": host})
        print(name, k, result, flush=True)
    runs = aggregate_repeats(all_runs) if args.repeat > 1 else {n: r[0] for n, r in all_runs.items()}
    for b in args.batch_sizes:
        if b and speedup(runs, f"new_batched_{b}", f"old_batched_{b}") is not None:
            runs[f"new_batched_{b}"]["speedup_vs_old_same_batch"] = speedup(runs, f"new_batched_{b}",
                                                                             f"old_batched_{b}")
    default_old = f"old_batched_{generation.AUTO_BATCH_SIZES[-1]}"
    for name, r in runs.items():
        if "tokens_per_s" in r and speedup(runs, name, default_old) is not None:
            r["vs_old_batched_32"] = speedup(runs, name, default_old)
    checks = {}
    if not args.skip_checks:
        questions = eval_questions(8)
        grouped_core = grouped_core_check()
        print("grouped core vs float32 reference", grouped_core, flush=True)
        before = first_step_logits(model, tok, questions, 8, "old")
        forced = before[1]
        checks = {"graphs_vs_eager_first_8_steps": compare_first_steps(
                      before, first_step_logits(model, tok, questions, 8, "graphs_only", forced)),
                  "relayout_vs_old_first_8_steps": compare_first_steps(
                      before, first_step_logits(model, tok, questions, 8, "relayout_only", forced)),
                  "graphs_relayout_vs_old_first_8_steps": compare_first_steps(
                      before, first_step_logits(model, tok, questions, 8, "graphs_relayout", forced)),
                  "new_float32_core_vs_old_first_8_steps": compare_first_steps(
                      before, first_step_logits(model, tok, questions, 8, "new_float32_core", forced)),
                  "new_vs_old_first_8_steps": compare_first_steps(
                      before, first_step_logits(model, tok, questions, 8, "new", forced)),
                  "new_vs_old_free_running_first_8_steps": compare_first_steps(
                      before, first_step_logits(model, tok, questions, 8, "new"))}
        checks["grouped_core_vs_float32_reference"] = grouped_core
        checks["head_input_layouts"] = {"eager": head_input_layouts(model, tok, questions, graphs=False),
                                        "graphs": head_input_layouts(model, tok, questions, graphs=True)}
        print(checks, flush=True)
    model = None  # free the GPU for the capped run
    torch.cuda.empty_cache()
    report = {"meta": {"device": torch.cuda.get_device_name(0), **bench_train.package_versions(),
                       "shape": args.shape, "new_tokens_per_question": args.new_tokens, "repeat": args.repeat},
              "runs": runs, "checks": checks}
    artifacts.write_json(args.out / "generate_bench.json", report)
    if not args.skip_t4_cap:
        report["t4_cap"] = capped_run(model_dir, args)
    artifacts.write_json(args.out / "generate_bench.json", report)
    print("| mode | batch | output tokens | s | tokens/s (median (min-max) with --repeat) "
          "| vs old_batched_32 (04 before) | peak alloc / reserved GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        if "tokens_per_s" in r:
            rate = repeat.fmt(r["tokens_per_s_spread"]) if "tokens_per_s_spread" in r else f"{r['tokens_per_s']:.0f}"
            print(f"| {name} | {r['batch_size']} | {r['new_tokens']} | {r['seconds']:.1f} | {rate} | "
                  f"{r.get('vs_old_batched_32', float('nan')):.2f}x | "
                  f"{r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f} |")
        else:
            print(f"| {name} | {r} |")
    print(json.dumps({"checks": checks, "t4_cap": report.get("t4_cap")}))


if __name__ == "__main__":
    main()
