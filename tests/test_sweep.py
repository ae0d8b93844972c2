"""The sweep: a grid as data, one row per setting, failures as rows, reruns that skip finished settings."""
import json
import os
import subprocess
import sys

import pytest

from medical_r1 import REPO_ROOT, sweep
from medical_r1.artifacts import artifact as artifacts_path


def write_grid(tmp_path, spec) -> str:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_a_grid_expands_to_every_combination_after_the_named_settings(tmp_path):
    grid = sweep.load_grid(write_grid(tmp_path, {
        "name": "g", "settings": [{"name": "tutorial", "parameters": {"LEARNING_RATE": 2e-4, "MAX_STEPS": 60}}],
        "grid": {"LEARNING_RATE": [2e-4, 2e-5], "LORA_R": [8, 32]}}))
    assert [s["name"] for s in grid["settings"]] == [
        "tutorial", "learning_rate-0.0002_lora_r-8", "learning_rate-0.0002_lora_r-32",
        "learning_rate-2e-05_lora_r-8", "learning_rate-2e-05_lora_r-32"]
    assert grid["settings"][4]["parameters"] == {"LEARNING_RATE": 2e-5, "LORA_R": 32}


@pytest.mark.parametrize("spec, message", [
    ({"name": "g"}, "defines no setting"),
    ({"grid": {"LEARNING_RATE": []}}, "non-empty lists"),
    ({"grid": {"learning_rate": [1e-4]}}, "UPPER_CASE"),
    ({"settings": [{"parameters": {}, "grpo": "yes"}]}, "'grpo' must be true or false"),
    ({"settings": [{"name": "a", "parameters": {}}, {"name": "a", "parameters": {"LORA_R": 8}}]}, "share a name"),
    ({"settings": [{"name": "a"}]}, "'parameters' object"),
])
def test_a_bad_grid_names_what_to_fix(tmp_path, spec, message):
    with pytest.raises(sweep.GridError, match=message):
        sweep.load_grid(write_grid(tmp_path, spec))


def test_the_shipped_grids_load():
    for path in sorted((REPO_ROOT / "recipes" / "sweeps").glob("*.json")):
        grid = sweep.load_grid(path)
        assert grid["name"] == path.stem and len(grid["settings"]) >= 3 and grid["parameters"]["EVAL_MINUTES"] == 20
    names = [s["name"] for s in sweep.load_grid(REPO_ROOT / "recipes" / "sweeps" / "tutorial_vs_gentle.json")["settings"]]
    assert names[0].startswith("tutorial") and any("5e-6" in n for n in names)


def test_settings_that_differ_only_in_training_share_one_data_preparation():
    assert sweep.data_key({"LEARNING_RATE": 1e-4, "LORA_R": 8}) == sweep.data_key({"MAX_STEPS": 9}) == "defaults"
    assert sweep.data_key({"MODEL_NAME": "a"}) != sweep.data_key({"MODEL_NAME": "b"})


def test_the_summary_goes_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [sweep.error_row("bad", {"LEARNING_RATE": 1.0}, RuntimeError("the training loss became NaN"))]
    try:
        link = sweep.log_sweep_to_wandb({"name": "g", "description": ""}, rows, tmp_path)
    finally:
        wandb.teardown()  # wandb keeps its settings (this run's folder) for the process; later tests need their own
    assert link.startswith("wandb sync ") and list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.notebooks
def test_a_2x2_sweep_on_the_tiny_model_with_a_planted_failure_and_a_rerun(tmp_path):
    """Two learning rates x two ranks; a learning rate of 1e12 makes the loss NaN, so two settings fail. A fifth
    setting runs 07 after 03 (the demo's 4 GRPO steps), and its row compares the base model with SFT + GRPO."""
    grid = write_grid(tmp_path, {"name": "two_by_two", "parameters": {"MAX_STEPS": 4}, "grid": {
        "LEARNING_RATE": [0.005, 1e12], "LORA_R": [4, 8]},
        "settings": [{"name": "sft_then_grpo", "parameters": {"LEARNING_RATE": 0.005, "LORA_R": 4}, "grpo": True}]})
    work = tmp_path / "sweep"
    command = [sys.executable, "scripts/sweep.py", "--recipe", "demo", "--grid", grid, "--work-dir", str(work)]
    first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "WANDB_MODE": "disabled"})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((work / "sweep.json").read_text())["rows"]}
    assert len(rows) == 5
    failed = {name for name, r in rows.items() if r["error"]}
    assert failed == {"learning_rate-1000000000000.0_lora_r-4",
                      "learning_rate-1000000000000.0_lora_r-8"}
    assert all("NaN or infinite" in rows[name]["error"] for name in failed)
    grpo = rows.pop("sft_then_grpo")
    assert grpo["tuned_model"] == "SFT + GRPO" and grpo["tuned_val_loss"] is None and grpo["tuned_unfinished"] == 10
    assert grpo["base_accuracy"] == rows["learning_rate-0.005_lora_r-4"]["base_accuracy"] and grpo["items"] == 10
    grpo_dir = work / "settings" / "sft_then_grpo"
    pairs = json.loads(artifacts_path(grpo_dir, "verdict_pairs").read_text())["pairs"]
    assert len(pairs) == 3 and grpo["difference"] == pairs[2]["overall"]["difference"]  # base -> SFT + GRPO
    assert not artifacts_path(work / "settings" / "learning_rate-0.005_lora_r-4", "grpo_adapter").exists()
    for name in set(rows) - failed:
        r = rows[name]
        assert r["items"] == 10 and 0 <= r["base_interval"][0] <= r["base_accuracy"] <= r["base_interval"][1] <= 1
        assert r["tuned_unfinished"] == 10 and r["tuned_val_loss"] < r["base_val_loss"] and r["train_tokens"] > 0
    assert rows["learning_rate-0.005_lora_r-4"]["base_accuracy"] == \
        rows["learning_rate-0.005_lora_r-8"]["base_accuracy"]  # the same items for every setting
    first_rows = (work / "sweep.json").read_text()
    page = (work / "sweep.html").read_text()
    assert all(name in page for name in rows) and page.count("NaN or infinite") == 2
    compared = json.loads(first_rows)["compared_with_base"]  # each finished setting, corrected for their number
    assert set(compared) == set(rows) - failed | {"sft_then_grpo"} and "shared by the 3 settings compared" in page
    assert "04's 5 minutes ran out at 10 items" not in page and "10 items" in page  # never decided, all 10 answered
    assert ">lr 0.005, r 4 (SFT + GRPO)</td>" in page and "title='sft_then_grpo: LEARNING_RATE=0.005" in page
    assert "not by significance" in page
    assert (work / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((work / "prep").iterdir())) == 1  # 01 and 02 ran once for the one model

    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "WANDB_MODE": "disabled"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 5 and "03_train" not in again.stdout
    assert (work / "sweep.json").read_text() == first_rows
