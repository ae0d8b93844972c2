"""Which settings hurt least? Run a grid of settings through the notebooks and write one page.

    python scripts/sweep.py --recipe demo --grid recipes/sweeps/lr_x_rank.json           # offline, tiny model
    python scripts/sweep.py --recipe t4_llama8b --grid recipes/sweeps/tutorial_vs_gentle.json --work-dir runs/sweep

01 and 02 run once per model (more exactly, once per distinct data setting) under WORK_DIR/prep/; 03 and 04
run once per setting under WORK_DIR/settings/NAME/ on a copy of that data, so every setting is scored on the
same validation split and benchmark items with the same seed. A setting that fails (NaN loss, out of memory)
becomes a row with its error and the sweep goes on. A setting with "grpo": true runs 03, 07 and 04. Running the
same command again skips the settings that have finished (a Kaggle session can stop mid-sweep); --retry-failed
runs the failed ones again.
Writes WORK_DIR/sweep.html, sweep.png and sweep.json.
"""
import argparse
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import run_series  # noqa: E402

from medical_r1 import sweep  # noqa: E402
from medical_r1.artifacts import artifact  # noqa: E402

SHARED_FILES = ("train_data", "val_data", "data_stats", "run_manifest", "baseline_answers")  # what 03-07 read from 01, 02


def prepare_data(params: dict, prep_dir: pathlib.Path) -> None:
    """01 and 02 for one data setting, once: skipped when their files are already there."""
    if all(artifact(prep_dir, key).exists() for key in SHARED_FILES):
        return
    run_series.execute(params, prep_dir, only=["01", "02"])


def copy_shared_files(prep_dir: pathlib.Path, work_dir: pathlib.Path) -> None:
    for key in SHARED_FILES:
        target = artifact(work_dir, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact(prep_dir, key), target)


def run_setting(setting: dict, params: dict, prep_dir: pathlib.Path, work_dir: pathlib.Path) -> dict:
    if work_dir.exists():  # a setting that was stopped midway starts again from its last checkpoint
        for key in ("verdict", "verdict_pairs", "compare_metrics", "train_metrics", "grpo_metrics"):
            artifact(work_dir, key).unlink(missing_ok=True)
    try:
        copy_shared_files(prep_dir, work_dir)
        run_series.execute(params, work_dir, only=["03"])
        if setting["grpo"]:  # 07 before 04, so that 04 runs once and compares base, SFT and SFT + GRPO
            run_series.execute(params, work_dir, only=["07"])
        run_series.execute(params, work_dir, only=["04"])
        return sweep.setting_row(setting["name"], setting["parameters"], work_dir, setting["grpo"])
    except Exception as err:  # noqa: BLE001 (any failure of one setting is that setting's row)
        return sweep.error_row(setting["name"], setting["parameters"], err)


def run_sweep(recipe: dict, grid: dict, work_dir: pathlib.Path, retry_failed: bool = False) -> list[dict]:
    work_dir = pathlib.Path(work_dir).resolve()
    base = run_series.prepare(recipe, work_dir)
    os.environ["WANDB_RUN_GROUP"] = grid["name"]  # with W&B on, every setting's run joins one group
    rows = []
    for setting in grid["settings"]:
        setting_dir = work_dir / "settings" / setting["name"]
        row = sweep.finished_row(setting_dir)
        if row and not (retry_failed and row["error"]):
            print(f"== {setting['name']}: finished earlier, skipped", flush=True)
            rows.append(row)
            continue
        params = {**base, **grid["parameters"], **setting["parameters"]}
        prep_dir = work_dir / "prep" / sweep.data_key({**grid["parameters"], **setting["parameters"]})
        print(f"== {setting['name']}: {setting['parameters']}", flush=True)
        try:
            prepare_data(params, prep_dir)
        except Exception as err:  # noqa: BLE001 (a model that cannot load fails its settings, not the sweep)
            row = sweep.error_row(setting["name"], setting["parameters"], err)
        else:
            row = run_setting(setting, params, prep_dir, setting_dir)
        sweep.save_row(setting_dir, row)
        print(f"   {row['error'] or row['verdict']}", flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", help="a file name in recipes/, without .json")
    parser.add_argument("--grid", required=True, type=pathlib.Path, help="a grid file, e.g. recipes/sweeps/lr_x_rank.json")
    parser.add_argument("--work-dir", type=pathlib.Path, help="default: runs/sweep-<grid name>")
    parser.add_argument("--retry-failed", action="store_true", help="run the settings that failed before again")
    args = parser.parse_args()
    try:
        grid = sweep.load_grid(args.grid)
    except sweep.GridError as err:
        sys.exit(str(err))
    work_dir = (args.work_dir or ROOT / "runs" / f"sweep-{grid['name']}").resolve()
    rows = run_sweep(run_series.load_recipe(args.recipe), grid, work_dir, args.retry_failed)
    page = sweep.write_page(work_dir, grid, rows)
    link = sweep.log_sweep_to_wandb(grid, rows, work_dir)
    failed = sum(bool(r["error"]) for r in rows)
    print(f"{len(rows)} settings ({failed} failed): {page}" + (f"; W&B: {link}" if link else ""))


if __name__ == "__main__":
    main()
