"""Prompt templates and token-level encoding for the medical-R1 notebook series: the card's tiny module.

Baseline (01), formatting (02), training (03), comparison (04) and the GGUF chat template (05) all render
prompts through `render_prompt`, so the training and inference prompts cannot drift. The three rules that
the usual tutorials get wrong live here, each tested in tests/test_templates.py:
- one BOS: the DeepSeek chat template writes the BOS text itself, so text is tokenised without special
  tokens (the tokenizer would add a second one);
- the chain of thought is appended by us, not rendered through the template (which drops it);
- the final eos is a label: pad = eos in these tokenizers, and a collator masking pad ids would hide it.
Everything else (data, training, evaluation, export, publishing) is in the `medical_r1` package beside it.
"""
from __future__ import annotations

ALPACA_R1 = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. Before answering, think carefully about the "
    "question and create a step-by-step chain of thoughts to ensure a logical and accurate response.\n\n"
    "### Instruction:\nYou are a medical expert with advanced knowledge in clinical reasoning, diagnostics, "
    "and treatment planning. Please answer the following medical question.\n\n"
    "### Question:\n{question}\n\n### Response:\n<think>\n"
)


ZH_R1 = (
    "以下是描述任务的指令，以及提供进一步上下文的输入。请写出一个适当完成请求的回答。"
    "在回答之前，请仔细思考问题，并创建一个逐步的思维链，以确保回答合乎逻辑且准确。\n\n"
    "### 指令：\n你是一位在临床推理、诊断和治疗计划方面具有专业知识的医学专家。"
    "请一步一步推理下面的问题：\n\n### 问题：\n{question}\n\n### 回答：\n<think>\n"
)


# name -> format string, or None for the model's own chat template. Every prompt ends "<think>\n": the
# model's template opens the thought that way, and the completion starts with the CoT right after it.
TEMPLATES = {"r1_chat": None, "alpaca_r1": ALPACA_R1, "zh_r1": ZH_R1}


THINK_END = "\n</think>\n\n"  # between CoT and response, as R1 writes it


def render_prompt(tokenizer, question: str, template: str = "r1_chat") -> str:
    """The prompt text for one question, ending "<think>\\n", holding the BOS text exactly once.

    r1_chat is `apply_chat_template([user], add_generation_prompt=True)`: the template writes the BOS
    itself, so the text must later be tokenised with add_special_tokens=False (see encode_text), or the
    tokenizer's own add_bos_token puts a second BOS in front.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}: choose one of {sorted(TEMPLATES)}")
    if TEMPLATES[template] is None:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tokenizer.bos_token + TEMPLATES[template].format(question=question)


def render_completion(cot: str, response: str) -> str:
    """What the model learns to write after the prompt: CoT, "\\n</think>\\n\\n", response (eos added as an id).

    We append this ourselves instead of rendering an assistant turn through the chat template, because
    the DeepSeek template keeps only the text after </think> and would silently drop the CoT.
    """
    return cot.strip() + THINK_END + response.strip()


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, question: str, template: str = "r1_chat") -> list[int]:
    ids = encode_text(tokenizer, render_prompt(tokenizer, question, template))
    if ids.count(tokenizer.bos_token_id) != 1 or ids[0] != tokenizer.bos_token_id:
        raise ValueError(f"prompt must start with exactly one BOS, got {ids.count(tokenizer.bos_token_id)}")
    return ids


def encode_example(tokenizer, row: dict, template: str = "r1_chat", completion_only_loss: bool = True) -> dict:
    """Token ids and labels for one training row: prompt ids + completion ids + eos.

    Prompt and completion are tokenised separately and concatenated, so the inference prompt is exactly
    the prefix of the training ids. Labels are -100 on the prompt (unless full-text loss is asked for)
    and equal the ids elsewhere, the final eos included: pad = eos in these tokenizers, and a collator
    that masks pad ids would otherwise hide the eos and the model would never learn to stop.
    """
    prompt_ids = encode_prompt(tokenizer, row["Question"], template)
    completion_ids = encode_text(tokenizer, render_completion(row["Complex_CoT"], row["Response"]))
    completion_ids.append(tokenizer.eos_token_id)
    labels = ([-100] * len(prompt_ids) if completion_only_loss else list(prompt_ids)) + completion_ids
    return {"input_ids": prompt_ids + completion_ids, "labels": labels, "prompt_len": len(prompt_ids)}


def split_thinking(text: str) -> tuple[str, str, bool]:
    """(thinking, answer, finished): the text before and after the last </think>; finished is False
    when the model never closed its thought (it ran out of tokens)."""
    if "</think>" not in text:
        return text.strip(), "", False
    thinking, _, answer = text.rpartition("</think>")
    return thinking.strip(), answer.strip(), True
