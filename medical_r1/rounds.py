"""04's benchmarks in rounds, for as long as the person has: each round one generation batch (one per process) of
the same items for every model compared, the verdict updated after it, and a stop as soon as the answer is decided
or the time budget is spent. Valid however early it stops: the intervals are confidence sequences
(medical_r1.sequential). Resumable: every model's answers to every round are appended to WORK_DIR/eval/answers.jsonl
as they are written, and a rerun replays them and goes on from where it stopped, reaching the verdict an
uninterrupted run reaches (greedy decoding gives the same answers); a manifest beside them (eval/manifest.json)
refuses, naming it, a changed model, adapter, setting or evaluation file rather than mixing answers.
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import json
import math
import os
import pathlib
import random
import time

from medical_r1.artifacts import artifact, copy_from_kaggle_input, read_json, write_json
from medical_r1.benchmarks import MODELS, mc_question, pair_verdicts, read_with_model, score_answers
from medical_r1.generation import GenerationSettings, generate_answers
from medical_r1.runtime import agree_on_smallest, is_main_process, process_rank

DECIDE = {"headline": "every pair's overall row", "every": "every row, each benchmark and overall"}
ADAPTER_NAMES = {"tuned": "default", "grpo": "grpo"}  # the PEFT adapter each model is (base: the adapter off)


def check_stopping(minutes, max_items, decide) -> None:
    """EVAL_MINUTES, EVAL_ITEMS and EVAL_DECIDE, each refused by name when it cannot be used."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        raise ValueError(f"EVAL_MINUTES must be a positive number of minutes, got {minutes!r}")
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0:
        raise ValueError(f"EVAL_ITEMS must be 0 (every item) or a positive number of items at most, got {max_items!r}")
    if decide not in DECIDE:
        raise ValueError(f"EVAL_DECIDE must be one of {sorted(DECIDE)}, got {decide!r}")


def draw_order(eval_data: dict, seed: int, max_items: int = 0) -> list[dict]:
    """Every item once, in the order 04 answers them: each benchmark's items in its own seeded random order, then
    one of each benchmark in turn, so that every prefix holds the benchmarks about equally; the first `max_items`
    (0: all)."""
    shuffled = {}
    for name in sorted(eval_data):
        items = list(eval_data[name])
        random.Random(f"{seed}/{name}").shuffle(items)
        shuffled[name] = items
    order = [queue[i] for i in range(max(map(len, shuffled.values()))) for queue in shuffled.values()
             if i < len(queue)]
    return order[:max_items] if max_items else order


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part)
    return sha.hexdigest()[:16]


def folder_digest(folder) -> str:
    """A short hash of an adapter folder's weights and config: another training run gives another hash."""
    files = sorted(p for p in pathlib.Path(folder).iterdir() if p.is_file() and p.name.startswith("adapter_"))
    return _digest(*(p.name.encode() + p.read_bytes() for p in files))


def evaluation_manifest(base_model: str, adapters: dict, template: str, settings: GenerationSettings,
                        similarity: bool, model_reader: float, eval_data: dict) -> dict:
    """What the stored answers depend on: the base model, each adapter's hash (name -> folder), the template, the
    generation and reading settings, the evaluation items. Not EVAL_MINUTES, EVAL_ITEMS or EVAL_DECIDE (how long
    to go on: a rerun may give more) nor the batch size (the stored rounds keep their items)."""
    generation = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample, "seed": settings.seed,
                  **({"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {})}
    return {"base model": base_model, "adapters": {name: folder_digest(folder) for name, folder in adapters.items()},
            "template": template, "generation": generation, "similarity": similarity, "model reader": model_reader,
            "evaluation items": _digest(json.dumps(eval_data, sort_keys=True).encode())}


# The parameters behind the manifest's generation settings, for a refusal that names what to set back.
GENERATION_PARAMETERS = {"max_new_tokens": "EVAL_MAX_NEW_TOKENS", "do_sample": "EVAL_GREEDY (do_sample = not it)",
                         "seed": "SEED", "temperature": "TEMPERATURE", "top_p": "TOP_P"}
MANIFEST_PARAMETERS = {"base model": "MODEL_NAME (run.json)", "template": "TEMPLATE (run.json)",
                       "similarity": "EVAL_SIMILARITY", "model reader": "EVAL_MODEL_READER",
                       "evaluation items": "EVAL_DATA"}


def said_changed(key: str, before, now) -> str:
    """One manifest entry that differs, as a person sets it: "EVAL_GREEDY (do_sample = not it): was False, now
    True"."""
    if isinstance(before, dict) and isinstance(now, dict):
        return "; ".join(f"{GENERATION_PARAMETERS.get(k, k)}: was {before.get(k)!r}, now {now.get(k)!r}"
                         for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k))
    if key == "evaluation items":
        return "EVAL_DATA: another evaluation file"
    return f"{MANIFEST_PARAMETERS.get(key, key)}: was {before!r}, now {now!r}"


def check_manifest(work_dir, manifest: dict) -> None:
    """Refuse, naming what changed, to add answers to those stored under another manifest; record this one (an
    adapter new since, such as 07's, joins). The way out is in the message: the old answers, or a new WORK_DIR."""
    path = artifact(work_dir, "eval_manifest")
    if path.exists() or copy_from_kaggle_input(work_dir, "eval_manifest"):
        stored = read_json(path)
        changed = [said_changed(key, stored.get(key), manifest[key]) for key in manifest
                   if key != "adapters" and stored.get(key) != manifest[key]]
        changed += [f"{MODELS[name]}'s adapter (retrained since)" for name, digest in manifest["adapters"].items()
                    if stored["adapters"].get(name, digest) != digest]
        if changed:
            answers = artifact(work_dir, "eval_answers")
            raise ValueError(f"{answers} holds answers written with other settings: {'; '.join(changed)}. 04 does "
                             f"not mix them: set them back, or delete {answers.parent} (or choose another WORK_DIR) "
                             "to evaluate from the start")
        manifest = {**manifest, "adapters": {**stored["adapters"], **manifest["adapters"]}}
    write_json(path, manifest)


def read_answers(work_dir) -> dict:
    """{(round, model): record} from the answers file; a last line cut short by a stop mid-write is left out."""
    path = artifact(work_dir, "eval_answers")
    if not path.exists() and not copy_from_kaggle_input(work_dir, "eval_answers"):
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["round"], record["model"]] = record
    return records


def append_answers(work_dir, record: dict) -> None:
    """One finished batch's answers, on disk before the next batch starts (the first process writes)."""
    if not is_main_process():
        return
    path = artifact(work_dir, "eval_answers")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def answering_as(model, name: str):
    """The loaded model answering as `name`: the base model (its adapter switched off) or one of its adapters."""
    if name == "base":
        with model.disable_adapter():
            yield
        return
    model.set_adapter(ADAPTER_NAMES[name])
    try:
        yield
    finally:
        model.set_adapter("default")


def load_grpo_adapter(model, work_dir, base_name: str) -> pathlib.Path | None:
    """07's adapter loaded beside 03's on the same base model (PEFT's `load_adapter`), or None (saying why) when
    07 has not run; refused when it was trained on another base model."""
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
    model.load_adapter(str(grpo_dir), adapter_name="grpo")
    model.set_adapter("default")
    return grpo_dir


def is_decided(pairs: list[dict], decide: str) -> bool:
    """EVAL_DECIDE's question answered: 'headline', every pair's overall row decided; 'every', every row."""
    rows = [p["overall"] for p in pairs] if decide == "headline" else [r for p in pairs for r in p["rows"]]
    return bool(rows) and all(r["decided"] for r in rows)


class LiveTable:
    """One display that a round updates in place (Jupyter's display id), or a line per round outside a notebook."""

    def __init__(self):
        self.handle = None
        if not is_main_process():
            return
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and "IPKernelApp" in shell.config:  # a notebook's kernel, or a GPU process's shell
            from IPython.display import HTML, display

            self.handle = display(HTML("<p>04's first round is being answered...</p>"), display_id=True)

    def update(self, pairs: list[dict], items: int, seconds: float, budget_s: float) -> None:
        if not is_main_process():
            return
        left = max(0.0, budget_s - seconds) / 60
        clock = f"{items} items per model, {seconds / 60:.1f} of {budget_s / 60:g} min, {left:.1f} min left"
        if self.handle is None:
            said = "; ".join(f"{p['change']} {100 * p['overall']['difference']:+.1f} points "
                             f"[{100 * p['overall']['difference_interval'][0]:+.1f}, "
                             f"{100 * p['overall']['difference_interval'][1]:+.1f}]"
                             f"{' decided' if p['overall']['decided'] else ''}" for p in pairs)
            print(f"{clock}: {said}", flush=True)
            return
        from IPython.display import HTML

        self.handle.update(HTML(live_table_html(pairs, clock)))


def live_table_html(pairs: list[dict], clock: str) -> str:
    """The live table: per pair and benchmark, the items, both accuracies, the difference and its interval."""
    cells = "".join(
        f"<tr><td>{html.escape(MODELS[p['before']])} &rarr; {html.escape(MODELS[p['after']])}</td>"
        f"<td>{html.escape(r['benchmark'])}</td><td>{r['items']}</td><td>{100 * r['base_accuracy']:.1f}%</td>"
        f"<td>{100 * r['tuned_accuracy']:.1f}%</td><td>{100 * r['difference']:+.1f} "
        f"[{100 * r['difference_interval'][0]:+.1f}, {100 * r['difference_interval'][1]:+.1f}]</td>"
        f"<td>{html.escape(r['verdict'].split(' (')[0])}</td></tr>" for p in pairs for r in p["rows"])
    return (f"<p><b>{html.escape(clock)}</b></p><table><tr><th>pair</th><th>benchmark</th><th>items</th>"
            "<th>accuracy before</th><th>accuracy after</th><th>difference [anytime 95%]</th><th>so far</th></tr>"
            f"{cells}</table>")


def evaluate_in_rounds(model, tokenizer, order: list[dict], template: str, settings: GenerationSettings,
                       backend: str, work_dir, models: tuple[str, ...], minutes: float, decide: str = "headline",
                       similarity: bool = False, model_reader: float = 0, alpha: float = 0.05) -> dict:
    """Answer `order` (draw_order) in rounds of settings.batch_size items per process, by every one of `models`
    ("base", "tuned", "grpo"), replaying the rounds stored in WORK_DIR first; after each round the pairs' verdicts
    (pair_verdicts) and the live table; stop when EVAL_DECIDE's question is decided, before a round that would not
    fit the budget of `minutes` (time spent in earlier runs counts), or when `order` is used up. The caller checks
    the manifest first (check_manifest). Returns the scored answers per model, the pairs, and why it stopped."""
    stored = read_answers(work_dir)
    round_ids = {r: [a["id"] for a in record["answers"]] for (r, _), record in stored.items()}
    if stored:  # a rerun after a stop: say what is reused before the table jumps ahead
        print(f"continuing: {len(round_ids)} round{'s' * (len(round_ids) != 1)} already answered "
              f"({sum(len(ids) for ids in round_ids.values())} items per model, "
              f"{sum(r['seconds'] for r in stored.values()) / 60:.1f} of the {minutes:g} minutes) are read back from "
              f"{artifact(work_dir, 'eval_answers')}; new rounds go on from there")
    by_id = {item["id"]: item for item in order}
    spent = sum(record["seconds"] for record in stored.values())
    budget_s, round_s = 60 * minutes, 0.0
    scored = {name: [] for name in models}
    table, pairs, number, position, stopped = LiveTable(), [], 0, 0, "items"
    round_items = settings.batch_size * process_rank()[1]
    while True:
        if number in round_ids:
            items = [by_id[i] for i in round_ids[number] if i in by_id]
            if len(items) < len(round_ids[number]) and number:
                break  # a stored round beyond EVAL_ITEMS: this run stops where its items end
            if len(items) < len(round_ids[number]):
                raise ValueError(f"EVAL_ITEMS holds fewer items than the first round stored in {work_dir}/eval "
                                 f"({len(round_ids[number])}): raise EVAL_ITEMS, or delete eval/ to start over")
        else:
            items = order[position:position + round_items]
        if not items:
            break
        if number and any((number, name) not in stored for name in models) and \
                agree_on_smallest(math.floor(budget_s - spent - round_s)) < 0:  # one choice in every process
            stopped = "budget"
            break
        round_s = 0.0
        for name in models:
            record = stored.get((number, name))
            if record is None:
                record = answer_round(model, tokenizer, items, name, number, template, settings, backend,
                                      similarity, model_reader)
                append_answers(work_dir, record)
                spent += record["seconds"]
                round_s += record["seconds"]
            scored[name] += record["scored"]
        position += len(items)
        number += 1
        pairs = pair_verdicts(scored, alpha)
        table.update(pairs, len(scored[models[0]]), spent, budget_s)
        if is_decided(pairs, decide):
            stopped = "decided"
            break
    return {"scored": scored, "pairs": pairs, "items": len(scored[models[0]]), "rounds": number,
            "minutes": spent / 60, "budget_minutes": minutes, "stopped": stopped, "decide": decide,
            "outcome": outcome_sentence(pairs, stopped, len(scored[models[0]]), minutes, decide)}


def answer_round(model, tokenizer, items, name, number, template, settings, backend, similarity, model_reader):
    """One round's answers by one model, scored (by the rules, then where they read nothing the model itself)."""
    questions = [{"id": item["id"], "question": mc_question(item)} for item in items]
    start = time.perf_counter()
    with answering_as(model, name):
        outputs = generate_answers(model, tokenizer, questions, template, settings.replace(seed=settings.seed + number),
                                   backend)
        scored = score_answers(items, outputs, similarity)
        if model_reader:
            read_with_model(model, tokenizer, items, questions, outputs, scored, template, model_reader)
    answers = [{k: out[k] for k in ("id", "output", "new_tokens", "finished_thinking")} for out in outputs]
    return {"round": number, "model": name, "seconds": time.perf_counter() - start, "answers": answers,
            "scored": scored}


def stopping_record(evaluation: dict) -> dict:
    """What the verdict page, compare_metrics.json and W&B keep of how 04 stopped: the items per model, the rounds,
    the minutes spent and budgeted, why it stopped, what it waited for, and the sentence."""
    return {k: evaluation[k] for k in ("items", "rounds", "minutes", "budget_minutes", "stopped", "decide", "outcome")}


STOPS = {"decided": "decided", "budget": "the budget of {minutes:g} minutes ran out",
         "items": "every item drawn was answered (EVAL_ITEMS)"}


def outcome_sentence(pairs: list[dict], stopped: str, items: int, minutes: float, decide: str) -> str:
    """What 04 decided, in one sentence, and at how many items; undecided, why it stopped and the largest change
    the data leave open."""
    rows = [p["overall"] for p in pairs] if decide == "headline" else [r for p in pairs for r in p["rows"]]
    said = "; ".join(p["verdict"].split(" (")[0] + ("" if p["overall"]["decided"] else f" from {p['change']}")
                     for p in pairs) or "nothing compared"
    if stopped == "decided":
        return f"Decided at {items} items per model: {said}."
    undecided = sum(not r["decided"] for r in rows)
    return (f"Not decided ({undecided} of {len(rows)} {'headlines' if decide == 'headline' else 'rows'} open) when "
            f"{STOPS[stopped].format(minutes=minutes)}, at {items} items per model: {said}.")
