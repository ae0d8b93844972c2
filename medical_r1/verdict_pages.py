"""The verdict pages 04 writes: base against tuned per benchmark (verdict.html), the pairs of base, SFT and
SFT + GRPO (verdict_pairs.html), and under each, how every model's answers were read (which rule of
medical_r1.scorer, the model reader, or none), so that a change of answering style shows beside the verdict.
"""
from __future__ import annotations

import html

from medical_r1.benchmarks import MODELS, RULES
from medical_r1.display import html_page, verdict_class

# What each rule means, in the words of the page's column headings.
RULE_NAMES = {"answer_is": "stated", "marked_letter": "bold or bracketed letter", "standalone_letter": "letter",
              "option_text": "option text", "model_extracted": "read by the model", "similarity": "by similarity",
              "unreadable": "unreadable", "unfinished": "unfinished"}


def reading_html(counts: dict[str, dict]) -> str:
    """A table: per model (name -> its rule counts), how many answers each rule read; rules no model used are left
    out, except the two kinds of no answer."""
    shown = [r for r in RULES if r in ("unreadable", "unfinished") or any(c.get(r) for c in counts.values())]
    head = "".join(f"<th>{html.escape(RULE_NAMES[r])}</th>" for r in shown)
    body = "".join(f"<tr><td class='label'>{html.escape(name)}</td>"
                   + "".join(f"<td class='num'>{c.get(r, 0)}</td>" for r in shown) + "</tr>"
                   for name, c in counts.items())
    return ("<h3>How the answers were read</h3><p>Per model, how many answers each rule read: a stated answer (\"the "
            "answer is C\", \\boxed{C}, 选C, a verdict or an answer line), a marked or lone letter, an option's text, "
            "the model reading its own answer where the rules found none (zero-shot answer extraction, counted only "
            "at its threshold), or none. A fine-tuned model that answers in prose moves answers between these "
            "columns; many unreadable answers make any accuracy here doubtful.</p>"
            f"<div class='scroll'><table><tr><th>model</th>{head}</tr>{body}</table></div>")


def pairs_html(pairs: list[dict]) -> str:
    """One row per pair of models, overall; the per-benchmark tables are in each pair's rows."""
    def cells(pair):
        o = pair["overall"]
        said = pair["verdict"].split(" (")[0]
        lo, hi = o["difference_interval"]
        return (f"<tr><td class='label'>{MODELS[pair['before']]} &rarr; {MODELS[pair['after']]}</td>"
                f"<td class='num'>{o['items']}</td>"
                f"<td class='num'>{100 * o['base_accuracy']:.1f}%</td><td class='num'>{100 * o['tuned_accuracy']:.1f}%</td>"
                f"<td class='num'>{100 * o['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]</td>"
                f"<td class='verdict {verdict_class(said)}' title='{html.escape(pair['verdict'], quote=True)}'>"
                f"{html.escape(said)} <span class='same'>(paired p = {o['p_value']:.2g})</span></td></tr>")

    counts = {}
    for pair in pairs:
        for side, model in (("base", pair["before"]), ("tuned", pair["after"])):
            counts.setdefault(MODELS[model], pair["overall"][f"{side}_rules"])
    return html_page("Base, SFT and SFT + GRPO", (
        "<h2>Base, SFT and SFT + GRPO: a row per pair</h2><p>The same benchmark items, answered by each model "
        "that exists in this work folder. Each row is one pair's overall comparison, from the exact paired test, "
        "corrected for testing several pairs at once (Holm). Unfinished and unreadable answers count as wrong.</p>"
        "<div class='scroll'><table><tr><th>pair</th><th>items</th><th>accuracy before</th><th>accuracy after</th>"
        f"<th>difference, points [95%]</th><th>verdict</th></tr>{''.join(cells(p) for p in pairs)}</table></div>"
        + reading_html(counts)))


def verdict_html(rows: list[dict]) -> str:
    def pct(x):
        return f"{100 * x:.1f}%"

    def model_cells(r, model):
        lo, hi = r[f"{model}_interval"]
        similar = f" (+{r[f'{model}_similarity']} by similarity)" if r[f"{model}_similarity"] else ""
        similar += f" (+{r[f'{model}_model_extracted']} read by the model)" if r[f"{model}_model_extracted"] else ""
        return (f"<td class='num'>{r[f'{model}_correct']}</td>"
                f"<td class='num'>{r[f'{model}_unfinished']} / {r[f'{model}_unreadable']}{similar}</td>"
                f"<td class='num'>{pct(r[f'{model}_accuracy'])} [{100 * lo:.1f}, {100 * hi:.1f}]</td>")

    def verdict_cell(r):
        said = r["verdict"].split(" (")[0]
        corrected = "" if r["benchmark"] == "all" else "; verdict Holm-corrected"
        return (f"<td class='verdict {verdict_class(said)}' title='{html.escape(r['verdict'], quote=True)}'>"
                f"{html.escape(said)} <span class='same'>(paired p = {r['p_value']:.2g}{corrected})</span></td>")

    overall = rows[-1]  # "all", the last row verdict_rows writes
    body = "".join(
        f"<tr><td>{html.escape(r['benchmark'])}</td><td class='num'>{r['items']}</td>{model_cells(r, 'base')}"
        f"{model_cells(r, 'tuned')}<td class='num'>{100 * r['difference']:+.1f} "
        f"[{100 * r['difference_interval'][0]:+.1f}, {100 * r['difference_interval'][1]:+.1f}]</td>"
        f"<td class='num'>{100 * r['detectable_difference']:.0f} points</td>{verdict_cell(r)}</tr>" for r in rows)
    per_model = "<th>correct</th><th>unfinished / unreadable</th><th>accuracy, % [95%]</th>"
    return html_page("Did fine-tuning help?", (
        "<h2>Did fine-tuning help?</h2><p>Unfinished: still thinking when the token limit came. Unreadable: "
        "the answer commits to no single option, and the model reading its own answer was not sure enough either. "
        "Both count as wrong and are never guessed. Detectable: the smallest "
        "difference, in points of accuracy, this many items detect with 80% power.</p><p>Read the last row (all) "
        "first: it is the headline, from an exact paired test at 5%. The per-benchmark rows are corrected for "
        "testing several benchmarks at once (Holm), so that when fine-tuning changed nothing the chance that any row "
        "says helped or hurt stays at 5%; a benchmark row that says no detectable change may still differ, by "
        "less than this many items can show. The intervals are each benchmark's own 95% intervals.</p>"
        "<div class='scroll'><table><tr><th rowspan='2'>benchmark</th>"
        "<th rowspan='2'>items</th><th colspan='3'>base model</th><th colspan='3'>fine-tuned</th>"
        "<th rowspan='2'>difference, points [95%]</th><th rowspan='2'>detectable</th><th rowspan='2'>verdict</th>"
        f"</tr><tr>{per_model}{per_model}</tr>{body}</table></div>"
        + reading_html({"base model": overall["base_rules"], "fine-tuned": overall["tuned_rules"]})))
