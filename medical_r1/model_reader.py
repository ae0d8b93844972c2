"""The second reader, for answers the rules cannot read: the evaluated model reads its own answer.

This is zero-shot chain of thought's answer extraction (Kojima et al., 2022, "Large Language Models are Zero-Shot
Reasoners"): the prompt, the model's own output and a fixed answer prompt ("Therefore, among A through D, the answer
is (") go through the same model once, and the probabilities of the option letters as the next token say which
option it meant. 04 uses it only where medical_r1.scorer finds no answer in a finished output (an unfinished output
never answered, so nothing is read from it), accepts the letter only at `threshold` probability or above (of the
whole vocabulary, so a model that puts its weight elsewhere is not read), and records the rule as "model_extracted"
with the probability, so that the verdict table shows how many answers each model needed it for. 07's rewards keep
the rules alone: the policy should learn to commit in words, not be read charitably.
"""
from __future__ import annotations

from src_helpers import encode_prompt, encode_text, split_thinking

ANSWER_PROMPT = "\n\nTherefore, among {first} through {last}, the answer is ("


def letter_token_ids(tokenizer, letters) -> dict[str, int]:
    """The single token each option letter is written with right after "(", or a ValueError naming the letter."""
    ids = {}
    for letter in letters:
        encoded = encode_text(tokenizer, letter)
        if len(encoded) != 1:
            raise ValueError(f"option letter {letter!r} is {len(encoded)} tokens in this tokenizer; the model reader "
                             "needs one token per letter (set EVAL_MODEL_READER = 0 to turn it off)")
        ids[letter] = encoded[0]
    return ids


def reader_ids(tokenizer, question: str, output: str, letters, template: str) -> list[int]:
    """The prompt as the model saw it, its output, and the answer prompt, as token ids."""
    letters = sorted(letters)
    suffix = ANSWER_PROMPT.format(first=letters[0], last=letters[-1])
    return encode_prompt(tokenizer, question, template) + encode_text(tokenizer, output + suffix)


def letter_probabilities(model, tokenizer, rows: list[dict], template: str) -> list[dict]:
    """For each {question, output, options}: the probability of each option letter as the next token after the
    answer prompt, from one forward pass each. One row at a time, unpadded, so the positions are exactly those the
    model wrote with; the few unreadable answers make batching not worth its padding."""
    import torch

    from medical_r1.generation import input_device

    model.eval()
    device = input_device(model)
    found = []
    for row in rows:
        ids = torch.tensor([reader_ids(tokenizer, row["question"], row["output"], row["options"], template)],
                           device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)
        found.append({letter: float(probs[t]) for letter, t in letter_token_ids(tokenizer, row["options"]).items()})
    return found


def read_unreadable(model, tokenizer, prompts: list[dict], outputs: list[dict], scored: list[dict], template: str,
                    threshold: float) -> dict:
    """Give each finished answer the rules could not read ("unreadable") or abstained on to the model reader.
    `prompts` are the questions as asked ({question, options}). At `threshold` or above, the letter is recorded
    with rule "model_extracted" and its probability; below, the answer stays unreadable (or abstained) with the
    probability it reached.
    Changes `scored` in place; returns how many answers were tried and how many read."""
    todo = [i for i, s in enumerate(scored) if s["rule"] in ("unreadable", "abstained")
            and split_thinking(outputs[i]["output"])[2]]
    if not threshold or not todo:
        return {"tried": 0, "read": 0}
    rows = [{**prompts[i], "output": outputs[i]["output"]} for i in todo]
    for i, probs in zip(todo, letter_probabilities(model, tokenizer, rows, template)):
        letter = max(probs, key=probs.get)
        scored[i]["model_probability"] = round(probs[letter], 4)
        if probs[letter] >= threshold:
            scored[i].update(pred=letter, rule="model_extracted", correct=letter == scored[i]["gold"])
    return {"tried": len(todo), "read": sum(scored[i]["rule"] == "model_extracted" for i in todo)}
