"""Which settings hurt least? A grid of settings as data, one row per setting, one page for all of them.

A grid file (recipes/sweeps/NAME.json) holds either `grid` (parameter -> list of values: every combination
is a setting) or `settings` (a list of {"name", "parameters"}), or both, and optionally `parameters` that every
setting shares (for example one EVAL_MINUTES: every setting's evaluation gets the same time budget).
scripts/sweep.py runs 01 and 02 once per model, then 03 and 04 once per setting in its own folder on a copy of that model's data, so every row has
the same validation split, benchmark items and seed. A named setting with `"grpo": true` runs 07 between 03 and
04, and its row compares the base model with SFT + GRPO. This module reads the grid, names the settings, turns a
finished setting's files into its row, and draws the page.
"""
from __future__ import annotations

import html
import itertools
import json
import pathlib
import re

from medical_r1.artifacts import artifact, read_json, write_json, write_text
from medical_r1.display import (html_page, new_figure, percent_with_interval, plural, points, save_figure,
                                table_html, verdict_class)
from medical_r1.sequential import decided, difference_interval

# Parameters that change what 02 produces: settings that differ in these need their own data preparation.
DATA_PARAMETERS = ("MODEL_NAME", "DATASET_NAME", "DATA_CONFIG", "MAX_EXAMPLES", "VAL_SIZE", "TEMPLATE",
                   "MAX_SEQ_LENGTH", "COMPLETION_ONLY_LOSS", "SEED")
ROW_FILE = "sweep_row.json"  # in a setting's folder once it has finished, with its numbers or its error


class GridError(ValueError):
    pass


def setting_name(parameters: dict) -> str:
    """A folder name that says what the setting changes, e.g. learning_rate-2e-05_max_steps-60."""
    parts = [f"{name.lower()}-{value}" for name, value in parameters.items()]
    return re.sub(r"[^\w.+-]", "_", "_".join(parts)) or "defaults"


def load_grid(path) -> dict:
    """The grid file, validated: {"name", "description", "parameters", "settings": [{"name", "parameters"}]},
    where the settings are the explicit ones followed by every combination of `grid`, and "parameters" are
    those every setting shares (a setting's own win)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise GridError(f"no grid file {path}: see recipes/sweeps/ for the format")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GridError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err
    settings = []
    for i, setting in enumerate(spec.get("settings", [])):
        if not isinstance(setting, dict) or not isinstance(setting.get("parameters"), dict):
            raise GridError(f"{path}: settings[{i}] must be an object with a 'parameters' object")
        if not isinstance(setting.get("grpo", False), bool):
            raise GridError(f"{path}: settings[{i}]'s 'grpo' must be true or false (true runs 07 after 03)")
        settings.append({"name": setting.get("name") or setting_name(setting["parameters"]),
                         "parameters": setting["parameters"], "grpo": setting.get("grpo", False)})
    grid = spec.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise GridError(f"{path}: 'grid' must map parameter names to non-empty lists of values")
    for values in itertools.product(*grid.values()) if grid else []:
        parameters = dict(zip(grid, values))
        settings.append({"name": setting_name(parameters), "parameters": parameters, "grpo": False})
    if not settings:
        raise GridError(f"{path} defines no setting: give 'grid' or 'settings'")
    names = [s["name"] for s in settings]
    if len(set(names)) != len(names):
        raise GridError(f"{path}: two settings share a name: {sorted(n for n in names if names.count(n) > 1)}")
    shared = spec.get("parameters", {})
    if not isinstance(shared, dict):
        raise GridError(f"{path}: 'parameters' must be an object of the parameters every setting shares")
    for s in [{"name": "parameters", "parameters": shared}, *settings]:
        bad = [k for k in s["parameters"] if not re.fullmatch(r"[A-Z][A-Z0-9_]*", k)]
        if bad:
            raise GridError(f"{path}: setting {s['name']!r} sets {bad}; parameters are the notebooks' UPPER_CASE names")
    return {"name": spec.get("name", path.stem), "description": spec.get("description", ""), "parameters": shared,
            "settings": settings}


def data_key(parameters: dict) -> str:
    """The data preparation a setting needs (settings with the same key share 01's and 02's outputs)."""
    return setting_name({k: parameters[k] for k in DATA_PARAMETERS if k in parameters})


def count_rules(scored: list[dict], rules: tuple[str, ...]) -> int:
    return sum(s["rule"] in rules for s in scored)


def setting_row(name: str, parameters: dict, work_dir, grpo: bool = False) -> dict:
    """A finished setting's row, read from the files 03, 07 and 04 wrote in its folder. With `grpo` the tuned
    model is SFT + GRPO (04's base -> SFT + GRPO pair); its validation loss is not measured (04's is SFT's)."""
    verdict = read_json(artifact(work_dir, "verdict"))
    overall, stopping = next(r for r in verdict["rows"] if r["benchmark"] == "all"), verdict.get("stopping")
    compare = read_json(artifact(work_dir, "compare_metrics"))
    train = read_json(artifact(work_dir, "train_metrics"))
    if grpo:
        pairs = read_json(artifact(work_dir, "verdict_pairs"))
        overall = next(p["overall"] for p in pairs["pairs"] if (p["before"], p["after"]) == ("base", "grpo"))
        verdict = {"base": verdict["base"], "tuned": pairs["grpo"]}
        compare = {**compare, "tuned_val_loss": None}
        train = {**train, "train_runtime_s": train["train_runtime_s"] +
                 (read_json(artifact(work_dir, "grpo_metrics")).get("train_runtime_s") or 0)}
    return {
        "name": name, "parameters": parameters, "error": None, "tuned_model": "SFT + GRPO" if grpo else "SFT",
        "items": overall["items"],
        "base_accuracy": overall["base_accuracy"], "base_interval": overall["base_interval"],
        "tuned_accuracy": overall["tuned_accuracy"], "tuned_interval": overall["tuned_interval"],
        "difference": overall["difference"], "difference_interval": overall["difference_interval"],
        "verdict": overall["verdict"], "stopping": stopping,
        # right or wrong per item, in the order answered, both models: the page re-reads the interval at its level
        "base_right": [s["correct"] for s in verdict["base"]], "tuned_right": [s["correct"] for s in verdict["tuned"]],
        "base_unfinished": count_rules(verdict["base"], ("unfinished",)),
        "tuned_unfinished": count_rules(verdict["tuned"], ("unfinished",)),
        "base_unreadable": count_rules(verdict["base"], ("empty", "unreadable", "abstained")),
        "tuned_unreadable": count_rules(verdict["tuned"], ("empty", "unreadable", "abstained")),
        "base_val_loss": compare["base_val_loss"], "tuned_val_loss": compare["tuned_val_loss"],
        "train_runtime_s": train["train_runtime_s"], "train_tokens": train.get("train_tokens"),
        "steps": train["steps_logged"], "wandb": train.get("wandb"),
    }


def error_row(name: str, parameters: dict, err: BaseException) -> dict:
    """A setting that failed (NaN loss, out of memory, a bad value) is a row with its error, not the end."""
    text = getattr(err, "evalue", None) or str(err)
    kind = getattr(err, "ename", None) or type(err).__name__
    first = (text.strip().splitlines() or [""])[0][:500]
    return {"name": name, "parameters": parameters, "error": f"{kind}: {first}"}


def save_row(work_dir, row: dict) -> pathlib.Path:
    return write_json(pathlib.Path(work_dir) / ROW_FILE, row)


def finished_row(work_dir) -> dict | None:
    path = pathlib.Path(work_dir) / ROW_FILE
    return read_json(path) if path.exists() else None


def sorted_rows(rows: list[dict]) -> list[dict]:
    """Finished settings by the paired difference, best first; failed ones last."""
    done = sorted((r for r in rows if not r["error"]), key=lambda r: -r["difference"])
    return done + [r for r in rows if r["error"]]


def compared_with_base(rows: list[dict], alpha: float = 0.05) -> dict:
    """{setting: "better than the base model" | "worse than the base model" | "no detectable change"}: each finished
    setting's anytime-valid interval against the base (medical_r1.sequential, over its answers in the order 04
    gave them, valid whenever its 04 stopped) at alpha divided by the number of settings compared (Bonferroni), so
    that the best-looking of several settings is not called better by luck."""
    done = [r for r in rows if not r["error"]]
    said = {1: "better than the base model", -1: "worse than the base model", 0: "no detectable change"}
    return {r["name"]: said[decided(difference_interval(r.get("base_right", []), r.get("tuned_right", []),
                                                        alpha / len(done)))] for r in done}


# How the sweep page and its plot name a setting's parameters: "lr 2e-4, r 8" reads where LEARNING_RATE=0.0002,
# LORA_R=8 breaks.
SHORT_NAMES = {"LEARNING_RATE": "lr", "LORA_R": "r", "LORA_ALPHA": "alpha", "MAX_STEPS": "steps",
               "GRPO_MAX_STEPS": "GRPO steps", "BATCH_SIZE": "batch", "GRAD_ACCUM": "accum", "LORA_DROPOUT": "dropout",
               "WARMUP_STEPS": "warm-up", "GRPO_LEARNING_RATE": "GRPO lr", "EVAL_STEPS": "eval every",
               "SAVE_STEPS": "save every", "EARLY_STOPPING_PATIENCE": "patience"}
PLOT_FONT_PT = 10  # the plot's tick labels: about 11 px on a 420 px phone, where the 5-inch figure shrinks to fit


def number(value) -> str:
    """One format for every number a setting names: 2e-4, 2e-5, 5e-6 for small rates (not 0.0002 beside 2e-05),
    0.05 or 300 otherwise."""
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def short_setting(parameters: dict, grpo: bool = False) -> str:
    """A setting as a reader says it, on the page and on the plot alike: "lr 2e-4, r 8" (the full names are in
    the cell's title); a setting whose tuned model is SFT + GRPO says so."""
    said = ", ".join(f"{SHORT_NAMES.get(k, k.lower())} {number(v)}" for k, v in parameters.items()) or "defaults"
    return said + (" (SFT + GRPO)" if grpo else "")


def steps_ran(rows: list[dict], description: str) -> str:
    """What the run's training steps were, from its rows: a grid's description names the steps it was written for
    ("60 steps each"), which a run (the demo, a MAX_STEPS given to scripts/sweep.py) may change."""
    steps = sorted({r["steps"] for r in rows if not r["error"] and r.get("steps") is not None})
    if not steps:
        return ""
    said = (f"every setting trained for {plural(steps[0], 'step')}" if len(steps) == 1 else
            f"the settings trained for {steps[0]:,} to {plural(steps[-1], 'step')} (the steps column)")
    described = {int(n) for n in re.findall(r"(\d+) steps", description)}
    other = ", not the steps the grid's description names" if described - set(steps) else ""
    return f"In this run {said}{other}."


def sweep_html(grid: dict, rows: list[dict]) -> str:
    labels = ["setting", "items", "steps", "base accuracy [95%]", "tuned accuracy [95%]", "difference [95%]",
              "no answer, base / tuned", "val loss, base / tuned", "training", "against the base model"]
    body = []
    compared = compared_with_base(rows)
    for r in sorted_rows(rows):
        full = html.escape(f"{r['name']}: " + ", ".join(f"{k}={v}" for k, v in r["parameters"].items()), quote=True)
        name = html.escape(short_setting(r["parameters"], r.get("tuned_model") == "SFT + GRPO"))
        key = (f"key' title='{full}", name)
        if r["error"]:
            body.append([key] + [("num", "-")] * 8 + [("verdict hurt", "failed: " + html.escape(r["error"]))])
            continue
        said = compared[r["name"]]
        tuned_loss = "-" if r["tuned_val_loss"] is None else f"{r['tuned_val_loss']:.3f}"
        tokens = f", {r['train_tokens'] / 1000:.0f}k tokens" if r["train_tokens"] else ""
        body.append([key, ("num", f"{r['items']}"), ("num", "-" if r.get("steps") is None else f"{r['steps']:,}"),
                     ("num", percent_with_interval(r["base_accuracy"], r["base_interval"])),
                     ("num", percent_with_interval(r["tuned_accuracy"], r["tuned_interval"])),
                     ("diff", points(r["difference"], r["difference_interval"])),
                     ("num", f"{r['base_unfinished'] + r['base_unreadable']} / "
                             f"{r['tuned_unfinished'] + r['tuned_unreadable']}"),
                     ("num", f"{r['base_val_loss']:.3f} / {tuned_loss}<br>nats per token"),
                     ("num", f"{r['train_runtime_s'] or 0:.0f} s{tokens}"),
                     (f"verdict {verdict_class(said)}", f"{said} <span class='same'>"
                                                       f"({html.escape(stopping_said(r))})</span>")])
    done = [r for r in rows if not r["error"]]
    items = sorted({r["items"] for r in done})
    measured = (f"Each setting was scored on the same {items[0]} benchmark items." if len(items) == 1 else
                f"The settings were scored on {' or '.join(map(str, items))} benchmark items." if items else
                "No setting finished.")
    description = f"The grid: {html.escape(grid['description'])} " if grid["description"] else ""
    return html_page("Which settings hurt least?", (
        f"<h2>Which settings hurt least? Sweep {html.escape(grid['name'])}</h2>"
        f"<p>{description}<strong class='measured'>{steps_ran(rows, grid['description'])} {measured}</strong></p>"
        "<p>Benchmark accuracy "
        "over all benchmarks, base vs tuned, on the same items for every setting. Sorted by the observed difference, "
        "best first, not by significance: "
        f"a setting is called better or worse than the base model only when its anytime-valid interval excludes no "
        f"change at 5% shared by the {len(compared)} settings compared (Bonferroni), so the top row is not called "
        "better for being the luckiest. Each setting's 04 had the same time budget and stopped when its own answer "
        "was decided or the budget ran out. A setting marked SFT + GRPO ran 07 after 03; its tuned model is the GRPO "
        "adapter (its validation loss is not measured). Steps: the optimizer steps its training ran. No answer: "
        "unfinished or unreadable, counted as wrong. Failed settings are listed last with their error; a setting's "
        "full name is in its cell's tooltip.</p>"
        f"<img src='sweep.png' alt='tuned accuracy per setting'>" + table_html(labels, body)))


def stopping_said(row: dict) -> str:
    """How the setting's 04 stopped: "decided at 96 items", "budget of 60 min out at 150 items"."""
    stopping = row.get("stopping") or {}
    if stopping.get("stopped") == "decided":
        return f"04 decided at {stopping['items']} items"
    if stopping.get("stopped") == "budget":
        return f"04's {stopping['budget_minutes']:g} minutes ran out at {stopping['items']} items"
    return f"{row['items']} items"


def plot_sweep(rows: list[dict], path) -> pathlib.Path:
    """Tuned accuracy per setting with its 95% interval, against the base model's accuracy as a line: a row per
    setting, named as in the table, best at the top, in a figure narrow enough that its labels stay legible when a
    phone shrinks it."""
    import textwrap

    done = [r for r in sorted_rows(rows) if not r["error"]]
    fig, ax = new_figure(size=(5, 1.4 + 0.55 * max(1, len(done))))
    if done:
        ys = range(len(done))
        tuned = [r["tuned_accuracy"] for r in done]
        errors = [[t - r["tuned_interval"][0] for t, r in zip(tuned, done)],
                  [r["tuned_interval"][1] - t for t, r in zip(tuned, done)]]
        ax.errorbar(tuned, ys, xerr=errors, fmt="o", color="#4c72b0", capsize=4, label="tuned (95% interval)")
        ax.axvline(done[0]["base_accuracy"], color="#c44e52", linestyle="--", label="base model")
        names = [textwrap.fill(short_setting(r["parameters"], r.get("tuned_model") == "SFT + GRPO"), 22) for r in done]
        ax.set_yticks(list(ys), names, fontsize=PLOT_FONT_PT)
        ax.set_ylim(len(done) - 0.5, -0.5)  # the best setting at the top, as in the table
        ax.legend(fontsize=PLOT_FONT_PT - 1, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.tick_params(axis="x", labelsize=PLOT_FONT_PT)
    ax.set_xlabel("benchmark accuracy", fontsize=PLOT_FONT_PT)
    ax.set_xlim(0, 1)
    return save_figure(fig, path)


def write_page(out_dir, grid: dict, rows: list[dict]) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    write_json(out_dir / "sweep.json", {"grid": grid, "rows": sorted_rows(rows),
                                        "compared_with_base": compared_with_base(rows)})
    plot_sweep(rows, out_dir / "sweep.png")
    return write_text(out_dir / "sweep.html", sweep_html(grid, rows))


def log_sweep_to_wandb(grid: dict, rows: list[dict], out_dir) -> str | None:
    """With W&B on (WANDB_MODE not disabled, the wandb package present), one summary run in the sweep's
    group holding the table; each setting's training run is in the same group (scripts/sweep.py sets
    WANDB_RUN_GROUP). Returns the summary run's link."""
    import importlib.util
    import os

    if os.environ.get("WANDB_MODE") == "disabled" or importlib.util.find_spec("wandb") is None:
        return None
    import wandb

    columns = ["setting", "base_accuracy", "tuned_accuracy", "difference", "difference_low", "difference_high",
               "tuned_unfinished", "tuned_unreadable", "tuned_val_loss", "train_runtime_s", "against_base", "error"]
    compared = compared_with_base(rows)
    table = wandb.Table(columns=columns, data=[
        [r["name"], r.get("base_accuracy"), r.get("tuned_accuracy"), r.get("difference"),
         (r.get("difference_interval") or [None, None])[0], (r.get("difference_interval") or [None, None])[1],
         r.get("tuned_unfinished"), r.get("tuned_unreadable"), r.get("tuned_val_loss"), r.get("train_runtime_s"),
         compared.get(r["name"]), r["error"]] for r in sorted_rows(rows)])
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "medical-r1"), group=grid["name"],
                     name=f"{grid['name']}-summary", job_type="sweep-summary", dir=str(out_dir))
    run.log({"sweep": table})
    link = run.url or f"wandb sync {pathlib.Path(run.dir).parent}"
    run.finish()
    return link
