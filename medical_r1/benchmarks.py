"""Did fine-tuning help? Multiple-choice accuracy on HuatuoGPT-o1's benchmarks, base vs tuned, with 95%
intervals; the answer is read by medical_r1.scorer (after the last </think>, never guessed from the reasoning).
"""
from __future__ import annotations

import json
import math
import pathlib
import random
import re

from medical_r1.generation import GenerationSettings, answer_base_and_tuned, choose_batch_size, generate_answers
from medical_r1.scorer import extract_choice
from medical_r1.runtime import process_rank

EVAL_BENCHMARKS = ("MedQA_USLME_test", "MedMCQA_validation", "PubMedQA_test", "MMLU-Pro_Medical_test",
                   "GPQA_Medical_test")


# How an answer was read, in the order the verdict page lists them: the scorer's rules (a committed statement, a
# marked or standalone letter, an option's text), the model reader (medical_r1.model_reader), the opt-in similarity,
# and the two kinds of no answer.
RULES = ("answer_is", "marked_letter", "standalone_letter", "option_text", "model_extracted", "similarity",
         "unreadable", "unfinished")


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
        letter, rule = extract_choice(out["output"], item["options"], similarity)
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


def paired_test_p(base: list[bool], tuned: list[bool]) -> float:
    """Two-sided exact McNemar test of "the two models are equally accurate on these items": only the items one
    model got right and the other wrong count, and under no change each is equally likely to favour either model.
    Exact (binomial), so it never claims more often than its level, however few the items."""
    favour_base = sum(b and not t for b, t in zip(base, tuned))
    favour_tuned = sum(t and not b for b, t in zip(base, tuned))
    n = favour_base + favour_tuned
    if not n:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(favour_base, favour_tuned) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def row_alphas(benchmarks: int, alpha: float = 0.05, pairs: int = 1) -> dict:
    """How a comparison spends its chance of a false claim, alpha: half on the headline (all benchmarks together),
    half shared equally by the benchmark rows, and all of it divided by the pairs of models compared (Bonferroni,
    which holds whatever the dependence between rows and whenever each stopped), so that when nothing changed the
    chance that any row of any pair claims a change stays at or below alpha."""
    return {"all": alpha / 2 / pairs, "benchmark": alpha / 2 / benchmarks / pairs}


def holm_rejections(p_values: dict, alpha: float = 0.05) -> set:
    """Holm's step-down: the names whose hypothesis is rejected with the chance of any false rejection among all
    of them at most alpha, whatever their dependence (the benchmarks share a model; the settings share a base)."""
    rejected = set()
    for rank, name in enumerate(sorted(p_values, key=p_values.get)):
        if p_values[name] > alpha / (len(p_values) - rank):
            break
        rejected.add(name)
    return rejected


def detectable_difference(n: int) -> float:
    """The smallest accuracy difference a comparison on n items detects with 80% power at 95% confidence,
    taking accuracies near 50% and independent errors (the worst case: the paired test does better when the
    two models fail on the same items). A planning number: with 30 items it is 36 points, with 1,273 it is 6."""
    return (1.96 + 0.84) * math.sqrt(2 * 0.25 / n) if n else 1.0


def _model_counts(scored: list[dict]) -> dict:
    n = len(scored)
    correct = sum(s["correct"] for s in scored)
    rules = {rule: sum(s["rule"] == rule for s in scored) for rule in RULES}
    return {"correct": correct, "accuracy": correct / n, "interval": wilson_interval(correct, n),
            "unfinished": rules["unfinished"], "unreadable": rules["unreadable"], "similarity": rules["similarity"],
            "model_extracted": rules["model_extracted"], "rules": rules}


def verdict_rows(base_scored: list[dict], tuned_scored: list[dict], seed: int = 0, alpha: float = 0.05,
                 bootstrap_rounds: int = 2000, change: str = "fine-tuning") -> list[dict]:
    """Per benchmark and overall, for each model: items, correct, unfinished, unreadable, accuracy with its
    95% interval; then the paired difference with its bootstrap interval, the smallest difference the
    comparison could detect, the paired test's p-value and a plain sentence. Unfinished and unreadable answers
    count as wrong and are reported, never guessed.

    The sentence comes from the exact paired test. The overall row, the headline, is tested at `alpha`. The
    per-benchmark rows are corrected for their number with Holm's step-down, so that when fine-tuning changed
    nothing the chance that any row claims a change stays at or below `alpha` (read row by row from their own
    intervals, five rows of 30 items claimed one in 15-24% of simulated runs). Holm rather than wider intervals:
    it is exact for any dependence between the benchmarks and rejects at least as much as Bonferroni's intervals
    would.
    `change` names what the sentence says helped or hurt ("fine-tuning", "GRPO", ...)."""
    rows = []
    benchmarks = sorted({s["benchmark"] for s in base_scored})
    tuned_by_id = {s["id"]: s for s in tuned_scored}
    for name in benchmarks + ["all"]:
        b = [s for s in base_scored if name in ("all", s["benchmark"])]
        t = [tuned_by_id[s["id"]] for s in b]
        n = len(b)
        base, tuned = _model_counts(b), _model_counts(t)
        base_right, tuned_right = [s["correct"] for s in b], [s["correct"] for s in t]
        lo, hi = paired_bootstrap_difference(base_right, tuned_right, seed, bootstrap_rounds)
        row = {"benchmark": name, "items": n, "difference": tuned["accuracy"] - base["accuracy"],
               "difference_interval": (lo, hi), "detectable_difference": detectable_difference(n),
               "p_value": paired_test_p(base_right, tuned_right)}
        for model, counts in (("base", base), ("tuned", tuned)):
            row.update({f"{model}_{k}": v for k, v in counts.items()})
            row[f"{model}_no_answer"] = counts["unfinished"] + counts["unreadable"]
        rows.append(row)
    changed = holm_rejections({r["benchmark"]: r["p_value"] for r in rows[:-1]}, alpha)
    if rows[-1]["p_value"] <= alpha:
        changed.add("all")
    for row in rows:
        correction = ("" if row["benchmark"] == "all" else
                      f", Holm-corrected for {len(benchmarks)} benchmark{'s' if len(benchmarks) > 1 else ''}")
        row["verdict"] = verdict_sentence(row, row["benchmark"] in changed, change, correction)
    return rows


def verdict_sentence(row: dict, claimed: bool, change: str, correction: str = "") -> str:
    """A comparison row in words: what changed (only when the test `claimed` it), the difference with its interval,
    the items, the paired test and `correction`, the multiple-testing correction it passed."""
    said = "no detectable change"
    if claimed and row["difference"]:
        said = f"{change} helped" if row["difference"] > 0 else f"{change} hurt"
    lo, hi = row["difference_interval"]
    return (f"{said} (difference {100 * row['difference']:+.1f} points, 95% interval {100 * lo:+.1f} to "
            f"{100 * hi:+.1f}, {row['items']} items; paired test p = {row['p_value']:.3g}{correction})")


# What 04 can compare, by the name of its scored answers: the base model, 03's adapter, 07's adapter.
MODELS = {"base": "base model", "tuned": "SFT (03)", "grpo": "SFT + GRPO (07)"}
# The pairs, in the order a reader asks: did SFT help, did GRPO add to it, and where did both get the model.
PAIRS = (("base", "tuned", "fine-tuning"), ("tuned", "grpo", "GRPO"), ("base", "grpo", "SFT + GRPO"))


def pair_verdicts(scored: dict[str, list[dict]], seed: int = 0, alpha: float = 0.05,
                  bootstrap_rounds: int = 2000) -> list[dict]:
    """Every pair of the models that were scored (None: not run; a row per pair, three when 07 has run): each
    pair's verdict rows on the same items (per benchmark, Holm-corrected within the pair, and overall), and its
    headline, the overall row, Holm-corrected across the pairs so that when nothing changed the chance that any
    pair's headline claims a change stays at `alpha`."""
    pairs = []
    for before, after, change in PAIRS:
        if scored.get(before) is not None and scored.get(after) is not None:
            rows = verdict_rows(scored[before], scored[after], seed, alpha, bootstrap_rounds, change)
            pairs.append({"before": before, "after": after, "change": change, "rows": rows,
                          "overall": next(r for r in rows if r["benchmark"] == "all")})
    changed = holm_rejections({i: pair["overall"]["p_value"] for i, pair in enumerate(pairs)}, alpha)
    for i, pair in enumerate(pairs):
        correction = f", Holm-corrected for {len(pairs)} pairs" if len(pairs) > 1 else ""
        pair["verdict"] = verdict_sentence(pair["overall"], i in changed, pair["change"], correction)
    return pairs


def _read_by_model(model, tokenizer, items, questions, outputs, scored, template, threshold) -> None:
    """The model reader (medical_r1.model_reader) on the answers the rules could not read, with the model as it
    answered (the caller sets the adapter); says how many it tried and read."""
    from medical_r1.model_reader import read_unreadable

    prompts = [{"question": q["question"], "options": item["options"]} for q, item in zip(questions, items)]
    found = read_unreadable(model, tokenizer, prompts, outputs, scored, template, threshold)
    if found["tried"]:
        print(f"model reader: {found['read']} of {found['tried']} answers the rules could not read were read by "
              f"the model at probability >= {threshold}")


def run_benchmarks(model, tokenizer, eval_data: dict, template: str, settings: GenerationSettings, backend: str,
                   similarity: bool = False, model_reader: float = 0):
    """Answer every benchmark item with the adapter off (base) and on (tuned), as `settings` say; score both the same
    way: the rules, then, where they read nothing and `model_reader` > 0, the model itself at that probability or
    above."""
    items, questions = benchmark_questions(eval_data)
    base, tuned = answer_base_and_tuned(model, tokenizer, questions, template, settings, backend)
    base_scored, tuned_scored = score_answers(items, base, similarity), score_answers(items, tuned, similarity)
    if model_reader:
        with model.disable_adapter():
            _read_by_model(model, tokenizer, items, questions, base, base_scored, template, model_reader)
        _read_by_model(model, tokenizer, items, questions, tuned, tuned_scored, template, model_reader)
    return base_scored, tuned_scored


def grpo_benchmarks(model, tokenizer, work_dir, base_name: str, eval_data: dict, template: str,
                    settings: GenerationSettings, backend: str, similarity: bool = False,
                    model_reader: float = 0) -> list[dict] | None:
    """07's adapter's answers to the same items, scored as the others, or None (saying why) when 07 has not run.
    The adapter loads beside 03's on the same base model (PEFT's `load_adapter`) and is switched off again after."""
    from medical_r1.artifacts import artifact, read_json

    grpo_dir = artifact(work_dir, "grpo_adapter")
    if not (grpo_dir / "adapter_config.json").exists():
        print(f"07 has not run in {work_dir} (no {grpo_dir.name}/): comparing base and SFT. Run 07, then 04 again, "
              "for the three-way table.")
        return None
    grpo_base = read_json(grpo_dir / "adapter_config.json")["base_model_name_or_path"]
    if grpo_base != base_name:
        raise ValueError(f"07's adapter ({grpo_dir}) was trained on {grpo_base}, 03's on {base_name}: run 07 again "
                         "with START_FROM = 'adapter' (or the same MODEL_NAME) before comparing them")
    adapter_dir = artifact(work_dir, "adapter")
    if grpo_dir.stat().st_mtime < adapter_dir.stat().st_mtime:
        print(f"note: 07's adapter is older than 03's ({adapter_dir.name}/ was written again after 07 ran), so "
              "SFT + GRPO below started from an earlier SFT adapter; run 07 again to compare like with like.")
    items, questions = benchmark_questions(eval_data)
    model.load_adapter(str(grpo_dir), adapter_name="grpo")
    model.set_adapter("grpo")
    try:
        answers = generate_answers(model, tokenizer, questions, template, settings, backend)
        scored = score_answers(items, answers, similarity)
        if model_reader:
            _read_by_model(model, tokenizer, items, questions, answers, scored, template, model_reader)
    finally:
        model.set_adapter("default")
    return scored


# benchmark_plan's warm-up: a 2-token answer to build the graphs and allocate, then a timed batch of real prompts
# writing exactly WARMUP_TOKENS each, greedy (its rate does not depend on the sampling).
WARMUP_TOKENS = 16
COMPILE_TOKENS = 2


def benchmark_plan(model, tokenizer, eval_data: dict, template: str, settings: GenerationSettings, backend: str,
                   rouge_items: int = 0) -> str:
    """Before the long cell: this GPU's generation rate from a short timed warm-up (one batch of the real
    prompts, WARMUP_TOKENS each, at settings.batch_size, chosen here if it is still 0), the time the
    benchmarks will take at most at that rate (every answer running to settings.max_new_tokens, base and tuned),
    and the interval width the chosen items give."""
    import time

    import torch

    items, questions = benchmark_questions(eval_data)
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
    prompts = 2 * (len(items) + rouge_items)
    processes = process_rank()[1]  # each writes a share of the batches (generate_answers)
    hours = prompts * settings.max_new_tokens / rate / 3600 / processes
    per_benchmark = min(len(v) for v in eval_data.values())
    half = lambda n: 1.96 * math.sqrt(0.25 / n)  # noqa: E731 (the 95% half-width at 50% accuracy)
    return (f"measured {rate:,.0f} generated tokens/s at batch {len(sample)}; {prompts} answers (base and tuned: "
            f"{len(items)} benchmark items, {rouge_items} ROUGE questions) of up to {settings.max_new_tokens} tokens "
            f"take at most {hours:.1f} h here{f' ({processes} processes)' if processes > 1 else ''}. "
            f"Intervals: +/-{100 * half(per_benchmark):.0f} points per benchmark "
            f"({per_benchmark} items), +/-{100 * half(len(items)):.0f} overall ({len(items)}); the smallest "
            f"difference this detects overall is about {100 * detectable_difference(len(items)):.0f} points.")
