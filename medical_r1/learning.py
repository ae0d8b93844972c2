"""Proof that the training wiring learns, on the tiny model in seconds on a CPU (the tests and the demo print it).

A random model writes answers that all earn the same reward, and GRPO learns only from the differences between the
answers to one question, so 07 on it proves nothing (its tensors move, its reward does not). Here the tiny model is
one that closes its thinking now and then, and 07's own trainer (`grpo.make_grpo_trainer`) trains it on the format
reward's first step, a closed </think> (`rewards.closed_thinking_reward`): the share of answers that close their
thinking must rise, and with the reward negated it must fall. A wiring fault between the rewards and the update (the
wrong completion rewarded, a sign lost, the advantages dropped) fails one of the two.

For SFT, 03's trainer (`training.make_trainer`) trains the tiny model on one example, encoded as 02 encodes it; then
greedy decoding of its prompt must reproduce the start of its answer, which the base model (the adapter switched off)
does not. With the completion's labels masked (a collator that hides what the model must learn) it must not learn.
"""
from __future__ import annotations

import pathlib

# The tiny model's push towards </think>: each token's embedding carries a constant on one coordinate of the residual
# stream, and only </think>'s output row reads that coordinate. About 6% of 16-token answers close their thinking at
# the start; LoRA can raise the share by growing that coordinate (it is far from saturating the RMS norm).
CLOSING_COORDINATE, CLOSING_EMBEDDING, CLOSING_PUSH = 0, 0.05, 0.6
# How the checks train: enough answers per step for a share to mean something, few steps for a CPU.
GRPO_SETTINGS = {"grpo_max_steps": 30, "grpo_learning_rate": 5e-3, "grpo_batch_size": 16, "num_generations": 4,
                 "max_completion_length": 16, "report_to": "none"}
SFT_SETTINGS = {"max_steps": 40, "learning_rate": 2e-2, "batch_size": 1, "grad_accum": 1, "warmup_steps": 0,
                "packing": False, "report_to": "none"}
REPRODUCED_TOKENS = 12  # greedy tokens that must match the start of the trained answer
WINDOW = 5  # steps averaged at each end of the reward curve


def closing_model(out_dir) -> str:
    """A tiny random model that closes its thinking now and then (CLOSING_* above), saved to out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medical_r1.artifacts import save_pretrained_atomic
    from medical_r1.models import build_tiny_model

    build_tiny_model(out_dir, "qwen2")
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    with torch.no_grad():
        model.get_input_embeddings().weight[:, CLOSING_COORDINATE] = CLOSING_EMBEDDING
        head = model.get_output_embeddings().weight
        head[:, CLOSING_COORDINATE] = 0.0
        head[tokenizer.convert_tokens_to_ids("</think>"), CLOSING_COORDINATE] = CLOSING_PUSH
    save_pretrained_atomic(out_dir, model, tokenizer)
    return str(out_dir)


def negated(reward):
    """The same reward with its sign turned: the wiring fault the learning check must catch."""
    def negated_reward(completions, **kwargs):
        return [-r for r in reward(completions, **kwargs)]
    return negated_reward


def grpo_learns(work_dir, reward_sign: int = 1) -> dict:
    """07's trainer on the closing model with the closed-</think> reward (negated when reward_sign is -1): the share
    of answers that closed their thinking per step, its mean over the first and last WINDOW steps, whether only LoRA
    tensors moved, and the reward curve drawn as 07 draws it (grpo_learning_curve.png in work_dir)."""
    from medical_r1.data import SAMPLE_DATA_DIR
    from medical_r1.grpo import make_grpo_trainer, plot_grpo_curve, reward_history
    from medical_r1.models import add_lora, load_model_and_tokenizer
    from medical_r1.params import Params
    from medical_r1.rewards import closed_thinking_reward, load_items
    from medical_r1.runtime import detect_runtime
    from medical_r1.training import weight_changes, weight_snapshot

    work_dir = pathlib.Path(work_dir)
    p = Params(work_dir=str(work_dir), grpo_save_steps=GRPO_SETTINGS["grpo_max_steps"] + 1, **GRPO_SETTINGS)
    runtime = detect_runtime()
    model, tokenizer = load_model_and_tokenizer(closing_model(work_dir / "closing-model"), "cpu", runtime, 512)
    model = add_lora(model, "cpu", p)
    before = weight_snapshot(model)
    reward = closed_thinking_reward if reward_sign > 0 else negated(closed_thinking_reward)
    items = load_items(str(pathlib.Path(SAMPLE_DATA_DIR) / "grpo_train.json"))
    trainer = make_grpo_trainer(model, tokenizer, items, "r1_chat", p, "cpu", runtime, [reward])
    trainer.train()
    history = reward_history(trainer)
    share = [reward_sign * r for r in history["reward"]]
    plot_grpo_curve(history, work_dir / "grpo_learning_curve.png")
    first, last = sum(share[:WINDOW]) / WINDOW, sum(share[-WINDOW:]) / WINDOW
    return {"reward_sign": reward_sign, "steps": len(share), "closed_share": share, "first": first, "last": last,
            "weight_changes": weight_changes(before, model), "curve": str(work_dir / "grpo_learning_curve.png"),
            "line": (f"GRPO learns on the tiny model{'' if reward_sign > 0 else ' (reward negated)'}: answers closing "
                     f"their thinking {100 * first:.0f}% over the first {WINDOW} steps -> {100 * last:.0f}% over the "
                     f"last {WINDOW} ({len(share)} steps, 07's trainer)")}


def sft_learns(work_dir, mask_completion: bool = False) -> dict:
    """03's trainer on one example of the sample data: the first REPRODUCED_TOKENS greedy tokens of its prompt, with
    the adapter on and off, against the start of its answer. mask_completion hides the answer's labels (the fault)."""
    import torch

    from medical_r1.data import SAMPLE_DATA_DIR, format_rows, load_sft_rows
    from medical_r1.models import add_lora, build_tiny_model, load_model_and_tokenizer
    from medical_r1.params import Params
    from medical_r1.runtime import detect_runtime
    from medical_r1.training import make_trainer

    work_dir = pathlib.Path(work_dir)
    p = Params(work_dir=str(work_dir), **SFT_SETTINGS)
    runtime = detect_runtime()
    model, tokenizer = load_model_and_tokenizer(build_tiny_model(work_dir / "tiny-model"), "cpu", runtime, 2048)
    records, _ = format_rows(load_sft_rows(str(SAMPLE_DATA_DIR), "en")[:1], tokenizer, "r1_chat", 2048)
    record = records[0]
    if mask_completion:
        record["labels"] = [-100] * (len(record["labels"]) - 1) + [record["labels"][-1]]  # only the eos left
    model = add_lora(model, "cpu", p)
    trainer = make_trainer(model, tokenizer, records, [], p, "cpu", runtime)
    trainer.train()
    prompt = record["input_ids"][:record["prompt_len"]]
    wanted = record["input_ids"][record["prompt_len"]:record["prompt_len"] + REPRODUCED_TOKENS]

    def greedy():
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=REPRODUCED_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return out[0, len(prompt):].tolist()

    model.eval()
    tuned = greedy()
    with model.disable_adapter():
        base = greedy()
    matched = lambda ids: next((i for i, (a, b) in enumerate(zip(ids, wanted)) if a != b), len(wanted))  # noqa: E731
    result = {"mask_completion": mask_completion, "wanted": tokenizer.decode(wanted), "tuned": tokenizer.decode(tuned),
              "base": tokenizer.decode(base), "tuned_matched": matched(tuned), "base_matched": matched(base),
              "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
    result["line"] = (f"SFT learns on the tiny model: after {p.max_steps} steps on one example, greedy decoding of its "
                      f"prompt repeats {result['tuned_matched']} of the first {REPRODUCED_TOKENS} answer tokens "
                      f"(the base model: {result['base_matched']}; 03's trainer)")
    return result
