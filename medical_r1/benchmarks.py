"""Did fine-tuning help? Multiple-choice accuracy on HuatuoGPT-o1's benchmarks, base vs tuned, with 95%
intervals; the answer letter is read only after the last </think>, never guessed from the reasoning.
"""
from __future__ import annotations

import json
import math
import pathlib
import random
import re

from medical_r1.generation import answer_base_and_tuned
from src_helpers import split_thinking

EVAL_BENCHMARKS = ("MedQA_USLME_test", "MedMCQA_validation", "PubMedQA_test", "MMLU-Pro_Medical_test",
                   "GPQA_Medical_test")


class EvalDataError(ValueError):
    pass


def validate_eval_data(data) -> None:
    """Raise EvalDataError naming the benchmark, item and field of the first problem."""
    if not isinstance(data, dict) or not data:
        raise EvalDataError("the evaluation file must be a JSON object keyed by benchmark name "
                            f"(HuatuoGPT-o1's eval_data.json, e.g. {EVAL_BENCHMARKS[0]!r})")
    for name, items in data.items():
        if not isinstance(items, list) or not items:
            raise EvalDataError(f"benchmark {name!r}: expected a non-empty list of items")
        for i, item in enumerate(items):
            where = f"benchmark {name!r}, item {i}"
            if not isinstance(item, dict):
                raise EvalDataError(f"{where}: expected an object with question, options, answer_idx")
            if not isinstance(item.get("question"), str) or not item["question"].strip():
                raise EvalDataError(f"{where}: 'question' must be a non-empty string")
            options = item.get("options")
            if not isinstance(options, dict) or len(options) < 2 or not all(
                    re.fullmatch(r"[A-Z]", k) and isinstance(v, str) for k, v in options.items()):
                raise EvalDataError(f"{where}: 'options' must map letters A, B, ... to strings")
            if item.get("answer_idx") not in options:
                raise EvalDataError(f"{where}: 'answer_idx' {item.get('answer_idx')!r} is not one of the options "
                                    f"{sorted(options)}")


def load_eval_data(source: str, items_per_benchmark: int, seed: int) -> dict[str, list[dict]]:
    """HuatuoGPT-o1's evaluation set from its public URL or a local file, validated, with the same
    `items_per_benchmark` items per benchmark for a given seed (0 keeps every item)."""
    if source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=60) as response:  # noqa: S310 (a fixed public URL)
            text = response.read().decode("utf-8")
    else:
        text = pathlib.Path(source).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{source} is not valid JSON ({err.msg} at line {err.lineno})") from err
    validate_eval_data(data)
    picked = {}
    for name, items in data.items():
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        keep = sorted(order[:items_per_benchmark]) if items_per_benchmark else order
        picked[name] = [{**items[i], "benchmark": name, "id": f"{name}/{i}"} for i in sorted(keep)]
    return picked


def mc_question(item: dict) -> str:
    """HuatuoGPT-o1's evaluation prompt: the question, then one "X. option" line per option."""
    lines = "\n".join(f"{k}. {v}" for k, v in item["options"].items())
    return f"Please answer the following multiple-choice question:\n{item['question']}\n{lines}"


_ANSWER_IS = re.compile(
    r"(?:[Aa]nswer\s*(?:is|would be|should be)?\s*(?:[Oo]ption\s*)?[:：]?\s*|答案(?:是|为|应为|选)?\s*[:：]?\s*)"
    r"[\(\[（*\s]*([A-J])(?![A-Za-z])")


_MARKED = re.compile(r"\*\*\s*\(?([A-J])\)?\s*(?:\*\*|[.:)])|[\(\[（]([A-J])[\)\]）]")


_LETTER = re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])")


def extract_choice(output: str, options: dict) -> tuple[str | None, str]:
    """(letter, rule that found it). Only the text after the last </think> is read, so letters inside the
    reasoning are never caught; an output without </think> ran out of tokens and counts as no answer.
    Rules, in order: "answer is X" (also 答案是X, 正确答案), a bold or bracketed letter, a standalone
    option letter (an "A" followed by a lower-case word is the article), the option's text, and only
    then the option most similar to the answer."""
    import difflib

    thinking, answer, finished = split_thinking(output)
    if not finished:
        return None, "unfinished"
    if not answer:
        return None, "empty"
    letters = set(options)
    for rule, pattern in (("answer_is", _ANSWER_IS), ("marked_letter", _MARKED)):
        for match in pattern.finditer(answer):
            letter = next(g for g in match.groups() if g)
            if letter in letters:  # upper case only: "the answer is a fracture" names no option
                return letter, rule
    for match in _LETTER.finditer(answer):
        letter = match.group(1)
        is_a_word = letter in "AI" and re.match(r"\s+[a-z']|'", answer[match.end():])  # "A patient", "I think"
        if letter in letters and not is_a_word:
            return letter, "standalone_letter"
    lowered = answer.lower()
    named = [k for k, v in options.items() if v.strip() and v.strip().lower() in lowered]
    if len(named) == 1:
        return named[0], "option_text"
    best = max(options, key=lambda k: difflib.SequenceMatcher(None, lowered, options[k].lower()).ratio())
    return best, "similarity"


def score_answers(items: list[dict], outputs: list[dict]) -> list[dict]:
    scored = []
    for item, out in zip(items, outputs):
        letter, rule = extract_choice(out["output"], item["options"])
        scored.append({"id": item["id"], "benchmark": item["benchmark"], "gold": item["answer_idx"],
                       "pred": letter, "rule": rule, "correct": letter == item["answer_idx"]})
    return scored


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sensible at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_difference(base: list[bool], tuned: list[bool], seed: int = 0,
                                rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of accuracy(tuned) - accuracy(base) over the same items, resampled together."""
    rng = random.Random(seed)
    n = len(base)
    diffs = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(tuned[i] - base[i] for i in idx) / n)
    diffs.sort()
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]


def verdict_rows(base_scored: list[dict], tuned_scored: list[dict], seed: int = 0) -> list[dict]:
    """Per benchmark and overall: accuracy base vs tuned with 95% intervals, and a plain sentence."""
    rows = []
    names = sorted({s["benchmark"] for s in base_scored}) + ["all"]
    for name in names:
        b = [s for s in base_scored if name in ("all", s["benchmark"])]
        t = {s["id"]: s for s in tuned_scored}
        t = [t[s["id"]] for s in b]
        bc, tc = [s["correct"] for s in b], [s["correct"] for s in t]
        n = len(b)
        lo, hi = paired_bootstrap_difference(bc, tc, seed)
        if lo > 0:
            sentence = "fine-tuning helped"
        elif hi < 0:
            sentence = "fine-tuning hurt"
        else:
            sentence = "no detectable change"
        rows.append({
            "benchmark": name, "items": n,
            "base_accuracy": sum(bc) / n, "base_interval": wilson_interval(sum(bc), n),
            "tuned_accuracy": sum(tc) / n, "tuned_interval": wilson_interval(sum(tc), n),
            "difference": (sum(tc) - sum(bc)) / n, "difference_interval": (lo, hi),
            "base_no_answer": sum(s["pred"] is None for s in b), "tuned_no_answer": sum(s["pred"] is None for s in t),
            "verdict": f"{sentence} (difference {100 * (sum(tc) - sum(bc)) / n:+.1f} points, 95% interval "
                       f"{100 * lo:+.1f} to {100 * hi:+.1f}, {n} items)",
        })
    return rows


def verdict_html(rows: list[dict]) -> str:
    import html

    def pct(x):
        return f"{100 * x:.1f}%"

    body = "".join(
        f"<tr><td>{html.escape(r['benchmark'])}</td><td>{r['items']}</td>"
        f"<td>{pct(r['base_accuracy'])} [{pct(r['base_interval'][0])}, {pct(r['base_interval'][1])}]</td>"
        f"<td>{pct(r['tuned_accuracy'])} [{pct(r['tuned_interval'][0])}, {pct(r['tuned_interval'][1])}]</td>"
        f"<td>{r['base_no_answer']} / {r['tuned_no_answer']}</td><td>{html.escape(r['verdict'])}</td></tr>"
        for r in rows)
    return ("<html><head><meta charset='utf-8'><title>Did fine-tuning help?</title></head><body>"
            "<h2>Did fine-tuning help?</h2><table border='1' style='border-collapse:collapse'><tr><th>benchmark</th>"
            "<th>items</th><th>base accuracy [95%]</th><th>tuned accuracy [95%]</th><th>no answer (base / tuned)</th>"
            f"<th>verdict</th></tr>{body}</table></body></html>")


def run_benchmarks(model, tokenizer, eval_data: dict, template: str, max_new_tokens: int, greedy: bool,
                   temperature: float, top_p: float, batch_size: int, seed: int, backend: str):
    """Answer every benchmark item with the adapter off (base) and on (tuned); score both the same way."""
    items = [item for name in sorted(eval_data) for item in eval_data[name]]
    questions = [{"id": item["id"], "question": mc_question(item)} for item in items]
    base, tuned = answer_base_and_tuned(model, tokenizer, questions, template, max_new_tokens, greedy, temperature,
                                        top_p, batch_size, seed, backend)
    return score_answers(items, base), score_answers(items, tuned)
