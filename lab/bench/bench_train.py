"""Training throughput on one GPU: (a) the project's path (src_helpers' defaults: Unsloth, packing), (b) the
seed tutorial's configuration (Unsloth, batch 2 x accumulation 4, no packing, loss on the full text), (c) plain
transformers + PEFT + bitsandbytes QLoRA (prepare_model_for_kbit_training, gradient checkpointing, sdpa, batch
2 x 4, full text), the way the seed scripts train. Same data, same model, same GPU, one run.

Each configuration runs in its own process: importing Unsloth patches transformers, so (c) must never share a
process with it. Every process also measures the GPU's bf16 matmul rate, the denominator of MFU.

On the GPU machine (after installing .whl and building .gpu_ref, see lab/BENCHMARKS.md):
    python lab/bench/bench_train.py --shape llama-8b --out $OUT
Prints a table and writes train_bench.json.

With --repeat N (lab/bench/repeat.py): the configurations asked run alternated in one invocation, N timed windows
each (A, B, C, A, B, C, ...), one process per configuration that loads its model once, only one on the GPU at a
time; the warm-up and each window's first step untimed; the host's load before each window. Writes every window and
the medians with their ranges to train_bench_repeated.json and judges each ratio on its median. --profile adds two
profiled steps per configuration after the windows (torch.profiler: host against GPU time, syncs, allocator calls,
compiled regions, top operations), for the trainer-against-bare-loop question.
"""
import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu"), str(ROOT / "lab" / "bench")]
import repeat  # noqa: E402
from medical_r1 import (
    artifacts,  # noqa: E402
    params,  # noqa: E402
)
from medical_r1 import data as data_mod  # noqa: E402
from medical_r1 import models as models_mod  # noqa: E402
from medical_r1 import runtime as rt_mod  # noqa: E402
from medical_r1 import training as training_mod  # noqa: E402

DATA = ROOT / ".gpu_ref" / "data" / "medical_o1_sft.json"  # real-schema rows, real length distribution
CONFIGS = {
    # (a) as a T4 gets it: the project's defaults with gradient checkpointing forced on.
    "a_project": {"backend": "unsloth", "params": {"gradient_checkpointing": "on"}, "completion_only_loss": True},
    # (a) with the default GRADIENT_CHECKPOINTING = "auto": on a GPU with the memory, nothing recomputed.
    "a_project_auto": {"backend": "unsloth", "params": {}, "completion_only_loss": True},
    # (a) with each packed micro-batch padded (filler unlabelled, counted as padding) to a multiple of 512 tokens,
    # or to the full BATCH_SIZE x MAX_SEQ_LENGTH: fewer shapes for the compiled blocks, some compute on filler.
    "a_project_bucketed_512": {"backend": "unsloth", "params": {"gradient_checkpointing": "on"},
                               "completion_only_loss": True, "bucket": 512},
    "a_project_bucketed_full": {"backend": "unsloth", "params": {"gradient_checkpointing": "on"},
                                "completion_only_loss": True, "bucket": "full"},
    # The default on a GPU with the memory (nothing recomputed), with the full-length padding: the two together.
    "a_project_auto_bucketed_full": {"backend": "unsloth", "params": {}, "completion_only_loss": True,
                                     "bucket": "full"},
    "b_seed": {"backend": "unsloth", "params": {"packing": False, "batch_size": 2, "grad_accum": 4},
               "completion_only_loss": False},
    "c_peft_bnb": {"backend": "transformers", "params": {"packing": False, "batch_size": 2, "grad_accum": 4},
                   "completion_only_loss": False},
    # The bare Unsloth loop on (a)'s own batches: the same packed rows, position ids and labels from (a)'s
    # trainer's dataloader, model(**batch).loss.backward() and an 8-bit AdamW step; no Trainer around it.
    "r_raw_loop": {"backend": "unsloth", "params": {"gradient_checkpointing": "on"}, "completion_only_loss": True,
                   "raw": True},
    # The same loop over (a)'s first 8 micro-batches, again and again: after the first pass every shape has been
    # compiled, so this is the bare loop's speed when shapes cost nothing (the "repeated shapes").
    "r_raw_loop_repeated": {"backend": "unsloth", "params": {"gradient_checkpointing": "on"},
                            "completion_only_loss": True, "raw": True, "repeat": 8},
    # The same loop without gradient checkpointing (as a bare loop runs unless it asks for it): every
    # activation kept, no recomputation. Shows what checkpointing costs, in time and in memory.
    "r_raw_loop_no_checkpointing": {"backend": "unsloth", "params": {"gradient_checkpointing": "off"},
                                    "completion_only_loss": True, "raw": True, "checkpointing": False},
    # "auto" (no recomputation) with torch's expandable segments: packed micro-batches of ever-different lengths
    # make activation blocks of ever-different sizes, which the caching allocator may not reuse (issue 46's
    # allocator-churn hypothesis); expandable segments grow one mapping instead of allocating new blocks.
    "a_project_auto_expandable": {"backend": "unsloth", "params": {}, "completion_only_loss": True,
                                  "env": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}},
}
TARGETS = {"a_over_c": 4.0, "a_over_b": 1.15, "a_over_r": 0.9, "a_over_r_repeated": 0.95, "peak_gib": 8.0, "mfu": 0.40,
           "auto_over_a": 1.5, "auto_over_r_no_checkpointing": 0.9}
# Each ratio: (numerator, denominator, the rate compared).
RATIOS = {"a_over_c": ("a_project", "c_peft_bnb", "answer_tokens_per_s"),
          "a_over_b": ("a_project", "b_seed", "answer_tokens_per_s"),
          "a_over_r": ("a_project", "r_raw_loop", "real_tokens_per_s"),
          "a_over_r_repeated": ("a_project", "r_raw_loop_repeated", "real_tokens_per_s"),
          "auto_over_a": ("a_project_auto", "a_project", "real_tokens_per_s"),
          "auto_over_r_no_checkpointing": ("a_project_auto", "r_raw_loop_no_checkpointing", "real_tokens_per_s")}
# The four rows of issue 46: 03 with checkpointing on and "auto", and the bare loop with and without it.
REPEATED_DEFAULT = ["a_project", "a_project_auto", "r_raw_loop", "r_raw_loop_no_checkpointing"]
WINDOW_KEYS = ["real_tokens_per_s", "answer_tokens_per_s", "labels_tokens_per_s", "mfu", "peak_allocated_gib",
               "peak_reserved_gib", "seconds_per_step", "host_load_1min_at_end", "cuda_mallocs", "alloc_retries",
               "compiled_graphs"]
PROFILED_STEPS = 2  # optimizer steps after the timed window, under torch.profiler


class BucketedCollator:
    """Wraps a padding-free packing collator (one row of N tokens, position ids restarting at each example) and
    pads N up to the next multiple of `multiple` with a filler segment of its own: pad tokens, position ids from 0
    (so no example attends to it, nor it to them), labels -100 (so the loss is unchanged). Bounds the number of
    micro-batch shapes the compiled blocks meet, at the cost of computing the filler. `last_filler` is the filler
    of the last batch, for counting it as padding. Measured here; it did not pay (lab/BENCHMARKS.md)."""

    def __init__(self, collator, multiple: int, pad_token_id: int):
        self.collator, self.multiple, self.pad_token_id, self.last_filler = collator, multiple, pad_token_id, 0

    def __call__(self, examples):
        import torch

        batch = self.collator(examples)
        if "attention_mask" in batch or batch["input_ids"].shape[0] != 1:
            raise ValueError("BucketedCollator needs packed, padding-free batches (one row, no attention mask)")
        length = batch["input_ids"].shape[1]
        filler = -length % self.multiple
        self.last_filler = filler
        if filler:
            extra = {"input_ids": torch.full((1, filler), self.pad_token_id), "labels": torch.full((1, filler), -100),
                     "position_ids": torch.arange(filler).unsqueeze(0)}
            for key, tail in extra.items():
                batch[key] = torch.cat([batch[key], tail.to(batch[key].dtype)], dim=1)
        return batch

    def __getattr__(self, name):  # trainers read the wrapped collator's flags (padding_free, ...)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


def worker_env(name: str, parallel: bool = False) -> dict:
    """A worker's environment: this one, unbuffered, with its configuration's own variables (set before torch
    starts, as the allocator's must be). Workers that start together (--repeat) each get their own folder for
    the modules Unsloth writes and imports at start-up (unsloth_compiled_cache in the working folder otherwise),
    so that none imports a file another is still writing."""
    private = {"UNSLOTH_COMPILE_LOCATION": f"/tmp/unsloth_compiled_cache_{name}"} if parallel else {}
    return {**os.environ, "PYTHONUNBUFFERED": "1", **private, **CONFIGS[name].get("env", {})}


def matmul_tflops(n: int = 8192, reps: int = 30) -> float:
    """Measured bf16 dense matmul rate of this GPU (TFLOP/s), the MFU denominator."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def matmul_parameters(config: dict) -> int:
    """N in the 4·N FLOPs per token of a frozen-base LoRA step (forward 2N, backward to the inputs 2N):
    the weights of every matmul (attention and MLP projections, LM head); attention scores not counted."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    return layers * per_layer + h * config["vocab_size"]


def completion_positions(input_ids, real, bos_id: int, assistant_id: int):
    """Positions of answer tokens (after <｜Assistant｜>, before the next BOS): the tokens the project learns
    from, counted the same way whatever a configuration puts in its labels."""
    import torch

    starts = torch.cumsum((input_ids == bos_id).long(), -1)
    ends = (input_ids == assistant_id).long()
    return ((torch.cumsum(ends, -1) - ends - starts) == 0) & real


class CountingCollator:
    """Wraps the trainer's collator and records, per micro-batch, the positions computed, the real
    (non-padding) tokens, the label tokens and the answer tokens."""

    def __init__(self, collator, bos_id, assistant_id):
        self.collator, self.bos_id, self.assistant_id, self.batches = collator, bos_id, assistant_id, []

    def __call__(self, examples):
        import torch

        batch = self.collator(examples)
        ids = batch["input_ids"]
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        filler = getattr(self.collator, "last_filler", 0)  # a bucketed batch's filler is padding, at its end
        if filler:
            real[:, -filler:] = False
        self.batches.append({
            "positions": ids.numel(), "real": int(real.sum()), "labels": int((batch["labels"] != -100).sum()),
            "answer": int(completion_positions(ids, real, self.bos_id, self.assistant_id).sum())})
        return batch

    def __getattr__(self, name):  # trainers read the wrapped collator's flags (padding_free, ...)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


def packed_loss_check(trainer, model, records) -> dict:
    """On the GPU, with Unsloth's kernels: the loss of 3 examples packed into one row equals the label-weighted
    loss of the 3 run one by one, and rewriting example 0 leaves the others' loss unchanged."""
    import torch

    batch = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records[:3]]
    device = next(model.parameters()).device

    def loss_of(examples, rewrite_first=False, drop_first_labels=False):
        b = trainer.data_collator.collator([dict(e) for e in examples])
        b = {k: v.to(device) if hasattr(v, "to") else v for k, v in b.items()}
        if rewrite_first:
            n = len(examples[0]["input_ids"])
            b["input_ids"][0, 1:n] = (b["input_ids"][0, 1:n] + 7) % 151000
        if drop_first_labels:
            b["labels"][0, :len(examples[0]["input_ids"])] = -100
        with torch.no_grad():
            return model(**b).loss.float().item()

    model.eval()
    packed = loss_of(batch)
    singles = [(loss_of([e]), sum(t != -100 for t in e["labels"][1:])) for e in batch]
    unpacked = sum(loss * n for loss, n in singles) / sum(n for _, n in singles)
    others = loss_of(batch, drop_first_labels=True)
    others_rewritten = loss_of(batch, rewrite_first=True, drop_first_labels=True)
    model.train()
    return {"packed_loss": packed, "unpacked_loss": unpacked, "relative_difference": abs(packed - unpacked) / unpacked,
            "others_loss": others, "others_loss_after_rewriting_example_0": others_rewritten}


def profile_summary(prof, steps: int, wall_s: float) -> dict:
    """What a step spends: wall time against GPU busy time, host syncs, NCCL kernels (under DDP), host<->device
    copies (Unsloth's checkpoint offload), and the top CPU and GPU operations."""
    events = prof.key_averages()
    count = {e.key: e.count for e in events}

    def gpu_ms(match=lambda key: True):
        return sum(e.self_device_time_total for e in events if match(e.key)) / 1000 / steps

    return {"steps": steps, "wall_ms_per_step": 1000 * wall_s / steps, "gpu_busy_ms_per_step": gpu_ms(),
            "syncs_per_step": (count.get("cudaStreamSynchronize", 0) + count.get("cudaDeviceSynchronize", 0)) / steps,
            "item_calls_per_step": count.get("aten::_local_scalar_dense", 0) / steps,
            # allocator churn: the caching allocator going to the driver (cudaMalloc/cudaFree) inside a step
            "cuda_malloc_free_per_step": sum(c for k, c in count.items() if k in ("cudaMalloc", "cudaFree")) / steps,
            # compiled regions entered, and dynamo guard checks (a recompile shows as time in these)
            "compiled_region_calls_per_step": sum(c for k, c in count.items() if "Compiled" in k) / steps,
            "dynamo_cpu_ms_per_step": sum(e.self_cpu_time_total for e in events
                                          if "dynamo" in e.key.lower() or "Compiled" in e.key) / 1000 / steps,
            "optimizer_cpu_ms_per_step": sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
            / 1000 / steps,
            "nccl_ms_per_step": gpu_ms(lambda k: "nccl" in k.lower()),
            "memcpy_dtoh_ms_per_step": gpu_ms(lambda k: "DtoH" in k or "Device -> Pageable" in k or "Device -> Pinned" in k),
            "memcpy_htod_ms_per_step": gpu_ms(lambda k: "HtoD" in k or "Pageable -> Device" in k or "Pinned -> Device" in k),
            "top_cpu_ms_per_step": [(e.key[:90], round(e.self_cpu_time_total / 1000 / steps, 2), e.count // steps)
                                    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]],
            "top_gpu_ms_per_step": [(e.key[:90], round(e.self_device_time_total / 1000 / steps, 2), e.count // steps)
                                    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:12]]}


def profiler_callback(first_step: int, steps: int, results: dict, profiled: bool = True):
    """Profile optimizer steps first_step+1 .. first_step+steps of a Trainer run (after the timed window) into
    results["profile"]; profiled=False times them only (the profiler slows the host about 2x)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    def sync():  # on the CPU (the tests) there is nothing to wait for
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Profiled(TrainerCallback):
        prof = start = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first_step and self.start is None:
                sync()
                if profiled:
                    self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                    self.prof.__enter__()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.start is not None and state.global_step == first_step + steps:
                sync()
                wall = time.perf_counter() - self.start
                if self.prof is None:
                    results["profile"] = {"steps": steps, "wall_ms_per_step": 1000 * wall / steps}
                else:
                    self.prof.__exit__(None, None, None)
                    results["profile"] = profile_summary(self.prof, steps, wall)
                    self.prof = None

    return Profiled()


def raw_loop(trainer, model, p, steps: int, clock_marks: list, results: dict, profile_from: int,
             checkpointing=True, repeat: int = 0, schedule=None, profiled: bool = True) -> list:
    """The bare loop over the trainer's own dataloader: forward, loss / accumulation, backward, 8-bit AdamW.
    Appends the seconds since the start at the end of each optimizer step to clock_marks; profiles the steps
    after profile_from. With `repeat`, cycles over the first `repeat` micro-batches (the trainer's collator, a
    CountingCollator, then records each one again as it is used). With a repeat.WindowSchedule, stops at its gates
    and times its windows. Returns the losses per optimizer step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    if torch.cuda.is_available():
        from unsloth import FastLanguageModel

        # What Unsloth's trainer does before it trains: switch on its (offloaded) gradient checkpointing. Without
        # this the loop keeps every activation: faster, and far over a T4's memory.
        FastLanguageModel.for_training(model, use_gradient_checkpointing=checkpointing)
    model.train()
    trainable = [t for t in model.parameters() if t.requires_grad]
    if torch.cuda.is_available():
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
    else:  # the CPU test of this loop
        optimizer = torch.optim.AdamW(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
    def epochs():  # as the Trainer does: the next epoch starts when the data run out
        while True:
            yield from trainer.get_train_dataloader()

    batches = epochs()
    if repeat:
        counter = trainer.data_collator
        counter.batches.clear()
        first = [next(batches) for _ in range(repeat)]
        counts = counter.batches[:repeat]  # the dataloader may have collated one more, ahead of need

        def again():
            while True:
                for batch, count in zip(first, counts):
                    counter.batches.append(count)
                    yield batch

        counter.batches.clear()
        batches = again()
    device = next(model.parameters()).device
    losses, prof = [], None
    sync()
    start = time.perf_counter()
    for step in range(steps):
        if schedule is not None:
            schedule.before_step(step)
        if step == profile_from:
            sync()
            prof_start = time.perf_counter()
            if profiled:
                prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                prof.__enter__()
        total = torch.zeros((), device=device)
        for _ in range(p.grad_accum):
            batch = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v
                     for k, v in next(batches).items()}
            loss = model(**batch).loss / p.grad_accum
            loss.backward()
            total += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        clock_marks.append(time.perf_counter() - start)
        losses.append(total)
        if schedule is not None:
            schedule.after_step(step)
        if step == profile_from + PROFILED_STEPS - 1:
            if prof is not None:
                prof.__exit__(None, None, None)
                results["profile"] = profile_summary(prof, PROFILED_STEPS, time.perf_counter() - prof_start)
                prof = None
            else:  # profiled=False: the same steps, timed only
                results["profile"] = {"steps": PROFILED_STEPS,
                                      "wall_ms_per_step": 1000 * (time.perf_counter() - prof_start) / PROFILED_STEPS}
    return [x.item() for x in losses]


def prepare(name: str, model_dir: str, max_steps: int) -> dict:
    """A configuration's model, trainer and counting collator, built as 03 builds them, for max_steps steps."""
    spec = CONFIGS[name]
    runtime, backend = rt_mod.setup_backend(spec["backend"], spec.get("precision", "bf16"))
    p = params.Params(work_dir=f"/tmp/bench/{name}", model_name=model_dir, max_steps=max_steps,
                      save_steps=10_000, eval_steps=10_000, report_to="none", warmup_steps=0, **spec["params"])
    load_start = time.perf_counter()
    model, tok = models_mod.load_model_and_tokenizer(model_dir, backend, runtime, p.max_seq_length, p.load_in_4bit)
    model = models_mod.add_lora(model, backend, p)
    load_s = time.perf_counter() - load_start
    rows = data_mod.load_sft_rows(str(DATA), "en")
    records, dropped = data_mod.format_rows(rows, tok, p.template, p.max_seq_length, spec["completion_only_loss"])
    trainer = training_mod.make_trainer(model, tok, records, [], p, backend, runtime)
    if spec.get("bucket"):
        multiple = p.batch_size * p.max_seq_length if spec["bucket"] == "full" else spec["bucket"]
        trainer.data_collator = BucketedCollator(trainer.data_collator, multiple, tok.pad_token_id)
    counter = CountingCollator(trainer.data_collator, tok.bos_token_id, tok.convert_tokens_to_ids("<｜Assistant｜>"))
    trainer.data_collator = counter
    n_matmul = matmul_parameters(json.loads((pathlib.Path(model_dir) / "config.json").read_text()))
    return {"spec": spec, "p": p, "model": model, "tok": tok, "records": records, "dropped": dropped,
            "trainer": trainer, "counter": counter, "backend": backend, "load_s": load_s, "n_matmul": n_matmul}


def rates(batches: list, seconds: float, n_matmul: int, tflops) -> dict:
    """Tokens of the timed micro-batches, per second, the padding share and MFU (None without a matmul rate)."""
    totals = {k: sum(b[k] for b in batches) for k in ("positions", "real", "labels", "answer")}
    return {"seconds": seconds, **{f"{k}_tokens": v for k, v in totals.items()},
            **{f"{k}_tokens_per_s": v / seconds for k, v in totals.items()},
            "padding_fraction": 1 - totals["real"] / totals["positions"],
            "mfu": 4 * n_matmul * totals["real"] / seconds / (tflops * 1e12) if tflops else None}


def describe(name: str, run: dict, tflops) -> dict:
    """What a configuration was: the same fields in a single run and a repeated one."""
    p, trainer, spec = run["p"], run["trainer"], run["spec"]
    return {"config": name, "backend": run["backend"], "packing": bool(trainer.args.packing),
            "padding_free": bool(getattr(trainer.args, "padding_free", False)), "batch_size": p.batch_size,
            "grad_accum": p.grad_accum, "completion_only_loss": spec["completion_only_loss"],
            "examples": len(run["records"]), "dropped": run["dropped"], "matmul_tflops": tflops,
            "matmul_parameters": run["n_matmul"], "host_cpus": os.cpu_count(), "load_s": run["load_s"],
            "gradient_checkpointing_setting": p.gradient_checkpointing,
            "gradient_checkpointing": str(getattr(run["model"], "_unsloth_gradient_checkpointing", "not recorded"))}


def run_one(name: str, model_dir: str, warmup: int, measure: int, out: pathlib.Path) -> dict:
    import torch

    tflops = matmul_tflops()
    run = prepare(name, model_dir, warmup + measure + PROFILED_STEPS)
    spec, p, model, trainer, counter = run["spec"], run["p"], run["model"], run["trainer"], run["counter"]
    extra = {}
    torch.cuda.reset_peak_memory_stats()
    if spec.get("raw"):
        marks = []
        losses = raw_loop(trainer, model, p, p.max_steps, marks, extra, warmup + measure,
                          checkpointing=spec.get("checkpointing", "unsloth"), repeat=spec.get("repeat", 0))
    else:
        clock = training_mod.find_callback(trainer, "StepClock")
        trainer.add_callback(profiler_callback(warmup + measure, PROFILED_STEPS, extra))
        trainer.train()
        marks = clock.step_end_s
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak = rt_mod.peak_gpu_memory_gib()
    window = counter.batches[warmup * p.grad_accum:(warmup + measure) * p.grad_accum]
    seconds = marks[warmup + measure - 1] - marks[warmup - 1]
    result = {**extra, **describe(name, run, tflops), "measured_steps": measure, "warmup_steps": warmup,
              **rates(window, seconds, run["n_matmul"], tflops),
              "peak_allocated_gib": peak["peak_allocated_gib"], "peak_reserved_gib": peak["peak_reserved_gib"],
              # Other work on the host slows a launch-bound step: a load far above this process's own share says so.
              "host_load_1min_at_end": os.getloadavg()[0], "losses": losses}
    if name == "a_project":
        result["packed_loss_check"] = packed_loss_check(trainer, model, run["records"])
    artifacts.write_json(out / f"train_bench_{name}.json", result)
    return result


class WindowHooks:
    """A worker's side of repeat.WindowSchedule: its gates, the GPU's clock and cache, and each window's figures
    (rates, peak memory, the allocator's trips to the driver, graphs compiled, the host's load) written as soon as
    the window ends, so a worker that dies later loses nothing."""

    def __init__(self, name: str, gate_dir: pathlib.Path, run_box: dict):
        self.name, self.gate_dir, self.box, self.runs, self.tflops = name, gate_dir, run_box, [], None
        self.pass_gate = repeat.worker_gate(gate_dir, name)

    def gate(self, phase):
        self.pass_gate(phase)
        if phase == 0 and self.cuda():  # alone on the GPU now: the MFU denominator, measured undisturbed
            self.tflops = matmul_tflops()

    @staticmethod
    def cuda():
        import torch

        return torch.cuda.is_available()

    def sync(self):
        import torch

        if self.cuda():
            torch.cuda.synchronize()

    def clock(self):
        return time.perf_counter()

    def free_memory(self):
        import torch

        if self.cuda():
            torch.cuda.empty_cache()

    def counters(self) -> dict:
        import torch

        stats = torch.cuda.memory_stats() if self.cuda() else {}
        try:
            from torch._dynamo.utils import counters

            graphs = counters["stats"]["unique_graphs"]
        except (ImportError, KeyError):
            graphs = 0
        return {"cuda_mallocs": stats.get("num_device_alloc", 0), "alloc_retries": stats.get("num_alloc_retries", 0),
                "compiled_graphs": graphs}

    def window_start(self, k):
        import torch

        if self.cuda():
            torch.cuda.reset_peak_memory_stats()
        self.start_counters = self.counters()
        # The micro-batches collated so far: those collated during the window are the window's (counted by time,
        # not by index, since an epoch's last step may take fewer than GRAD_ACCUM of them).
        self.start_batches = len(self.box["run"]["counter"].batches)

    def window_end(self, k, first_step, end_step, seconds):
        run = self.box["run"]
        batches = run["counter"].batches[self.start_batches:]
        peak = rt_mod.peak_gpu_memory_gib()
        now = self.counters()
        row = {"round": k, "first_step": first_step, "end_step": end_step, "micro_batches": len(batches),
               **rates(batches, seconds, run["n_matmul"], self.tflops),
               "seconds_per_step": seconds / (end_step - first_step), **peak,
               "host_load_1min_at_end": os.getloadavg()[0],
               # during the window: the allocator asking the driver for memory, retries after freeing its cache,
               # graphs compiled (each new shape the compiled blocks meet)
               **{key: now[key] - self.start_counters[key] for key in now}}
        self.runs.append(row)
        artifacts.write_json(self.gate_dir / f"window_{self.name}_{k}.json", row)


class ScheduleCallback:
    """The trainer's side of a WindowSchedule: gates before a step, windows timed at a step's end."""

    def __new__(cls, schedule):
        from transformers import TrainerCallback

        class Scheduled(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                schedule.before_step(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                schedule.after_step(state.global_step - 1)  # global_step counts the step just finished

        return Scheduled()


def run_windows(name: str, model_dir: str, warmup: int, measure: int, windows: int, out: pathlib.Path,
                profiled: bool) -> dict:
    """A worker of --repeat: loads once, then runs its warm-up, its windows and its tail (profiled if asked),
    each when the parent opens the gate (repeat.py)."""
    box = {}
    hooks = WindowHooks(name, out / "gates", box)
    schedule = repeat.WindowSchedule(warmup, measure, windows, PROFILED_STEPS, hooks)
    run = box["run"] = prepare(name, model_dir, schedule.total_steps)
    spec, p, model, trainer = run["spec"], run["p"], run["model"], run["trainer"]
    extra = {}
    if spec.get("raw"):
        losses = raw_loop(trainer, model, p, p.max_steps, [], extra, schedule.tail_start,
                          checkpointing=spec.get("checkpointing", "unsloth"), repeat=spec.get("repeat", 0),
                          schedule=schedule, profiled=profiled)
    else:
        trainer.add_callback(ScheduleCallback(schedule))  # before the profiler's: the gate opens, then it starts
        trainer.add_callback(profiler_callback(schedule.tail_start, PROFILED_STEPS, extra, profiled=profiled))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {**extra, **describe(name, run, hooks.tflops), "warmup_steps": warmup, "measured_steps": measure,
              "windows": windows, "runs": hooks.runs, "losses": losses}
    artifacts.write_json(out / f"train_bench_{name}.json", result)
    return result


def summarise_repeated(results: dict) -> dict:
    """Per configuration the spread of each figure over its windows; per ratio the windows' paired ratios; the
    verdicts on the medians."""
    summary = {name: repeat.summarise(r.get("runs", []), WINDOW_KEYS) for name, r in results.items()}
    ratios = {key: repeat.paired_ratios(results[num]["runs"], results[den]["runs"], rate)
              for key, (num, den, rate) in RATIOS.items()
              if results.get(num, {}).get("runs") and results.get(den, {}).get("runs")}
    targets = {key: repeat.verdict(figure, TARGETS[key]) for key, figure in ratios.items()}
    if "a_project" in summary:
        targets["peak_gib"] = repeat.verdict(summary["a_project"]["peak_reserved_gib"], TARGETS["peak_gib"],
                                             at_most=True)
        targets["mfu"] = repeat.verdict(summary["a_project"]["mfu"], TARGETS["mfu"])
    return {"summary": summary, "ratios": ratios, "targets": targets}


def repeated_table(results: dict, report: dict, meta: dict) -> str:
    lines = [f"device: {meta['device']}; {meta['windows']} alternated windows of {meta['measure']} steps per "
             f"configuration, median (min-max)",
             "| config | checkpointing | real tok/s | answer tok/s | s/step | peak alloc / reserved GiB | MFU | "
             "mallocs, graphs compiled / window | host load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not r.get("runs"):
            lines.append(f"| {name} | failed: {str(r.get('error', 'no window finished'))[:200]} ||||||||")
            continue
        f = report["summary"][name]
        lines.append(f"| {name} | {r.get('gradient_checkpointing')} | {repeat.fmt(f['real_tokens_per_s'])} | "
                     f"{repeat.fmt(f['answer_tokens_per_s'])} | {repeat.fmt(f['seconds_per_step'], 3)} | "
                     f"{repeat.fmt(f['peak_allocated_gib'], 2)} / {repeat.fmt(f['peak_reserved_gib'], 2)} | "
                     f"{repeat.fmt(f['mfu'], percent=True)} | {f['cuda_mallocs']['median']}, "
                     f"{f['compiled_graphs']['median']} | {repeat.fmt(f['host_load_1min_at_end'], 2)} |")
    lines += ["", "| ratio | median (min-max of the paired windows) | target | met (on the median) |",
              "|---|---|---|---|"]
    for key, v in report["targets"].items():
        figure = repeat.fmt(v, 3) if v["median"] is not None else "-"
        lines.append(f"| {key} | {figure} | {v['target']} | {v['met']} |")
    return "\n".join(lines)


def run_repeated(names: list, model_dir: str, args) -> dict:
    """The parent of --repeat: one worker per configuration, started together (they load in parallel), then
    driven through their phases one at a time in the alternated order."""
    gate_dir = args.out / "gates"
    gate_dir.mkdir(parents=True, exist_ok=True)
    for stale in gate_dir.iterdir():
        stale.unlink()
    workers = {}
    for name in names:
        cmd = [sys.executable, __file__, "--worker", name, "--model-dir", model_dir, "--out", str(args.out),
               "--warmup", str(args.warmup), "--measure", str(args.measure), "--repeat", str(args.repeat)]
        workers[name] = subprocess.Popen(cmd + (["--profile"] if args.profile else []),
                                         env=worker_env(name, parallel=True))
    start = time.perf_counter()
    log = repeat.drive(gate_dir, names, repeat.phases(args.repeat, PROFILED_STEPS),
                       {n: (lambda w=w: w.poll() is None) for n, w in workers.items()}, snapshot=repeat.host_snapshot)
    results = {}
    for name, worker in workers.items():
        code = worker.wait()
        path = args.out / f"train_bench_{name}.json"
        if code == 0 and path.exists():
            results[name] = artifacts.read_json(path)
        else:  # the windows it finished still count
            finished = sorted(gate_dir.glob(f"window_{name}_*.json"))
            results[name] = {"error": f"worker exited with {code}", "runs": [artifacts.read_json(f) for f in finished]}
        for run, host in zip(results[name].get("runs", []), log[name]["host_before_phase"][1:]):
            run["host_before"] = host
        results[name]["failed_at_phase"] = log[name]["failed_at_phase"]
    print(f"{len(names)} configurations x {args.repeat} windows: {time.perf_counter() - start:.0f} s", flush=True)
    return results


def table(results: dict, meta: dict) -> str:
    lines = [(f"device: {meta['device']}; torch {meta['torch']}; measured bf16 matmul "
              f"{meta['matmul_tflops']:.0f} TFLOP/s"),
             ("| config | packing / padding-free | batch x accum | answer tok/s | real tok/s | label tok/s | padding | "
              "peak alloc / reserved GiB | MFU | loss first -> last |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:200]} |||||||||")
            continue
        lines.append(
            f"| {name} | {r['packing']} / {r['padding_free']} | {r['batch_size']} x {r['grad_accum']} | "
            f"{r['answer_tokens_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | {r['labels_tokens_per_s']:,.0f} | "
            f"{r['padding_fraction']:.1%} | {r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f} | "
            f"{r['mfu']:.1%} | {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |")
    return "\n".join(lines)


def verdicts(results: dict) -> dict:
    """Each target, the figure reached and whether it is met (None where a configuration failed)."""
    a, b, c, r, auto, repeated, bare_off = (results.get(k, {}) for k in (
        "a_project", "b_seed", "c_peft_bnb", "r_raw_loop", "a_project_auto", "r_raw_loop_repeated",
        "r_raw_loop_no_checkpointing"))

    def ratio(x, y):
        return x["answer_tokens_per_s"] / y["answer_tokens_per_s"] if "mfu" in x and "mfu" in y else None

    def real(x, y):
        return x["real_tokens_per_s"] / y["real_tokens_per_s"] if "mfu" in x and "mfu" in y else None

    figures = {"a_over_c": ratio(a, c), "a_over_b": ratio(a, b), "a_over_r": real(a, r),
               "a_over_r_repeated": real(a, repeated), "peak_gib": a.get("peak_reserved_gib"), "mfu": a.get("mfu"),
               "auto_over_a": real(auto, a), "auto_over_r_no_checkpointing": real(auto, bare_off)}
    return {k: {"value": v, "target": TARGETS[k],
                "met": None if v is None else (v <= TARGETS[k] if k == "peak_gib" else v >= TARGETS[k])}
            for k, v in figures.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-8b", help="a shape from lab/gpu/real_shapes.py")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps run before timing starts")
    parser.add_argument("--measure", type=int, default=4, help="optimizer steps timed (per window with --repeat)")
    parser.add_argument("--only", nargs="*", help="configurations (default: all; with --repeat, issue 46's four)")
    parser.add_argument("--repeat", type=int, default=0,
                        help="N timed windows per configuration, alternated in one invocation, medians and ranges")
    parser.add_argument("--profile", action="store_true",
                        help="with --repeat: profile 2 steps per configuration after its windows (torch.profiler)")
    parser.add_argument("--model-dir", help="an existing model folder (else one is built)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.only or (REPEATED_DEFAULT if args.repeat else list(CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    if args.profile and not args.repeat:
        parser.error("--profile goes with --repeat N (a single run profiles its last 2 steps already)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        if args.repeat:
            run_windows(args.worker, args.model_dir, args.warmup, args.measure, args.repeat, args.out, args.profile)
        else:
            run_one(args.worker, args.model_dir, args.warmup, args.measure, args.out)
        return
    import torch

    model_dir = args.model_dir
    if not model_dir:
        import real_shapes

        model_dir = f"/tmp/models/{args.shape}"
        real_shapes.build_model(args.shape, model_dir)
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(0), **package_versions(), "shape": args.shape,
            "command": " ".join(sys.argv), "host_at_start": repeat.host_snapshot()}
    if args.repeat:
        results = run_repeated(names, model_dir, args)
        meta.update(windows=args.repeat, measure=args.measure, warmup=args.warmup,
                    order="alternated: warm-up of each, then window k of each configuration in turn, k = 1..N")
        report = {"meta": meta, "results": results, **summarise_repeated(results)}
        artifacts.write_json(args.out / "train_bench_repeated.json", report)
        print(repeated_table(results, report, meta))
        return
    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--worker", name, "--model-dir", model_dir, "--out", str(args.out),
               "--warmup", str(args.warmup), "--measure", str(args.measure)]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=worker_env(name), check=False)
        path = args.out / f"train_bench_{name}.json"
        results[name] = (artifacts.read_json(path) if done.returncode == 0 and path.exists()
                         else {"error": f"worker exited with {done.returncode}"})
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    tflops = [r["matmul_tflops"] for r in results.values() if "matmul_tflops" in r]
    meta["matmul_tflops"] = sum(tflops) / len(tflops) if tflops else math.nan
    report = {"meta": meta, "results": results, "targets": verdicts(results)}
    artifacts.write_json(args.out / "train_bench.json", report)
    print(table(results, meta))
    print(json.dumps(report["targets"], indent=1))


def package_versions() -> dict:
    """Read from the installed metadata: importing unsloth here would patch transformers for nothing."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    main()
