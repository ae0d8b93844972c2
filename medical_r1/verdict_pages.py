"""The verdict pages 04 writes: base against tuned per benchmark (verdict.html), the pairs of base, SFT and
SFT + GRPO (verdict_pairs.html), and under each, how every model's answers were read (which rule of
medical_r1.scorer, the model reader, or none), so that a change of answering style shows beside the verdict.
"""
from __future__ import annotations

import html

from medical_r1.benchmarks import MODELS, RULES
from medical_r1.display import detectable, html_page, percent, percent_with_interval, points, table_html, verdict_class
from medical_r1.sequential import largest_open_change

# What each rule means, in the words of the page's column headings.
RULE_NAMES = {"answer_is": "stated", "marked_letter": "bold or bracketed letter", "standalone_letter": "letter",
              "option_text": "option text", "model_extracted": "read by the model", "similarity": "by similarity",
              "unreadable": "unreadable", "abstained": "abstained", "unfinished": "unfinished"}


def short_benchmark(name: str) -> str:
    """A benchmark's name as a reader says it ("MedQA USLME", "GPQA Medical"): no split suffix, spaces for _."""
    for split in ("_test", "_validation"):
        name = name.removesuffix(split)
    return name.replace("_", " ")


def accuracy(correct: int, acc: float, interval) -> str:
    """ "12 right, 40.0%" over its interval."""
    return percent_with_interval(acc, interval, f"{correct} right, ")


def verdict_cell(row: dict) -> tuple[str, str]:
    """The row's verdict, coloured, with the level its anytime-valid interval holds at (its share of the 5%)."""
    said = row["verdict"].split(" (")[0]
    return (f"verdict {verdict_class(said)}' title='{html.escape(row['verdict'], quote=True)}",
            f"{html.escape(said)} <span class='same'>(at {100 * (1 - row['alpha']):.1f}%)</span>")


def outcome_html(outcome: str) -> str:
    """How 04 stopped, in one sentence: what was decided and at how many items, or why it stopped undecided."""
    return f"<p class='measured'><strong>{html.escape(outcome)}</strong></p>" if outcome else ""


def reading_html(counts: dict[str, dict]) -> str:
    """A table: per model (name -> its rule counts), how many answers each rule read; rules no model used are left
    out, except the two kinds of no answer."""
    no_answer = ("unreadable", "abstained", "unfinished")
    shown = [r for r in RULES if r in no_answer or any(c.get(r) for c in counts.values())]
    rows = [[("key", html.escape(name))] + [("num", str(c.get(r, 0))) for r in shown] for name, c in counts.items()]
    return ("<h3>How the answers were read</h3><p>Per model, how many answers each rule read: a stated answer (\"the "
            "answer is C\", \\boxed{C}, 选C, a verdict or an answer line), a marked or lone letter, an option's text, "
            "the model reading its own answer where the rules found none (zero-shot answer extraction, counted only "
            "at its threshold), or none. A fine-tuned model that answers in prose moves answers between these "
            "columns; many unreadable answers make any accuracy here doubtful.</p>"
            + table_html(["model"] + [RULE_NAMES[r] for r in shown], rows))


def pairs_html(pairs: list[dict], outcome: str = "") -> str:
    """One row per pair of models, overall; the per-benchmark tables are in each pair's rows."""
    rows, counts = [], {}
    for pair in pairs:
        o = pair["overall"]
        rows.append([("key label", f"{MODELS[pair['before']]} &rarr; {MODELS[pair['after']]}"),
                     ("num", f"{o['items']}"), ("num", percent(o["base_accuracy"])), ("num", percent(o["tuned_accuracy"])),
                     ("diff", points(o["difference"], o["difference_interval"])),
                     verdict_cell(o)])
        for side, model in (("base", pair["before"]), ("tuned", pair["after"])):
            counts.setdefault(MODELS[model], o[f"{side}_rules"])
    labels = ["pair", "items", "accuracy before", "accuracy after", "difference [anytime-valid]", "verdict"]
    return html_page("Base, SFT and SFT + GRPO", (
        "<h2>Base, SFT and SFT + GRPO: a row per pair</h2>" + outcome_html(outcome) + "<p>The same benchmark "
        "items, in the same rounds, answered by each model that exists in this work folder. Each row is one pair's "
        "overall comparison; its interval is a confidence sequence, valid whenever 04 stopped, and the pairs share "
        "the 5% chance of a false claim. Unfinished and unreadable answers count as wrong.</p>"
        + table_html(labels, rows) + reading_html(counts)))


def verdict_html(rows: list[dict], outcome: str = "", with_grpo: bool = False) -> str:
    """The base model against SFT (03), a row per benchmark; with 07's adapter compared too (`with_grpo`), a pointer
    to the page of every pair, since the sentence above the table then speaks of all three."""
    def model_cells(r, model):
        no_answer = f"{r[f'{model}_unfinished']} unfinished,<br>{r[f'{model}_unreadable']} unreadable"
        no_answer += f",<br>{r[f'{model}_abstained']} abstained" if r.get(f"{model}_abstained") else ""
        no_answer += f" (+{r[f'{model}_similarity']} by similarity)" if r[f"{model}_similarity"] else ""
        no_answer += f" (+{r[f'{model}_model_extracted']} read by the model)" if r[f"{model}_model_extracted"] else ""
        return [("num", accuracy(r[f"{model}_correct"], r[f"{model}_accuracy"], r[f"{model}_interval"])),
                ("num", no_answer)]

    body = []
    for r in rows:
        name = "all benchmarks" if r["benchmark"] == "all" else short_benchmark(r["benchmark"])
        body.append([(f"key' title='{html.escape(r['benchmark'], quote=True)}", html.escape(name)),
                     ("num", f"{r['items']}")] + model_cells(r, "base") + model_cells(r, "tuned") +
                    [("diff", points(r["difference"], r["difference_interval"])),
                     ("num", detectable(largest_open_change(r['difference_interval']))),
                     verdict_cell(r)])
    labels = ["benchmark", "items", "base: accuracy [95%]", "base: no answer", "fine-tuned: accuracy [95%]",
              "fine-tuned: no answer", "difference [anytime-valid]", "largest change left open", "verdict"]
    head = ("<tr class='head'><th rowspan='2'>benchmark</th><th rowspan='2'>items</th><th colspan='2'>base model</th>"
            "<th colspan='2'>fine-tuned</th><th rowspan='2'>difference [anytime-valid]</th>"
            "<th rowspan='2'>largest change left open</th>"
            "<th rowspan='2'>verdict</th></tr><tr class='head'>" + "<th>accuracy [95%]</th><th>no answer</th>" * 2 +
            "</tr>")
    overall = rows[-1]  # "all", the last row verdict_rows writes
    return html_page("Did fine-tuning help?", (
        "<h2>Did fine-tuning help?</h2>" + outcome_html(outcome) +
        ("<p>This table is the base model against SFT (03); every pair with SFT + GRPO (07) is on "
         "<a href='verdict_pairs.html'>verdict_pairs.html</a>.</p>" if with_grpo else "") +
        "<p>Unfinished: still thinking when the token "
        "limit came. Unreadable: the answer commits to no single option, and the model reading its own answer was "
        "not sure enough either. Both count as wrong and are never guessed.</p><p>Read the last row (all) first: it "
        "is the headline. Each difference's interval is a confidence sequence: it holds however many rounds 04 "
        "looked at and whenever it stopped, so stopping early raises no false claims. The headline spends half of "
        "a 5% chance of a false claim and the benchmark rows share the other half (once 07 has run, the three pairs "
        "share the 5%; each verdict says its level), so that when fine-tuning changed nothing the chance that any "
        "row says helped or hurt stays at 5%. Largest change left open: the farthest end of the interval from zero; a "
        "row not decided may still differ, by less than that.</p>"
        + table_html(labels, body, head)
        + reading_html({"base model": overall["base_rules"], "fine-tuned": overall["tuned_rules"]})))
