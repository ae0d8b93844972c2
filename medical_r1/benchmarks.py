"""Did fine-tuning help? Multiple-choice accuracy on HuatuoGPT-o1's benchmarks, base vs tuned, with 95%
intervals; the answer is read by medical_r1.scorer (after the last </think>, never guessed from the reasoning).
"""
from __future__ import annotations

import json
import math
import pathlib
import random
import re

from medical_r1.display import TOO_FEW_ITEMS
from medical_r1.generation import GenerationSettings, choose_batch_size, generate_answers
from medical_r1.scorer import extract_choice, read_answer  # noqa: F401 (extract_choice: read here by callers)
from medical_r1.runtime import process_rank

EVAL_BENCHMARKS = ("MedQA_USLME_test", "MedMCQA_validation", "PubMedQA_test", "MMLU-Pro_Medical_test",
                   "GPQA_Medical_test")


# How an answer was read, in the order the verdict page lists them: the scorer's rules (a committed statement, a
# marked or standalone letter, an option's text), the model reader (medical_r1.model_reader), the opt-in similarity,
# and the three kinds of no answer: unreadable, abstained (the rules saw doubt: medical_r1.scorer.ABSTENTIONS),
# unfinished.
RULES = ("answer_is", "marked_letter", "standalone_letter", "option_text", "model_extracted", "similarity",
         "unreadable", "abstained", "unfinished")


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
    if isinstance(items_per_benchmark, bool) or not isinstance(items_per_benchmark, int) or items_per_benchmark < 0:
        raise ValueError(f"EVAL_ITEMS must be 0 (every item) or a positive number of items per benchmark, "
                         f"got {items_per_benchmark!r}")
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


def benchmark_questions(eval_data: dict) -> tuple[list[dict], list[dict]]:
    """Every item of every benchmark, in a fixed order, and the prompts the models answer ({id, question})."""
    items = [item for name in sorted(eval_data) for item in eval_data[name]]
    return items, [{"id": item["id"], "question": mc_question(item)} for item in items]


def score_answers(items: list[dict], outputs: list[dict], similarity: bool = False) -> list[dict]:
    scored = []
    for item, out in zip(items, outputs):
        letter, rule, why = read_answer(out["output"], item["options"], similarity)
        scored.append({"id": item["id"], "benchmark": item["benchmark"], "gold": item["answer_idx"],
                       "pred": letter, "rule": rule, "correct": letter == item["answer_idx"]})
        if why:
            scored[-1]["abstention"] = why
    return scored


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sensible at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def row_alphas(benchmarks: int, alpha: float = 0.05, pairs: int = 1) -> dict:
    """How a comparison spends its chance of a false claim, alpha: half on the headline (all benchmarks together),
    half shared equally by the benchmark rows, and all of it divided by the pairs of models compared (Bonferroni,
    which holds whatever the dependence between rows and whenever each stopped), so that when nothing changed the
    chance that any row of any pair claims a change stays at or below alpha."""
    return {"all": alpha / 2 / pairs, "benchmark": alpha / 2 / benchmarks / pairs}


def _model_counts(scored: list[dict]) -> dict:
    n = len(scored)
    correct = sum(s["correct"] for s in scored)
    rules = {rule: sum(s["rule"] == rule for s in scored) for rule in RULES}
    return {"correct": correct, "accuracy": correct / n, "interval": wilson_interval(correct, n),
            "unfinished": rules["unfinished"], "unreadable": rules["unreadable"], "abstained": rules["abstained"],
            "similarity": rules["similarity"],
            "model_extracted": rules["model_extracted"], "rules": rules}


def verdict_rows(base_scored: list[dict], tuned_scored: list[dict], alpha: float = 0.05, pairs: int = 1,
                 change: str = "fine-tuning") -> list[dict]:
    """Per benchmark and overall, for each model: items, correct, unfinished, unreadable, accuracy with its 95%
    interval; then the paired difference with its anytime-valid interval (medical_r1.sequential: valid however
    many rounds were looked at and whenever 04 stopped), whether that interval decided it, and a plain sentence.
    Unfinished and unreadable answers count as wrong and are reported, never guessed. The answers must be in the
    order they were answered: the interval is built item by item.

    The overall row, the headline, spends half of `alpha` and the benchmark rows share the other half
    (row_alphas), so that when fine-tuning changed nothing the chance that any row claims a change stays at or
    below `alpha` (tests/test_sequential.py simulates it). `pairs`: how many pairs of models share alpha.
    `change` names what the sentence says helped or hurt ("fine-tuning", "GRPO", ...)."""
    from medical_r1.sequential import decided, difference_interval

    rows = []
    benchmarks = list(dict.fromkeys(s["benchmark"] for s in base_scored))  # in the order they were answered
    alphas = row_alphas(len(benchmarks), alpha, pairs)
    tuned_by_id = {s["id"]: s for s in tuned_scored}
    for name in sorted(benchmarks) + ["all"]:
        b = [s for s in base_scored if name in ("all", s["benchmark"])]
        t = [tuned_by_id[s["id"]] for s in b]
        n = len(b)
        base, tuned = _model_counts(b), _model_counts(t)
        row_alpha = alphas["all" if name == "all" else "benchmark"]
        interval = difference_interval([s["correct"] for s in b], [s["correct"] for s in t], row_alpha)
        row = {"benchmark": name, "items": n, "difference": tuned["accuracy"] - base["accuracy"],
               "difference_interval": interval, "decided": decided(interval), "alpha": row_alpha}
        for model, counts in (("base", base), ("tuned", tuned)):
            row.update({f"{model}_{k}": v for k, v in counts.items()})
            row[f"{model}_no_answer"] = counts["unfinished"] + counts["unreadable"] + counts["abstained"]
        row["verdict"] = verdict_sentence(row, change)
        rows.append(row)
    return rows


def verdict_sentence(row: dict, change: str) -> str:
    """A comparison row in words: what was decided, at how many items; undecided, the largest change its interval
    leaves open ("no change larger than +/-X points")."""
    from medical_r1.sequential import largest_open_change

    lo, hi = row["difference_interval"]
    open_change = largest_open_change((lo, hi))
    if row["decided"]:
        said = f"{change} helped" if row["decided"] > 0 else f"{change} hurt"
    elif open_change >= 1:  # the interval still spans every difference
        said = TOO_FEW_ITEMS
    else:
        said = f"no change larger than ±{100 * open_change:.0f} points"
    return (f"{said} (difference {100 * row['difference']:+.1f} points, anytime-valid "
            f"{100 * (1 - row['alpha']):.1f}% interval {100 * lo:+.1f} to {100 * hi:+.1f}, {row['items']} items)")


# What 04 can compare, by the name of its scored answers: the base model, 03's adapter, 07's adapter.
MODELS = {"base": "base model", "tuned": "SFT (03)", "grpo": "SFT + GRPO (07)"}
# The pairs, in the order a reader asks: did SFT help, did GRPO add to it, and where did both get the model.
PAIRS = (("base", "tuned", "fine-tuning"), ("tuned", "grpo", "GRPO"), ("base", "grpo", "SFT + GRPO"))


def pair_verdicts(scored: dict[str, list[dict]], alpha: float = 0.05) -> list[dict]:
    """Every pair of the models that were scored (None: not run; a row per pair, three when 07 has run): each
    pair's verdict rows on the same items, per benchmark and overall, with alpha shared by the pairs (row_alphas),
    so that when nothing changed the chance that any row of any pair claims a change stays at `alpha`."""
    present = [p for p in PAIRS if scored.get(p[0]) is not None and scored.get(p[1]) is not None]
    pairs = []
    for before, after, change in present:
        rows = verdict_rows(scored[before], scored[after], alpha, len(present), change)
        overall = next(r for r in rows if r["benchmark"] == "all")
        pairs.append({"before": before, "after": after, "change": change, "rows": rows, "overall": overall,
                      "verdict": overall["verdict"]})
    return pairs


def read_with_model(model, tokenizer, items, questions, outputs, scored, template, threshold) -> None:
    """The model reader (medical_r1.model_reader) on the answers the rules could not read, with the model as it
    answered (the caller sets the adapter); says how many it tried and read."""
    from medical_r1.model_reader import read_unreadable

    prompts = [{"question": q["question"], "options": item["options"]} for q, item in zip(questions, items)]
    found = read_unreadable(model, tokenizer, prompts, outputs, scored, template, threshold)
    if found["tried"]:
        print(f"model reader: {found['read']} of {found['tried']} answers the rules could not read were read by "
              f"the model at probability >= {threshold}")


# benchmark_plan's warm-up: a 2-token answer to build the graphs and allocate, then a timed batch of real prompts
# writing exactly WARMUP_TOKENS each, greedy (its rate does not depend on the sampling).
WARMUP_TOKENS = 16
COMPILE_TOKENS = 2


def benchmark_plan(model, tokenizer, order: list[dict], template: str, settings: GenerationSettings, backend: str,
                   minutes: float, models: int = 2) -> str:
    """Before the long cell: this GPU's generation rate from a short timed warm-up (one batch of the first items
    of `order`, WARMUP_TOKENS each, at settings.batch_size, chosen here if it is still 0), how long one round takes
    at most at that rate (one batch per process for each of `models`, every answer running to
    settings.max_new_tokens), and how many items per model the budget of `minutes` holds at least."""
    import time

    import torch

    questions = [{"id": item["id"], "question": mc_question(item)} for item in order]
    settings = choose_batch_size(model, tokenizer, questions, template, settings)  # nothing to do where 04 chose it
    sample = questions[:settings.batch_size]
    greedy = settings.replace(do_sample=False)
    generate_answers(model, tokenizer, sample[:1], template,
                     greedy.replace(max_new_tokens=COMPILE_TOKENS, batch_size=1), backend)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, sample, template, greedy.replace(max_new_tokens=WARMUP_TOKENS),
                               backend, min_new_tokens=WARMUP_TOKENS)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = sum(a["new_tokens"] for a in answers) / (time.perf_counter() - start)
    processes = process_rank()[1]  # each answers its own batch of every round (generate_answers)
    round_items = settings.batch_size * processes
    round_minutes = models * settings.batch_size * settings.max_new_tokens / rate / 60
    rounds = max(1, math.floor(minutes / round_minutes))  # the first round is answered whatever the budget
    needed = math.ceil(len(order) / round_items)  # rounds that answer every item drawn
    held = ("is shorter than one round, so 04 answers one round and stops" if minutes < round_minutes else
            f"holds all {needed} round{'s' * (needed != 1)} the {len(order)} items drawn need" if rounds >= needed else
            f"holds at least {rounds} rounds ({rounds * round_items} items per model, of the {len(order)} drawn)")
    took = f"{round_minutes:.1f} min" if round_minutes >= 0.1 else f"{60 * round_minutes:.1f} s"
    return (f"measured {rate:,.0f} generated tokens/s at batch {len(sample)}; a round ({round_items} items, "
            f"answered by {models} models{f' in {processes} processes' if processes > 1 else ''}, up to "
            f"{settings.max_new_tokens} tokens each) takes at most {took} here, so EVAL_MINUTES = {minutes:g} "
            f"{held}; shorter answers fit more.")
