"""GRPO at the Llama-8B shape as a free T4 runs it: 07's defaults (Params: 4 answers per question of up to 1,024
tokens, batch 4, 8-bit AdamW, LoRA r=16 with Unsloth's checkpointing) on a 4-bit random-weight model, while torch
and Unsloth see a T4 (lab/gpu/t4_mode: fp16, 15 GiB, no FlashAttention 2).

Measures, in one process:
- each GRPO step's seconds (a callback), the rollout's share of it and its generated tokens/s (the trainer's own
  call of `model.generate`, timed around it, inside 04's decode speed-ups as 07 runs it; --plain-rollouts leaves
  them out), and the peak GPU memory;
- the same prompt answered NUM_GENERATIONS times by 04's `generate_answers` at the same batch, sampling, and
  length (after a short untimed call that builds its graphs): the other way 07 could write its answers.
Random weights never write EOS, so every answer runs to the length limit: the slowest and largest case.

On the GPU machine (after installing .whl and building .gpu_ref, see lab/BENCHMARKS.md):
    python lab/bench/bench_grpo.py --out $OUT
Prints a table and writes grpo_bench.json.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu")]
MODEL = pathlib.Path("/tmp/models/llama-8b")
ITEMS = ROOT / "data" / "sample" / "grpo_train.json"
KAGGLE_SESSION_HOURS = 12  # Kaggle's limit on one GPU session
# For the T4 estimate. Decoding 4 answers is far from the memory-bandwidth limit on the H200 (per-token overhead
# dominates), so a T4 is taken to need the same rollout time, or the time to read the 4-bit weights once per token
# at its 320 GB/s if that is longer; the rest of a step (the loss, the backward) scales by fp16 tensor throughput.
T4_BANDWIDTH = 320e9  # bytes/s
T4_TRAIN_SLOWDOWN = 990 / 65  # H200 against T4 dense fp16 TFLOP/s
WEIGHT_BYTES_8B_4BIT = 5.7e9  # NF4 decoder weights plus the fp16 embedding and head of the Llama-8B shape


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def graph_counters(model, backend: str) -> dict:
    """Unsloth's running counts of captured and replayed CUDA-graph decode steps and of eager ones: whether a
    rollout or 04's loop decoded through graphs (Unsloth 2026.10.9 graphs only the llama and qwen3 model
    types, so not the Qwen2-based distills)."""
    if backend != "unsloth":
        return {}
    from bench_generate import decode_graph_stats

    return decode_graph_stats(model)


def letter_share_reward(completions: list[str], **_) -> list[float]:
    """The share of an answer's characters that are ASCII letters: a reward random weights earn unequally (their
    answers are random tokens of every script), so GRPO's advantages are not all zero. Only for --reward spread."""
    return [sum(c.isascii() and c.isalpha() for c in text) / max(1, len(text)) for text in completions]


def child(steps: int, out: pathlib.Path, model_path: pathlib.Path, overrides: dict,
          offload_embedding: str = "notebook", rollout_speedups: bool = True, reward: str = "07") -> dict:
    import torch

    from medical_r1.benchmarks import mc_question
    from medical_r1.generation import GenerationSettings, generate_answers
    from medical_r1.models import language_model_loader
    from medical_r1.params import LORA_TARGET_MODULES, Params
    from medical_r1.rewards import closed_thinking_reward, correctness_reward, format_reward, length_guard, load_items
    from medical_r1.training import weight_changes, weight_snapshot
    from medical_r1.runtime import compute_dtype, setup_backend

    p = Params(**overrides)  # 07's defaults unless a smoke test shrinks them
    runtime, backend = setup_backend("auto", "auto")
    gpu = torch.cuda.is_available()
    FastLanguageModel = language_model_loader(backend)
    # Unsloth's "auto" moves the input embeddings to CPU RAM when it judges the GPU's memory short (1.16 GB at 8B);
    # its CUDA-graph decode step then declines ("parameters on several / non-CUDA devices") and every answer decodes
    # eagerly. 07 keeps them on the GPU where the model type is graphed ("notebook", grpo.embedding_offload); "auto"
    # and "false" force one or the other, to measure what each costs and gives.
    from medical_r1.grpo import embedding_offload, rollouts_with_decode_speedups

    offload_value = {"auto": "auto", "false": False}.get(offload_embedding)
    if offload_embedding == "notebook":
        offload_value = embedding_offload(str(model_path), backend)[0]
    offload = {"offload_embedding": offload_value}
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_path), max_seq_length=p.max_seq_length,
                                                         dtype=compute_dtype(runtime), load_in_4bit=True, **offload)
    from transformers import TrainerCallback  # after Unsloth's import, as in 07: Unsloth patches TRL when imported

    from medical_r1.grpo import make_grpo_trainer

    model = FastLanguageModel.get_peft_model(model, r=p.lora_r, lora_alpha=p.lora_alpha,
                                             target_modules=LORA_TARGET_MODULES, use_gradient_checkpointing="unsloth",
                                             random_state=p.seed, max_seq_length=p.max_seq_length)
    items = load_items(str(ITEMS), 0)

    if rollout_speedups:  # as 07 does
        rollouts_with_decode_speedups(model, backend)
    rollouts = []  # (seconds, new tokens) of each generate call the trainer makes
    generate = model.generate

    def timed_generate(*args, **kwargs):
        sync()
        start = time.perf_counter()
        result = generate(*args, **kwargs)
        sync()
        ids = result if torch.is_tensor(result) else result.sequences
        prompt = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
        new = ids[:, prompt:]
        real = int((new != tokenizer.pad_token_id).sum())
        rollouts.append({"seconds": time.perf_counter() - start, "new_tokens": real, "rows": int(ids.shape[0]),
                         "decode_graphs": graph_counters(model, backend)})
        return result

    model.generate = timed_generate

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.seconds.append(time.perf_counter() - self.start)

    timer = StepTimer()
    # 07's own trainer, for `steps` steps, checkpoints beyond them, in the benchmark's folder.
    p = dataclasses.replace(p, work_dir=str(out / "grpo_bench"), grpo_max_steps=steps, grpo_save_steps=steps + 1,
                            report_to="none")
    rewards = {"07": [correctness_reward, format_reward, length_guard(p.max_completion_length)],
               "spread": [closed_thinking_reward, letter_share_reward]}[reward]
    trainer = make_grpo_trainer(model, tokenizer, items, "r1_chat", p, backend, runtime, rewards)
    trainer.add_callback(timer)
    before = weight_snapshot(model)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak_train = torch.cuda.max_memory_reserved() / 2**30 if gpu else 0.0
    history = [h for h in trainer.state.log_history if "reward" in h]
    model.generate = generate
    raw = {"reward_funcs": [f.__name__ for f in rewards], "weight_changes": weight_changes(before, model),
           "rewards_per_step": [{k: v for k, v in h.items() if k.startswith(("reward", "frac_reward"))} for h in history],
           "backend": backend, "offload_embedding": offload_embedding, "offload_embedding_passed": str(offload_value),
           "rollout_speedups": rollout_speedups,
           "precision": runtime.dtype,
           "device_as_seen": torch.cuda.get_device_name(0) if gpu else "cpu", "step_seconds": timer.seconds,
           "rollouts": rollouts, "peak_reserved_gib_training": round(peak_train, 2),
           "host_load_1min_after_training": os.getloadavg()[0], "host_cpus": os.cpu_count()}  # other work on the host
    (out / "grpo_bench_raw.json").write_text(json.dumps(raw, indent=1))  # kept if what follows fails

    # 04's way, same prompt, batch, sampling and length; the first call warms up (graphs, compile).
    question = [{"question": mc_question(items[0])}] * p.num_generations
    answers_runs = []
    for length in (8, p.max_completion_length):  # a short first call builds the graphs and compiles (not timed)
        sync()
        start = time.perf_counter()
        answers = generate_answers(model, tokenizer, question, "r1_chat", GenerationSettings(
            max_new_tokens=length, temperature=p.grpo_temperature, top_p=1.0, batch_size=p.num_generations, seed=p.seed),
            backend)
        sync()
        answers_runs.append({"seconds": time.perf_counter() - start, "max_new_tokens": length,
                             "new_tokens": sum(a["new_tokens"] for a in answers),
                             "decode_graphs": graph_counters(model, backend)})
    peak_all = torch.cuda.max_memory_reserved() / 2**30 if gpu else 0.0
    settings = ("num_generations", "max_completion_length", "grpo_batch_size", "grpo_grad_accum", "grpo_temperature",
                "lora_r", "max_seq_length")
    return {**raw, "params": {k: getattr(p, k) for k in settings},
            "completion_length": [h.get("completions/mean_length") for h in history],
            "loss": [h.get("loss") for h in history],
            "peak_reserved_gib_with_04_generation": round(peak_all, 2), "generate_answers": answers_runs}


def summarise(raw: dict) -> dict:
    steady = raw["step_seconds"][1:] or raw["step_seconds"]  # the first step compiles and warms up
    rolls = raw["rollouts"][1:] or raw["rollouts"]
    step = sum(steady) / len(steady)
    rollout_seconds = sum(r["seconds"] for r in rolls) / len(rolls)
    rollout_tps = sum(r["new_tokens"] for r in rolls) / sum(r["seconds"] for r in rolls)
    tokens_per_answer = max(r["new_tokens"] / r["rows"] for r in rolls)
    t4_rollout = max(rollout_seconds, tokens_per_answer * WEIGHT_BYTES_8B_4BIT / T4_BANDWIDTH)
    t4_step = t4_rollout + max(step - rollout_seconds, 0) * T4_TRAIN_SLOWDOWN
    summary = {"seconds_per_step": round(step, 1), "rollout_seconds_per_step": round(rollout_seconds, 1),
               "rollout_share": round(rollout_seconds / step, 3), "rollout_tokens_per_s": round(rollout_tps, 1),
               "peak_reserved_gib": raw["peak_reserved_gib_training"], "steps_per_hour_here": round(3600 / step),
               "t4_seconds_per_step_estimate": round(t4_step),
               "t4_steps_per_kaggle_session_estimate": int(KAGGLE_SESSION_HOURS * 3600 / t4_step)}
    if raw.get("generate_answers"):
        ours = raw["generate_answers"][-1]
        summary["generate_answers_tokens_per_s"] = round(ours["new_tokens"] / ours["seconds"], 1)
        summary["faster"] = ("generate_answers" if summary["generate_answers_tokens_per_s"] > rollout_tps
                             else "the trainer's generate")
    return summary


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps to time (the first one is left out)")
    parser.add_argument("--model", type=pathlib.Path, default=MODEL, help="a local model folder")
    parser.add_argument("--smoke", action="store_true", help="a CPU check of this script: short answers, no T4 mode")
    parser.add_argument("--offload-embedding", choices=["notebook", "auto", "false"], default="notebook",
                        help="Unsloth's offload_embedding: 07's choice (grpo.embedding_offload), Unsloth's 'auto', or "
                             "'false' (embeddings stay on the GPU)")
    parser.add_argument("--plain-rollouts", action="store_true",
                        help="the trainer's rollouts without 04's decode_speedups (07 wraps them: its head fix and "
                             "attention core), as 07 ran before 2026-11-30")
    parser.add_argument("--reward", choices=["07", "spread"], default="07",
                        help="07's three rewards, or a closed </think> plus the share of ASCII letters: rewards random "
                             "weights earn unequally, to show GRPO's advantages and LoRA moving at this shape")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {"num_generations": 2, "grpo_batch_size": 2, "max_completion_length": 8} if args.smoke else {}
    if args.child or args.smoke:
        raw = child(args.steps, args.out, args.model, overrides, args.offload_embedding, not args.plain_rollouts,
                    args.reward)
        (args.out / "grpo_bench_raw.json").write_text(json.dumps(raw, indent=1))
        print(json.dumps(summarise(raw), indent=1))
        return 0
    import real_shapes
    from t4_mode import t4_device

    if not (args.model / "config.json").exists():
        real_shapes.build_model_in_child("llama-8b", args.model)
    command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--out", str(args.out), "--model",
               str(args.model), "--offload-embedding", args.offload_embedding, "--reward", args.reward]
    command += ["--plain-rollouts"] if args.plain_rollouts else []
    child_run = subprocess.run(command, env=t4_device.child_environment(os.environ))
    raw = json.loads((args.out / "grpo_bench_raw.json").read_text())
    import torch

    result = {"device": torch.cuda.get_device_name(0), "seen_as": raw["device_as_seen"], "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "complete": child_run.returncode == 0, "summary": summarise(raw),
              "raw": raw}
    (args.out / "grpo_bench.json").write_text(json.dumps(result, indent=1))
    s = result["summary"]
    print(f"| device | {result['device']} seen as {raw['device_as_seen']} ({raw['precision']}) |")
    for key, value in s.items():
        print(f"| {key} | {value} |")
    return child_run.returncode


if __name__ == "__main__":
    sys.exit(main())
