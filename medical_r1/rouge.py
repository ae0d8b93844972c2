"""ROUGE-L of the base and tuned answers against the reference responses of held-out examples.
"""
from __future__ import annotations

from medical_r1.generation import answer_base_and_tuned
from src_helpers import split_thinking


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 on words, or on characters for text without spaces (Chinese)."""
    def units(text):
        return text.split() if " " in text.strip() else list(text.strip())

    a, b = units(candidate), units(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def reference_response(record: dict) -> str:
    """The reference answer of a formatted record: the completion after </think>, without eos."""
    return split_thinking(record["completion"])[1]


def rouge_comparison(model, tokenizer, val: list[dict], n: int, template: str, settings, backend: str) -> dict:
    """Mean ROUGE-L of the base and tuned answers (after </think>), written as `settings` (GenerationSettings) say,
    against the reference responses of n validation examples. An answer that never closed its thought scores 0 and is counted."""
    records = val[:n]
    questions = [{"id": str(r["row"]), "question": r["question"]} for r in records]
    base, tuned = answer_base_and_tuned(model, tokenizer, questions, template, settings, backend)
    references = [reference_response(r) for r in records]
    result = {"items": len(records)}
    for name, answers in (("base", base), ("tuned", tuned)):
        scores = [rouge_l(a["answer"], ref) for a, ref in zip(answers, references)]
        result[f"{name}_rouge_l"] = sum(scores) / len(scores) if scores else None
        result[f"{name}_unfinished"] = sum(not a["finished_thinking"] for a in answers)
    result["answers"] = [{"question": r["question"], "reference": ref, "base": b["answer"], "tuned": t["answer"]}
                         for r, ref, b, t in zip(records, references, base, tuned)]
    return result


def rouge_summary(rouge: dict) -> str:
    if not rouge["items"]:
        return "ROUGE-L: not computed (ROUGE_ITEMS is 0)"
    return (f"ROUGE-L: base {rouge['base_rouge_l']:.3f} -> tuned {rouge['tuned_rouge_l']:.3f} on {rouge['items']} "
            f"answers (unfinished: base {rouge['base_unfinished']}, tuned {rouge['tuned_unfinished']})")
