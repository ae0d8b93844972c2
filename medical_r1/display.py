"""Figures and tables the notebooks show; PNGs are written like every other artifact.
"""
from __future__ import annotations

import os
import pathlib

from medical_r1.runtime import is_main_process


def new_figure():
    import matplotlib

    matplotlib.use("Agg")  # headless: papermill, Kaggle's "Save & Run All", CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 3.5))


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
    from IPython.display import HTML, display

    display(HTML(pathlib.Path(path).read_text(encoding="utf-8")))
