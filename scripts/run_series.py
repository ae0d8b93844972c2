"""Run the notebooks in order with papermill, headless, and write the executed copies under WORK_DIR.

    python scripts/run_series.py                                   # offline demo (CPU, tiny model, sample data)
    python scripts/run_series.py --recipe t4_llama8b --work-dir runs/llama8b   # the real run, on a GPU

A recipe (recipes/*.json) is data: the parameters it overrides, whether to build the tiny model, and
whether to stay offline. Each notebook gets only the parameters its own `parameters` cell declares.
"""
import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from medical_r1.artifacts import read_json  # noqa: E402
from medical_r1.models import build_tiny_model  # noqa: E402
from medical_r1.training import train_summary  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# 04 compares what exists: run before 07 it has base and SFT; after 07 it runs again and adds SFT + GRPO.
AGAIN_AFTER = {"07_grpo": "04_compare"}


def recipe_parameters(recipe: dict, work_dir: pathlib.Path) -> dict:
    params = {"WORK_DIR": str(work_dir)}
    for name, value in recipe["parameters"].items():
        params[name] = value.format(work_dir=work_dir) if isinstance(value, str) else value
    return params


def load_recipe(name: str) -> dict:
    path = ROOT / "recipes" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no recipe {name!r}: choose one of {sorted(p.stem for p in path.parent.glob('*.json'))}")
    return json.loads(path.read_text())


def prepare(recipe: dict, work_dir: pathlib.Path) -> dict:
    """Stay offline and build the tiny model when the recipe says so; return its parameters for work_dir."""
    if recipe.get("offline"):
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                          WANDB_MODE="disabled", GRADIO_ANALYTICS_ENABLED="False")
    if recipe.get("tiny_model") and not (work_dir / "tiny-model").exists():
        build_tiny_model(work_dir / "tiny-model", recipe["tiny_model"])
    return recipe_parameters(recipe, work_dir)


def execute(params: dict, work_dir: pathlib.Path, only: list[str] | None = None) -> dict:
    """Execute the notebooks (all, or those numbered in `only`) with params, WORK_DIR set to work_dir."""
    import papermill

    params = {**params, "WORK_DIR": str(work_dir)}
    executed = work_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    declared = {nb: papermill.inspect_notebook(str(nb)) for nb in NOTEBOOKS}
    unknown = set(params) - set().union(*declared.values())
    if unknown:
        raise ValueError(f"the recipe sets {sorted(unknown)}, which no notebook's parameters cell declares")
    timings = {}
    runs = []
    for nb in NOTEBOOKS:
        if only and nb.stem[:2] not in only:
            continue
        runs.append((nb, nb.name))
        again = AGAIN_AFTER.get(nb.stem)
        if again and (not only or again[:2] in only):
            runs.append((ROOT / "notebooks" / f"{again}.ipynb", f"{again}_after_{nb.stem[:2]}.ipynb"))
    for nb, executed_name in runs:
        mine = {k: v for k, v in params.items() if k in declared[nb]}
        start = time.time()
        print(f"== {executed_name} {mine}", flush=True)
        papermill.execute_notebook(str(nb), str(executed / executed_name), parameters=mine, cwd=str(ROOT),
                                   kernel_name="python3", progress_bar=False)
        name = executed_name.removesuffix(".ipynb")
        timings[name] = round(time.time() - start, 1)
        print(f"   done in {timings[name]} s", flush=True)
    return timings


def run(recipe: dict, work_dir: pathlib.Path, only: list[str] | None = None) -> dict:
    work_dir = pathlib.Path(work_dir).resolve()
    return execute(prepare(recipe, work_dir), work_dir, only)


def learning_checks(work_dir: pathlib.Path) -> dict:
    """The demo's proof that training learns (medical_r1.learning): 03's and 07's trainers on tasks the tiny model can
    learn, a line each, kept in learning.json. The series itself runs a random model, whose answers show nothing."""
    from medical_r1.artifacts import write_json
    from medical_r1.learning import grpo_learns, sft_learns

    checks = {"sft": sft_learns(work_dir / "learning" / "sft"), "grpo": grpo_learns(work_dir / "learning" / "grpo")}
    write_json(work_dir / "learning.json", checks)
    for check in checks.values():
        print(check["line"], flush=True)
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", help="a file name in recipes/, without .json")
    parser.add_argument("--work-dir", default="runs/demo", type=pathlib.Path)
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 02 03")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    timings = run(recipe, args.work_dir, args.only)
    if recipe.get("learning_checks") and not args.only:
        learning_checks(args.work_dir.resolve())
    train = args.work_dir / "train_metrics.json"
    compare = args.work_dir / "compare_metrics.json"
    if train.exists():
        print(train_summary(read_json(train)))
    if compare.exists():
        c = read_json(compare)
        print(f"validation loss: base {c['base_val_loss']:.4f} -> tuned {c['tuned_val_loss']:.4f}")
    print(f"executed notebooks in {args.work_dir / 'executed'}; total {sum(timings.values()):.0f} s")


if __name__ == "__main__":
    main()
