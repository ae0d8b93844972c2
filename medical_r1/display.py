"""Figures and tables the notebooks show; PNGs are written like every other artifact.
"""
from __future__ import annotations

import os
import pathlib
import re

from medical_r1.runtime import is_main_process


def new_figure(columns: int = 1, size: tuple[float, float] | None = None):
    """A figure of `columns` plots side by side (7 x 3.5 inches each), or of `size` inches."""
    import matplotlib

    matplotlib.use("Agg")  # headless: papermill, Kaggle's "Save & Run All", CI
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=size or (7 * columns, 3.5))


def save_figure(fig, path) -> pathlib.Path:
    """Write the PNG under a temporary name and rename it, like every other artifact."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_histogram(lengths: list[int], max_seq_length: int, path) -> pathlib.Path:
    fig, ax = new_figure()
    ax.hist(lengths, bins=min(50, max(5, len(lengths) // 4)), color="#4c72b0")
    ax.axvline(max_seq_length, color="#c44e52", linestyle="--", label=f"max_seq_length = {max_seq_length}")
    ax.set_xlabel("tokens per example (prompt + CoT + response + eos)")
    ax.set_ylabel("examples")
    ax.legend()
    return save_figure(fig, path)


def plot_loss_curve(history: dict, path) -> pathlib.Path:
    fig, ax = new_figure()
    if history["train"]:
        ax.plot(*zip(*history["train"]), label="train loss", color="#4c72b0")
    if history["eval"]:
        ax.plot(*zip(*history["eval"]), "o-", label="val loss", color="#c44e52")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (CoT + response tokens)")
    ax.legend()
    return save_figure(fig, path)


def stats_table(stats: dict):
    import pandas as pd

    return pd.DataFrame(stats).T[["count", "mean", "median", "p90", "p99", "max"]]


def answers_table(answers: list[dict]):
    import pandas as pd

    return pd.DataFrame([{"question": a["question"][:80], "answer": a["answer"][:300] or "(no </think>: "
                          "ran out of tokens)", "new tokens": a["new_tokens"]} for a in answers])


def show_image(path):
    """Display a saved figure (on the first process only: the others wrote none)."""
    from IPython.display import Image, display

    if is_main_process():
        display(Image(filename=str(path)))


def show_html(path):
    """Display a saved page (on the first process only: the others wrote none)."""
    from IPython.display import HTML, display

    if is_main_process():
            display(HTML(pathlib.Path(path).read_text(encoding="utf-8")))


# One stylesheet for the pages people share (verdict.html, comparison.html, sweep.html). On a desktop, tables with
# numbers aligned and verdicts in coloured cells; on a phone (under 700 px) each row of a `table_html` table becomes
# a card: its name, then its verdict and difference, then the rest, each value under its column's label, so that
# nothing that matters sits off-screen in a box that scrolls sideways. Names and answers wrap anywhere when they
# must (a setting's long name, a URL or a drug list without spaces), so that one long string never widens a table
# past the window. The font stack names CJK fonts, so that Chinese answers draw where the system font has none.
PAGE_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", "Noto Sans SC",
       "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", sans-serif;
       margin: 1.5rem auto; max-width: 90rem; padding: 0 1rem; color: #1f2328; }
h2 { font-size: 1.4rem; margin: 0 0 .5rem; } h3 { font-size: 1.1rem; margin: 1.2rem 0 .4rem; }
p { max-width: 50rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { border: 1px solid #d0d7de; padding: .3rem .45rem; vertical-align: top; text-align: left; }
td.key { min-width: 8rem; max-width: 18rem; overflow-wrap: anywhere; }
th { background: #f6f8fa; font-weight: 600; }
td.num, td.diff { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { white-space: pre-wrap; min-width: 16rem; max-width: 36rem; overflow-wrap: anywhere; }
td.verdict { min-width: 12.5rem; overflow-wrap: anywhere; }
details.thinking summary { cursor: pointer; color: #57606a; }
details.thinking .thought { color: #57606a; border-left: 3px solid #d0d7de; padding-left: .5rem; }
td.num .wrap { white-space: normal; display: inline-block; min-width: 8rem; }
td.label { min-width: 9rem; overflow-wrap: normal; }
.helped { color: #1a7f37; font-weight: 600; } .hurt { color: #cf222e; font-weight: 600; } .same { color: #57606a; }
td.verdict.helped { background: #dafbe1; } td.verdict.hurt { background: #ffebe9; }
td.verdict.same { background: #f6f8fa; }
img { max-width: 100%; height: auto; }
@media (max-width: 700px) {
  .scroll { overflow-x: visible; }
  table.cards, table.cards tbody { display: block; }
  table.cards tr.head { display: none; }
  table.cards tr { display: flex; flex-direction: column; border: 1px solid #d0d7de; border-radius: 6px;
                   margin: 0 0 .75rem; padding: .3rem .6rem; }
  table.cards td { display: block; border: none; padding: .12rem 0; text-align: left; white-space: normal;
                   min-width: 0; max-width: none; }
  table.cards td[data-label]::before { content: attr(data-label) ": "; color: #57606a; font-weight: 600; }
  table.cards td.key { order: -3; font-weight: 600; font-size: 1.05em; }
  table.cards td.key::before { content: none; }
  table.cards td.verdict { order: -2; padding: .3rem .4rem; border-radius: 4px; }
  table.cards td.diff { order: -1; }
}
"""


def table_html(labels: list[str], rows: list[list[tuple[str, str]]], head: str = "") -> str:
    """A table on a desktop, a card per row on a phone (PAGE_STYLE): every cell carries its column's label.
    rows: per row, (css class, inner HTML) per column, the classes "key" (the row's name, shown first on a
    phone), "verdict" and "diff" (shown next), "num", "text" or "label". head: header rows (class "head") where
    one row of `labels` will not do, such as columns grouped under a model."""
    import html

    head = head or "<tr class='head'>" + "".join(f"<th>{html.escape(label)}</th>" for label in labels) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td class='{css}' data-label='{html.escape(label, quote=True)}'>{inner}</td>"
                                    for label, (css, inner) in zip(labels, row)) + "</tr>" for row in rows)
    return f"<div class='scroll'><table class='cards'>{head}{body}</table></div>"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def percent_with_interval(x: float, interval, prefix: str = "") -> str:
    """ "40.0%" (after `prefix`) over its 95% interval, a line each, so that a table of them fits a desktop."""
    return f"{prefix}{percent(x)}<br><span class='same'>[{percent(interval[0])}, {percent(interval[1])}]</span>"


def points(difference: float, interval) -> str:
    """A difference of accuracies in points over its 95% interval, a line each."""
    return (f"{100 * difference:+.1f} points<br><span class='same'>[{100 * interval[0]:+.1f}, "
            f"{100 * interval[1]:+.1f}]</span>")


def plural(count: int, word: str) -> str:
    """ "1 token", "2,048 tokens"."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


CJK_CHARACTER = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def thought_length(thinking: str, tokens: int | None = None) -> str:
    """How long a model thought: in tokens where they were counted; else in characters for Chinese (no spaces
    between words) and in words otherwise."""
    if tokens is not None:
        return plural(tokens, "token")
    words = len(thinking.split())
    cjk = len(CJK_CHARACTER.findall(thinking))
    return plural(len("".join(thinking.split())), "character") if cjk > words else plural(words, "word")


def thinking_fold_html(output: str) -> str:
    """A model's output as a page shows it: the thinking folded (closed) in a <details> block whose summary says
    how long it is, without R1's <think> tags, and the answer after the last </think> (the scorer's rule,
    src_helpers.split_thinking) under it. An output that never closed its thinking says it has no answer."""
    import html

    from src_helpers import split_thinking

    thinking, answer, finished = split_thinking(output)
    thinking = thinking.removeprefix("<think>").strip()
    length = thought_length(thinking)
    summary = f"Thought for {length}" if finished else f"Still thinking at the token limit ({length}): no answer"
    return (f"<details class='thinking'><summary>{summary}</summary><div class='thought'>{html.escape(thinking)}</div>"
            f"</details><div class='answer'>{html.escape(answer)}</div>")


# Said where a difference's interval still spans every difference: "±100 points" would say nothing.
TOO_FEW_ITEMS = "too few items to detect any change"


def detectable(difference: float) -> str:
    """The cell for the largest change the items leave open (a fraction, sequential.largest_open_change): points,
    or, where it reaches 100 points, what is true: TOO_FEW_ITEMS."""
    if difference >= 1:
        return f"<span class='wrap'>{TOO_FEW_ITEMS}</span>"
    return f"{100 * difference:.0f} points"


def html_page(title: str, body: str) -> str:
    """A whole page: viewport for phones, the shared stylesheet, then `body`."""
    import html

    return ("<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>{body}</body></html>")


def verdict_class(sentence: str) -> str:
    """The colour class of a verdict: helped, hurt, or same (no detectable change)."""
    said = sentence.lower().split(" (")[0]  # "fine-tuning helped", "GRPO hurt", "better than base", ...
    return "helped" if said.endswith("helped") or said.startswith("better") else \
        "hurt" if said.endswith("hurt") or said.startswith("worse") else "same"
