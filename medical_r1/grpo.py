"""07's records: the rewards shown on written examples before training, and after it the adapter, the reward and
length curves and grpo_metrics.json (written by the first process only, as 03's files are)."""
from __future__ import annotations

import math

from medical_r1.artifacts import artifact, require_artifact, save_pretrained_atomic, write_json
from medical_r1.display import new_figure, save_figure
from medical_r1.runtime import is_main_process
from medical_r1.training import weight_changes


def grpo_start(work_dir, start_from: str, run) -> str:
    """What 07 loads: 03's adapter folder (its base model comes with it; refused if 03 trained another model than
    the run manifest `run` names), or the run's base model itself."""
    from medical_r1.manifest import check_trained_as_run

    if start_from == "adapter":
        check_trained_as_run(run, work_dir)
        return str(require_artifact(work_dir, "adapter"))
    return run.model_name


def rollout_engine(backend: str) -> tuple[bool, str]:
    """Whether 07 writes its answers with vLLM (Unsloth's `fast_inference`, as Unsloth's own GRPO notebooks do on
    Kaggle and Colab) or with the model's `generate`, and why: vLLM needs Unsloth on a GPU and the vllm package."""
    import importlib.util

    if backend != "unsloth":
        return False, (f"answers written by the model's own generate: backend {backend!r} (vLLM rollouts need "
                       "Unsloth on a GPU)")
    if importlib.util.find_spec("vllm") is None:
        return False, ("answers written by Unsloth's generate: vLLM is not installed (this series' install leaves it "
                       "out; `pip install vllm` and a restart switch 07 to it)")
    return True, "answers written by vLLM through Unsloth's fast_inference, as Unsloth's GRPO notebooks do"


# Unsloth 2026.10.9 replays its decode step as CUDA graphs for these model types only, and only while every
# parameter is on the GPU (unsloth/models/_decode_graphs.py: _SUPPORTED_MODEL_TYPES, _fingerprint).
GRAPHED_MODEL_TYPES = ("llama", "qwen3")


def embedding_offload(model_name: str, backend: str) -> tuple[bool | str, str]:
    """Unsloth's `offload_embedding` for 07's load, and why. Its "auto" moves the input embeddings to CPU RAM when it
    estimates that a training step would not fit beside them, and its graph decode then declines, so every answer of
    a rollout decodes eagerly: at the Llama-8B shape in T4 mode a GRPO step took 62.8 s with them moved against 24.6 s
    without (rollouts 67 against 172 tokens/s), for 1.5 GiB less (lab/BENCHMARKS.md). By its estimate a T4 keeps the 8B's
    (about 2.7 GB wanted, about 9 GiB free after loading); False makes that sure where the model type is graphed.
    Elsewhere "auto": Qwen2's decode is never graphed, so the room is worth more (the 14B needs it)."""
    from medical_r1.models import base_model_type

    if backend != "unsloth":
        return "auto", f"embeddings: Unsloth's offload does not apply to backend {backend!r}"
    model_type = base_model_type(model_name)
    if model_type in GRAPHED_MODEL_TYPES:
        return False, (f"embeddings kept on the GPU (offload_embedding=False): Unsloth replays {model_type}'s decode "
                       "step as CUDA graphs only with every weight on the GPU; with the 8B's embeddings in CPU RAM a "
                       "GRPO step took 2.5x as long")
    return "auto", (f"embeddings placed by Unsloth (offload_embedding='auto'): it does not graph {model_type}'s "
                    "decode step, so moving them to CPU RAM where memory is short costs no speed")


def rollouts_with_decode_speedups(model, backend: str) -> str:
    """Makes every `generate` call on `model` (the trainer's rollouts) run inside 04's decode_speedups: its output
    head reading its weights once and, in Unsloth's graph step, its grouped attention core. At the Llama-8B shape in
    T4 mode the trainer's rollouts went from 176 to 223 tokens/s with them (04's generate_answers, same answers:
    218-230), a GRPO step from 24.0 to 19.2 s (lab/BENCHMARKS.md). Returns the line that says so. With vLLM (Unsloth
    sets `vllm_engine` on the model) the rollouts do not call `generate`, and nothing is wrapped."""
    import functools

    from medical_r1.generation import decode_speedups

    if getattr(model, "vllm_engine", None) is not None:
        return "rollouts written by vLLM: 04's decode speed-ups do not apply"
    generate = model.generate

    @functools.wraps(generate)
    def generate_with_speedups(*args, **kwargs):
        with decode_speedups(model, backend):
            return generate(*args, **kwargs)

    model.generate = generate_with_speedups
    return ("rollouts written with 04's decode speed-ups (the output head reads its weights once; Unsloth's graph "
            "step gets the grouped attention core)")


def make_grpo_trainer(model, tokenizer, items: list[dict], template: str, p, backend: str, runtime,
                      reward_funcs: list):
    """The GRPOTrainer that 07 builds in its cells, for the tests, the learning check and the benchmark;
    `reward_funcs` are 07's three or another (the learning check's). A test checks that 07's GRPOConfig and
    GRPOTrainer calls pass the same settings as these, `p` (Params) standing for 07's parameters cell."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from medical_r1.rewards import grpo_rows
    from medical_r1.tracking import resolve_report_to
    from medical_r1.training import per_process_batch, runtime_training_args, training_callbacks

    report_to, why = resolve_report_to(p.report_to, p.work_dir)
    print(why)
    config = GRPOConfig(
        output_dir=str(artifact(p.work_dir, "grpo_checkpoints")),
        max_steps=p.grpo_max_steps,
        learning_rate=p.grpo_learning_rate,
        # shared between GPUs: one GPU's batch
        per_device_train_batch_size=per_process_batch(p.grpo_batch_size, num_generations=p.num_generations),
        gradient_accumulation_steps=p.grpo_grad_accum,
        num_generations=p.num_generations,
        max_completion_length=p.max_completion_length,
        temperature=p.grpo_temperature,
        seed=p.seed,
        logging_steps=1,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=p.grpo_save_steps,
        save_total_limit=2,
        report_to=report_to,
        **runtime_training_args(backend, runtime, "adamw_8bit"),
    )
    return GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        args=config,
        train_dataset=Dataset.from_list(grpo_rows(items, tokenizer, template)),
        reward_funcs=reward_funcs,
        callbacks=training_callbacks(),
    )


def reward_examples(item: dict, reward_funcs: list, max_completion_length: int):
    """A table: what each reward gives four written answers to `item` (right, wrong, a hedge, still thinking)."""
    import json

    import pandas as pd

    gold = item["answer_idx"]
    wrong = next(letter for letter in item["options"] if letter != gold)
    answers = {f"the right option ({gold})": f"Reasoning...\n</think>\n\nThe answer is {gold}.",
               f"a wrong option ({wrong})": f"Reasoning...\n</think>\n\nThe answer is {wrong}.",
               "a hedge": f"Reasoning...\n</think>\n\n{gold} or {wrong}.",
               "still thinking at the limit": "Reasoning about each option in turn and"}
    columns = {"options": [json.dumps(item["options"])] * len(answers), "answer_idx": [gold] * len(answers)}
    ids = [[0] * 12] * 3 + [[0] * max_completion_length]  # the last one used every token it was allowed
    table = {"answer": list(answers)}
    for func in reward_funcs:
        table[func.__name__] = func(completions=list(answers.values()), completion_ids=ids, **columns)
    frame = pd.DataFrame(table)
    frame["total"] = frame[[f.__name__ for f in reward_funcs]].sum(axis=1)
    return frame


def reward_history(trainer) -> dict:
    """Per logged step: the mean total reward, each reward's mean, the mean completion length, the loss."""
    rows = [h for h in trainer.state.log_history if "reward" in h]
    names = sorted({k for h in rows for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    return {"steps": [h["step"] for h in rows], "reward": [h["reward"] for h in rows],
            "per_reward": {n.split("/")[1]: [h[n] for h in rows] for n in names},
            "completion_length": [h.get("completions/mean_length") for h in rows],
            "loss": [h.get("loss") for h in rows],
            "same_reward_share": [h.get("frac_reward_zero_std") for h in rows]}


def plot_grpo_curve(history: dict, path):
    fig, (reward_ax, length_ax) = new_figure(2)
    reward_ax.plot(history["steps"], history["reward"], label="total", color="#4c72b0", linewidth=2)
    for name, values in history["per_reward"].items():
        reward_ax.plot(history["steps"], values, label=name, alpha=0.7)
    reward_ax.set_xlabel("optimizer step")
    reward_ax.set_ylabel("mean reward")
    reward_ax.legend(fontsize=8)
    length_ax.plot(history["steps"], history["completion_length"], color="#dd8452")
    length_ax.set_xlabel("optimizer step")
    length_ax.set_ylabel("mean answer length, tokens")
    return save_figure(fig, path)


def save_grpo_outputs(work_dir, trainer, model, tokenizer, before: dict, start_from: str) -> dict:
    """grpo_adapter/, grpo_curve.png and grpo_metrics.json; the metrics say whether only LoRA tensors moved."""
    history = reward_history(trainer)
    changes = weight_changes(before, model)
    losses = [x for x in history["loss"] if x is not None]
    metrics = {"start_from": start_from, "steps": trainer.state.global_step, "history": history,
               "weight_changes": changes, "loss_finite": all(math.isfinite(x) for x in losses),
               "first_reward": history["reward"][0] if history["reward"] else None,
               "last_reward": history["reward"][-1] if history["reward"] else None,
               "train_runtime_s": next((h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h),
                                       None)}
    metrics["summary"] = (f"{metrics['steps']} GRPO steps from the {start_from}; mean reward "
                          f"{metrics['first_reward']:.3f} -> {metrics['last_reward']:.3f}; LoRA tensors changed: "
                          f"{changes['lora_tensors_changed']}/{changes['lora_tensors']}; base tensors changed: "
                          f"{changes['base_tensors_changed']}/{changes['base_tensors']}")
    if history["same_reward_share"] and all(share == 1 for share in history["same_reward_share"]):
        metrics["summary"] += (". Every answer to a question got the same reward, so GRPO had nothing to learn from "
                               "(it learns from the differences between them): with real weights some answers are "
                               "right; here raise GRPO_TEMPERATURE or MAX_COMPLETION_LENGTH")
    if is_main_process():
        plot_grpo_curve(history, artifact(work_dir, "grpo_curve"))
        save_pretrained_atomic(artifact(work_dir, "grpo_adapter"), model, tokenizer)
        write_json(artifact(work_dir, "grpo_metrics"), metrics)
    return metrics
