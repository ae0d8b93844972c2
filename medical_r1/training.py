"""What 03 needs around TRL's SFTTrainer: the SFTConfig settings that depend on the runtime, the guards
(resume, NaN stop, out-of-memory advice) as callbacks and a context manager, and the training record.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

from medical_r1.artifacts import artifact, save_pretrained_atomic, write_json
from medical_r1.data import records_to_dataset
from medical_r1.display import plot_loss_curve
from medical_r1.params import Params
from medical_r1.runtime import (
    Runtime,
    agree_on_smallest,
    free_gpu_bytes,
    is_main_process,
    peak_gpu_memory_gib,
    process_rank,
)
from medical_r1.tracking import resolve_report_to, wandb_run_id, wandb_run_link


def resolve_optimizer(optim: str, backend: str) -> str:
    """8-bit AdamW needs bitsandbytes and a GPU; on CPU the same AdamW runs in 32-bit."""
    return "adamw_torch" if backend == "cpu" and "8bit" in optim else optim


def _multiples_around(value: int, step: int) -> list[int]:
    """The multiples of step nearest to value, below (if any) and above: the values a message can offer."""
    return sorted({m for m in (step * (value // step), step * -(-value // step)) if m >= step})


def per_process_grad_accum(grad_accum: int, world_size: int | None = None, batch_size: int = 1) -> int:
    """Accumulation steps per process that keep the effective batch of one process with GRAD_ACCUM: each of
    the N processes takes its own micro-batches, so N processes need GRAD_ACCUM / N each."""
    world_size = process_rank()[1] if world_size is None else world_size
    if grad_accum % world_size:
        offers = " or ".join(f"GRAD_ACCUM = {m} (an update of {m * batch_size} rows)"
                             for m in _multiples_around(grad_accum, world_size))
        raise ValueError(f"GRAD_ACCUM ({grad_accum}) must be a multiple of the number of processes ({world_size}), "
                         f"since each process takes its share of an update's micro-batches: use {offers}, or "
                         f"NUM_GPUS = 1 to keep updates of {grad_accum * batch_size} rows")
    return grad_accum // world_size


def per_process_batch(batch_size: int, world_size: int | None = None, num_generations: int = 1) -> int:
    """Completions per device step in each of N processes that keep one process's batch (07: GRPO_BATCH_SIZE
    answers per step, NUM_GENERATIONS to a question, shared between the processes)."""
    world_size = process_rank()[1] if world_size is None else world_size
    if batch_size % world_size:
        # the value offered must also hold whole questions' answers, as Params asks
        step = world_size * num_generations // math.gcd(world_size, num_generations)
        offers = " or ".join(f"GRPO_BATCH_SIZE = {m}" for m in _multiples_around(batch_size, step))
        raise ValueError(f"GRPO_BATCH_SIZE ({batch_size}) must be a multiple of the number of processes ({world_size}) "
                         f"to keep one GPU's batch: use {offers} (a multiple of {world_size} and of NUM_GENERATIONS "
                         f"= {num_generations}), or NUM_GPUS = 1")
    return batch_size // world_size


# Bytes one token keeps per decoder layer when nothing is recomputed, as 2 bytes x (4 x hidden + 3 x intermediate):
# fitted to one measurement (one H200, the Llama-8B shape, 2 x 2,048 packed tokens: 21.6 GiB at the peak without
# recomputation, 7.15 GiB with Unsloth's checkpointing, so 14.45 GiB of activations; issue 24's table).
ACTIVATION_VALUES_PER_TOKEN = (4, 3)  # x hidden, x intermediate
NO_RECOMPUTE_MARGIN = 1.15  # on the estimate of the activations
NO_RECOMPUTE_HEADROOM_GIB = 2.0  # optimizer states, LoRA gradients, the loss's chunks, the allocator's slack


def activation_gib(config, tokens: int) -> float:
    """GiB of activations a micro-batch of `tokens` keeps for the backward pass without recomputation."""
    per_token_layer = 2 * (ACTIVATION_VALUES_PER_TOKEN[0] * config.hidden_size
                           + ACTIVATION_VALUES_PER_TOKEN[1] * config.intermediate_size)
    return per_token_layer * config.num_hidden_layers * tokens / 2**30


def choose_gradient_checkpointing(setting: str, model, backend: str, batch_size: int,
                                  max_seq_length: int) -> tuple[str | bool, str]:
    """What to pass as get_peft_model's use_gradient_checkpointing, and why (one line). "on" recomputes
    activations in the backward pass (Unsloth's offloaded checkpointing), "off" keeps them all, "auto" keeps
    them where the GPU's free memory, after the model is loaded, holds a micro-batch's activations: about 1.6x
    faster (bare Unsloth loops at the 8B shape on an H200), but never on a T4, whose 15 GiB do not."""
    if setting == "on":
        return "unsloth", "gradient checkpointing on (GRADIENT_CHECKPOINTING = 'on'): activations recomputed"
    if setting == "off":
        return False, "gradient checkpointing off (GRADIENT_CHECKPOINTING = 'off'): every activation kept"
    import torch

    if backend != "unsloth" or not torch.cuda.is_available():
        return "unsloth", (f"gradient checkpointing on: 'auto' decides only for Unsloth on a GPU (backend {backend})")
    tokens = batch_size * max_seq_length
    need = NO_RECOMPUTE_MARGIN * activation_gib(model.config, tokens) + NO_RECOMPUTE_HEADROOM_GIB
    # under GPU_MEMORY_CAP_GIB, what the cap leaves, not the device's free memory; with one process per GPU, the
    # least any of them has, so that all decide alike
    free = agree_on_smallest(free_gpu_bytes()) / 2**30
    if free >= need:
        return False, (f"gradient checkpointing off: {free:.1f} GiB free holds the activations of {batch_size} x "
                       f"{max_seq_length} tokens (about {need:.1f} GiB with a margin), so none are recomputed "
                       "(faster; GRADIENT_CHECKPOINTING = 'on' saves the memory instead)")
    return "unsloth", (f"gradient checkpointing on: {free:.1f} GiB free is less than the {need:.1f} GiB that keeping "
                       f"every activation of {batch_size} x {max_seq_length} tokens would take; they are recomputed "
                       "in the backward pass instead")


def weight_snapshot(model) -> dict:
    """LoRA tensors copied whole; base tensors as a float64 (sum, sum of squares) fingerprint, so an 8B
    model is not copied into RAM. Compared with weight_changes after training."""
    import torch

    snap = {}
    with torch.no_grad():
        for name, t in model.named_parameters():
            if "lora_" in name:
                snap[name] = t.detach().float().cpu().clone()
            else:
                total = squares = 0.0
                for chunk in t.detach().reshape(-1).split(2**24):  # 128 MB of float64 at a time
                    x = chunk.to(torch.float64)
                    total += x.sum().item()
                    squares += (x * x).sum().item()
                snap[name] = (total, squares)
    return snap


def weight_changes(before: dict, model) -> dict:
    """How many LoRA and base tensors changed since weight_snapshot (training should move only LoRA)."""
    after = weight_snapshot(model)
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    lora_changed = [n for n in lora if not bool((after[n] == before[n]).all())]
    base_changed = [n for n in base if after[n] != before[n]]
    return {"lora_tensors": len(lora), "lora_tensors_changed": len(lora_changed),
            "base_tensors": len(base), "base_tensors_changed": len(base_changed),
            "base_changed_examples": base_changed[:5]}


def runtime_training_args(backend: str, runtime: Runtime, optim: str) -> dict:
    """The SFTConfig settings that depend on where training runs, not on what it learns: precision (fp16 on
    a T4, bf16 from Ampere on), the optimizer's 8-bit form (32-bit AdamW on the CPU), CPU mode, pinned memory,
    gradient checkpointing for the transformers backend (Unsloth does its own), and DDP's unused-parameter scan
    (off: with LoRA every trainable tensor gets a gradient)."""
    return {"fp16": runtime.dtype == "float16", "bf16": runtime.dtype == "bfloat16",
            "optim": resolve_optimizer(optim, backend), "use_cpu": backend == "cpu",
            "dataloader_pin_memory": runtime.cuda, "gradient_checkpointing": backend == "transformers",
            "ddp_find_unused_parameters": False if process_rank()[1] > 1 else None}


def training_callbacks(early_stopping_patience: int = 0) -> list:
    """The guards 03 trains with: stop at the first NaN or infinite loss (before it is checkpointed), a clock
    of the seconds each step took, and early stopping on validation loss when asked for."""
    from transformers import EarlyStoppingCallback

    callbacks = [stop_on_non_finite_loss(), step_clock()]
    if early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    return callbacks


def make_trainer(model, tokenizer, train_records, val_records, p: Params, backend: str, runtime: Runtime):
    """The SFTTrainer that 03 builds in its cells, for the tests, benchmarks and GPU checks. A test checks that
    03's SFTConfig call passes the same settings as this one."""
    from trl import SFTConfig, SFTTrainer

    report_to, why = resolve_report_to(p.report_to, p.work_dir)
    print(why)
    config = SFTConfig(
        output_dir=str(artifact(p.work_dir, "checkpoints")),
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=per_process_grad_accum(p.grad_accum, batch_size=p.batch_size),
        warmup_steps=p.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=p.weight_decay,
        seed=p.seed,
        data_seed=p.seed,
        max_length=p.max_seq_length,
        packing=p.packing,
        packing_strategy="bfd",
        logging_steps=1,
        logging_nan_inf_filter=False,
        eval_strategy="steps" if val_records else "no",
        eval_steps=p.eval_steps,
        save_strategy="steps",
        save_steps=p.save_steps,
        save_total_limit=2,
        load_best_model_at_end=p.early_stopping_patience > 0,
        metric_for_best_model="eval_loss" if p.early_stopping_patience else None,
        greater_is_better=False,
        report_to=report_to,
        dataset_num_proc=None,
        **runtime_training_args(backend, runtime, p.optim),
    )
    return SFTTrainer(model=model, args=config, processing_class=tokenizer,
                      train_dataset=records_to_dataset(train_records),
                      eval_dataset=records_to_dataset(val_records) if val_records else None,
                      callbacks=training_callbacks(p.early_stopping_patience))


def last_checkpoint(work_dir, folder_key: str = "checkpoints") -> str | None:
    """The newest complete checkpoint under WORK_DIR/checkpoints (07: grpo_checkpoints), or None."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = artifact(work_dir, folder_key)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def resume_checkpoint(work_dir, resume: bool, folder_key: str = "checkpoints") -> str | None:
    """The checkpoint trainer.train resumes from: the last one in WORK_DIR when RESUME is on (Kaggle stops a
    session after 12 hours; rerunning 03 or 07 with the same WORK_DIR continues), else None."""
    checkpoint = last_checkpoint(work_dir, folder_key) if resume else None
    print(f"resuming from {checkpoint}" if checkpoint else "starting from step 0")
    return checkpoint


def stop_on_non_finite_loss():
    """A TrainerCallback that stops at the first NaN or infinite training loss, before that step is
    checkpointed, so the last checkpoint on disk is the last good one; training_guards then raises
    with the advice. (Defined here so that importing this module does not import transformers.)"""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        bad_step = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.bad_step = state.global_step
                control.should_training_stop = True
                control.should_save = False
            return control

    return StopOnNonFiniteLoss()


def step_clock():
    """A TrainerCallback keeping the wall-clock seconds from the start of training to the end of each step,
    after the GPU has finished the step: seconds per step without start-up."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.start, self.step_end_s = None, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # this runs before the step's loss is read, which would wait for it
            self.step_end_s.append(round(time.perf_counter() - self.start, 4))

    return StepClock()


def find_callback(trainer, name: str):
    """The trainer's callback of this class name (the guards are defined inside functions), or None."""
    return next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == name), None)


def oom_advice(p: Params, folder_key: str = "checkpoints") -> str:
    """The settings to lower, in order, for 03 or (folder_key "grpo_checkpoints") 07."""
    if folder_key == "grpo_checkpoints":
        return (f"CUDA ran out of memory. Lower, in this order: MAX_COMPLETION_LENGTH (now {p.max_completion_length}), "
                f"NUM_GENERATIONS (now {p.num_generations}; GRPO_BATCH_SIZE, now {p.grpo_batch_size}, must stay a "
                f"multiple of it), VLLM_GPU_MEMORY when vLLM writes the answers (now {p.vllm_gpu_memory}), or the "
                "model size (unsloth/DeepSeek-R1-Distill-Qwen-7B or -1.5B). Restart the kernel after an out-of-memory "
                "error.")
    return (f"CUDA ran out of memory. If 03 said gradient checkpointing off, set GRADIENT_CHECKPOINTING = 'on' first "
            f"(now {p.gradient_checkpointing!r}). Then lower, in this order: BATCH_SIZE (now {p.batch_size}; 1 with "
            f"GRAD_ACCUM {p.batch_size * p.grad_accum} keeps the effective batch), MAX_SEQ_LENGTH (now "
            f"{p.max_seq_length}; 1024 drops about 1.4% of the English rows), or the model size "
            f"(unsloth/DeepSeek-R1-Distill-Qwen-7B or -1.5B). Restart the kernel after an out-of-memory error.")


@contextlib.contextmanager
def training_guards(trainer, p: Params, folder_key: str = "checkpoints"):
    """Around trainer.train(): reset the GPU's peak-memory counter (train_metrics reports training's own peak),
    turn CUDA's out-of-memory error into the settings to lower, and after a NaN or infinite loss (the callback
    stopped training there) raise with the step, the setting to lower and the last good checkpoint, whatever
    else went wrong on the way out (transformers' notebook progress bar fails on a run stopped at its first
    step)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise RuntimeError(oom_advice(p, folder_key)) from err
    except Exception as err:
        _raise_if_loss_was_not_finite(trainer, p, err, folder_key)
        raise
    _raise_if_loss_was_not_finite(trainer, p, folder_key=folder_key)


def _raise_if_loss_was_not_finite(trainer, p: Params, cause: BaseException | None = None,
                                  folder_key: str = "checkpoints") -> None:
    guard = find_callback(trainer, "StopOnNonFiniteLoss")
    if guard.bad_step is not None:
        good = last_checkpoint(p.work_dir, folder_key)
        rate = (f"GRPO_LEARNING_RATE (now {p.grpo_learning_rate:g})" if folder_key == "grpo_checkpoints"
                else f"LEARNING_RATE (now {p.learning_rate:g})")
        raise RuntimeError(
            f"the training loss became NaN or infinite at step {guard.bad_step}; training stopped and no adapter "
            f"was saved. Lower {rate}; in fp16 (T4) an overflow can also cause "
            f"this. The last good checkpoint is {good or 'none (no checkpoint was written before that step)'}; "
            f"delete {artifact(p.work_dir, folder_key)} to start afresh.") from cause


def train(trainer, p: Params, resume: bool = True):
    """03's training cell as one call, for the tests and scripts: resume, train inside the guards."""
    checkpoint = resume_checkpoint(p.work_dir, resume)
    with training_guards(trainer, p):
        return trainer.train(resume_from_checkpoint=checkpoint)


def loss_history(trainer) -> dict:
    train = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    clock = find_callback(trainer, "StepClock")
    return {"train": train, "eval": evals, "step_end_s": clock.step_end_s if clock else []}


def summarize_losses(history: dict, window: int = 3) -> dict:
    """First and last train losses, averaged over a few steps so one noisy batch does not decide."""
    losses = [loss for _, loss in history["train"]]
    if not losses:
        raise RuntimeError("training logged no loss; check max_steps and logging_steps")
    w = max(1, min(window, len(losses) // 2))
    return {"first_loss": sum(losses[:w]) / w, "last_loss": sum(losses[-w:]) / w, "steps_logged": len(losses),
            "all_finite": all(math.isfinite(x) for x in losses)}


def describe_training(trainer, train: list, val: list) -> str:
    a = trainer.args
    effective = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
    precision = "bf16" if a.bf16 else "fp16" if a.fp16 else "fp32"
    optim = getattr(a.optim, "value", a.optim)
    trainable = sum(t.numel() for t in trainer.model.parameters() if t.requires_grad)
    if a.packing:
        rows = len(trainer.train_dataset)
        unit = (f"packed rows of up to {a.max_length} tokens ({len(train)} examples in {rows} rows, "
                f"{len(train) / max(rows, 1):.1f} per row)")
    else:
        unit = "examples"
    return (f"{len(train)} train / {len(val)} val examples; {a.max_steps} steps of {effective} {unit} "
            f"({a.per_device_train_batch_size} x {a.gradient_accumulation_steps} accumulation"
            f"{f' x {a.world_size} processes' if a.world_size > 1 else ''}); {precision}; "
            f"optimizer {optim}; {trainable:,} trainable parameters; logging to {a.report_to or 'nothing'}")


def train_record(p: Params, backend: str, history: dict, changes: dict, trainer_metrics: dict) -> dict:
    return {"backend": backend, "model_name": p.model_name, **summarize_losses(history),
            "eval_losses": history["eval"], "train_losses": history["train"],
            "step_end_s": history.get("step_end_s", []), "weight_changes": changes,
            "train_runtime_s": trainer_metrics.get("train_runtime"), **peak_gpu_memory_gib(),
            "wandb": wandb_run_link(), "wandb_run_id": wandb_run_id(),
            "params": {k: v for k, v in dataclasses.asdict(p).items() if k != "hub_repo_id"}}


def save_training_outputs(work_dir, trainer, model, tokenizer, p: Params, backend: str, before: dict, result) -> dict:
    """03's files (loss curve, adapter, train_metrics.json), written by the first process only: under DDP
    every process holds the same adapter, and one writer leaves no half-written file."""
    history = loss_history(trainer)
    metrics = train_record(p, backend, history, weight_changes(before, model), result.metrics)
    metrics["processes"] = process_rank()[1]
    metrics["train_tokens"] = tokens_trained(trainer)
    if is_main_process():
        plot_loss_curve(history, artifact(work_dir, "loss_curve"))
        save_pretrained_atomic(artifact(work_dir, "adapter"), model, tokenizer)
        write_json(artifact(work_dir, "train_metrics"), metrics)
    return metrics


def tokens_trained(trainer) -> int:
    """Tokens the optimizer steps went through: rows per step (batch x accumulation x processes) x steps x the
    mean row length of the (packed) training set. An estimate that costs nothing per step (counting exactly
    would gather token counts across processes at every step)."""
    a = trainer.args
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    rows = trainer.state.global_step * a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
    return round(rows * sum(lengths) / max(len(lengths), 1))


def train_summary(metrics: dict) -> str:
    c = metrics["weight_changes"]
    wandb = f"; W&B: {metrics['wandb']}" if metrics.get("wandb") else ""
    return (f"train loss {metrics['first_loss']:.4f} -> {metrics['last_loss']:.4f}{wandb}; "
            f"LoRA tensors changed: {c['lora_tensors_changed']}/{c['lora_tensors']}; "
            f"base tensors changed: {c['base_tensors_changed']}/{c['base_tensors']}")


