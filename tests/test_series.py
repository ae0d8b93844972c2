"""The whole series, executed in order by papermill on the tiny model and the sample data, exactly as the
README's run command does it; then the files each notebook wrote are read back and checked."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from medical_r1 import REPO_ROOT, artifacts, benchmarks, generation, params
from medical_r1 import export as export_mod
from medical_r1 import models as models_mod
from medical_r1 import runtime as rt_mod

pytestmark = pytest.mark.notebooks

FAKE_SECRETS = {"HF_TOKEN": "hf_PlantedFakeTokenForTheLeakTest0123", "WANDB_API_KEY": "f" * 24 + "plantedwandb0123",
                "JUDGE_API_KEY": "sk-PlantedFakeJudgeKey0123456789"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("series") / "demo"
    env = {**os.environ, **FAKE_SECRETS}
    result = subprocess.run([sys.executable, "scripts/run_series.py", "--work-dir", str(work)], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (work / "run_series.log").write_text(result.stdout + result.stderr)
    return work


def test_every_notebook_ran_without_errors(work):
    executed = sorted(p.stem for p in (work / "executed").glob("*.ipynb"))
    notebooks = [nb.stem for nb in sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))]
    assert executed == sorted(notebooks + ["04_compare_after_07"])  # 04 again once 07 has an adapter
    for path in (work / "executed").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_runtime_record(work):
    record = artifacts.read_json(artifacts.artifact(work, "runtime"))
    assert record["backend"] == "cpu" and record["platform"] == "local"
    assert record["secrets_found"] == {"HF_TOKEN": True, "WANDB_API_KEY": True, "JUDGE_API_KEY": True}


def test_formatted_data(work):
    stats = artifacts.read_json(artifacts.artifact(work, "data_stats"))
    train = artifacts.read_jsonl(artifacts.artifact(work, "train_data"))
    val = artifacts.read_jsonl(artifacts.artifact(work, "val_data"))
    assert stats["rows"] == 61 and stats["dropped_over_length"] == 0  # the en_mix sample: 41 en + 20 zh
    assert (len(train), len(val)) == (stats["train"], stats["val"]) == (53, 8)
    assert stats["template"] == "r1_chat"
    tok = models_mod.load_tokenizer(stats["model_name"])
    for rec in train + val:
        assert rec["prompt"].startswith(tok.bos_token + "<｜User｜>") and rec["prompt"].endswith("<｜Assistant｜><think>\n")
        assert rec["completion"].endswith(tok.eos_token) and "\n</think>\n\n" in rec["completion"]
        assert rec["input_ids"].count(tok.bos_token_id) == 1 and rec["input_ids"][-1] == tok.eos_token_id
        assert rec["labels"][-1] == tok.eos_token_id and rec["labels"][:rec["prompt_len"]] == [-100] * rec["prompt_len"]
    assert artifacts.artifact(work, "length_histogram").read_bytes()[:4] == b"\x89PNG"


def test_training_learned_only_lora(work):
    m = artifacts.read_json(artifacts.artifact(work, "train_metrics"))
    assert m["backend"] == "cpu" and m["all_finite"] and m["steps_logged"] == 30
    assert m["last_loss"] < m["first_loss"] - 0.05
    c = m["weight_changes"]
    assert c["lora_tensors_changed"] == c["lora_tensors"] > 0 and c["base_tensors_changed"] == 0
    assert len(m["eval_losses"]) == 3 and m["eval_losses"][-1][1] < m["eval_losses"][0][1]
    assert (artifacts.artifact(work, "adapter") / "adapter_model.safetensors").exists()
    assert artifacts.artifact(work, "loss_curve").read_bytes()[:4] == b"\x89PNG"
    assert any(artifacts.artifact(work, "checkpoints").glob("checkpoint-*"))


def test_comparison_has_both_columns_for_every_question(work):
    base = artifacts.read_jsonl(artifacts.artifact(work, "baseline_answers"))
    tuned = artifacts.read_jsonl(artifacts.artifact(work, "tuned_answers"))
    ids = [q["id"] for q in generation.QUESTIONS]
    assert [a["id"] for a in base] == ids and [a["id"] for a in tuned] == ids
    assert all(0 < a["new_tokens"] <= 24 for a in base + tuned)
    page = artifacts.artifact(work, "comparison_html").read_text()
    assert page.count("<tr") == len(ids) + 1 and "<th>Base model</th><th>Fine-tuned</th>" in page
    for q in generation.QUESTIONS:
        assert q["question"] in page
    metrics = artifacts.read_json(artifacts.artifact(work, "compare_metrics"))
    assert math.isfinite(metrics["base_val_loss"]) and math.isfinite(metrics["tuned_val_loss"])
    assert metrics["tuned_val_loss"] < metrics["base_val_loss"]
    assert metrics["rouge"]["items"] == 4 and 0 <= metrics["rouge"]["base_rouge_l"] <= 1
    assert len(metrics["rouge"]["answers"]) == 4
    assert "off" in metrics["judge"]["skipped"] and metrics["wandb"] is None  # both off by default


def test_verdict_table_covers_every_benchmark(work):
    verdict = artifacts.read_json(artifacts.artifact(work, "verdict"))
    rows = {r["benchmark"]: r for r in verdict["rows"]}
    assert set(rows) == set(benchmarks.EVAL_BENCHMARKS) | {"all"}
    assert rows["all"]["items"] == 10 == len(verdict["base"]) == len(verdict["tuned"])  # EVAL_ITEMS, interleaved
    assert all(rows[name]["items"] == 2 for name in benchmarks.EVAL_BENCHMARKS)
    for row in rows.values():
        assert 0 <= row["base_interval"][0] <= row["base_accuracy"] <= row["base_interval"][1] <= 1
        said = row["verdict"].split(" (")[0]
        assert said in ("fine-tuning helped", "fine-tuning hurt", "too few items to detect any change") or \
            said.startswith("no change larger than ±") and not said.startswith("no change larger than ±100 ")
    # 16 new tokens from the random base model seldom close </think> (16 of 2,112 tokens): nearly every answer is
    # unfinished, and an unfinished one is never given a letter. 03 taught the tuned model to close its thinking
    # (greedy, it does), but what follows names no option: unreadable by the rules, so the model reader read each,
    # and the tiny model never reached the threshold.
    scored = verdict["base"] + verdict["tuned"]
    assert all(s["pred"] is None for s in scored if s["rule"] in ("unfinished", "unreadable"))
    assert sum(s["rule"] == "unfinished" for s in verdict["base"]) >= 0.8 * len(verdict["base"])
    for s in scored:
        if s["rule"] == "unreadable":
            assert 0 <= s["model_probability"] < 0.5  # EVAL_MODEL_READER's default
    # How each model's answers were read, per rule, adds up to its answers.
    for model in ("base", "tuned"):
        rules = rows["all"][f"{model}_rules"]
        assert sum(rules.values()) == rows["all"]["items"] and rules["unfinished"] == rows["all"][f"{model}_unfinished"]
        assert rows["all"][f"{model}_no_answer"] == rules["unfinished"] + rules["unreadable"]
    page = artifacts.artifact(work, "verdict_html").read_text()
    assert "Did fine-tuning help?" in page and "How the answers were read" in page
    # The benchmark rows share half of the 5%; every answer unfinished: no change anywhere, so 04 answered every item
    # of EVAL_ITEMS (10) in rounds of GEN_BATCH_SIZE 2 per process (2 processes) and said so in one sentence.
    # (this is 04 after 07: the three pairs share the 5% too)
    assert rows["all"]["alpha"] == pytest.approx(0.025 / 3)
    assert all(r["alpha"] == pytest.approx(0.005 / 3) for name, r in rows.items() if name != "all")
    stopping = verdict["stopping"]
    assert stopping["items"] == 10 and stopping["rounds"] == 3 and stopping["stopped"] == "items"
    assert stopping["outcome"].startswith("Not decided (3 of 3 headlines open) when every item drawn was answered")
    assert "from fine-tuning; " in stopping["outcome"] and "±100 " not in stopping["outcome"]
    assert stopping["outcome"] in page and "largest change left open" in page
    for name, pairs in (("04_compare", 1), ("04_compare_after_07", 3)):
        executed = json.loads((work / "executed" / f"{name}.ipynb").read_text())
        shown = [o for c in executed["cells"] for o in c.get("outputs", [])
                 if "evaluate_in_rounds(" in "".join(c["source"])]
        live = ["".join(o["data"]["text/html"]) for o in shown if "text/html" in o.get("data", {})]
        assert len(live) == 1 and "10 items per model" in live[0]  # one table, updated in place to the end
        assert live[0].count("<tr>") == 1 + 6 * pairs  # a header, then per pair five benchmarks and all
        printed = "".join("".join(o.get("text", "")) for o in shown)
        assert f"Not decided ({pairs} of {pairs} headlines open)" in printed


def test_grpo_ran_with_the_rewards_and_moved_no_base_weight(work):
    """07 on the tiny model: the rewards were computed every step, the loss stayed finite, the base weights did not
    move, and the record says why the LoRA tensors did not either (a random model's answers all earn the same)."""
    metrics = artifacts.read_json(artifacts.artifact(work, "grpo_metrics"))
    assert metrics["steps"] == 4 and metrics["loss_finite"] and metrics["start_from"] == "adapter"
    assert set(metrics["history"]["per_reward"]) == {"correctness_reward", "format_reward", "length_guard_reward"}
    # 16 tokens from a random model: nearly every answer runs to the limit still thinking and is penalised.
    assert all(-0.5 <= r <= -0.25 for r in metrics["history"]["per_reward"]["length_guard_reward"])
    assert metrics["weight_changes"]["base_tensors_changed"] == 0
    # Where every answer to a question earned the same reward, the record says GRPO had nothing to learn from.
    same = all(share == 1 for share in metrics["history"]["same_reward_share"])
    assert ("nothing to learn from" in metrics["summary"]) == same
    assert (artifacts.artifact(work, "grpo_adapter") / "adapter_config.json").exists()
    assert artifacts.artifact(work, "grpo_curve").read_bytes()[:4] == b"\x89PNG"


def test_the_demo_shows_that_sft_and_grpo_learn(work):
    """The demo's lines from medical_r1.learning: 03's trainer made the tiny model repeat the start of the answer it
    was trained on, which the base model does not; 07's trainer raised the share of answers that close their
    thinking from under 10% to over half (tests/test_training.py and test_rewards.py show both fail when broken)."""
    checks = artifacts.read_json(work / "learning.json")
    log = (work / "run_series.log").read_text()
    assert checks["sft"]["tuned_matched"] == 12 and checks["sft"]["base_matched"] < 3 and checks["sft"]["line"] in log
    assert checks["grpo"]["first"] < 0.1 < 0.5 < checks["grpo"]["last"] and checks["grpo"]["line"] in log
    assert pathlib.Path(checks["grpo"]["curve"]).read_bytes()[:4] == b"\x89PNG"


def test_04_after_07_compares_base_sft_and_sft_plus_grpo_on_the_same_items(work):
    """The first 04 (before 07) compared base and SFT and said how to get the third model; 04 after 07 answered
    the same items with 07's adapter (reading back base's and SFT's answers) and wrote a row per pair, the three
    sharing the 5%."""
    first = (work / "executed" / "04_compare.ipynb").read_text()
    assert "07 has not run" in first
    pairs = artifacts.read_json(artifacts.artifact(work, "verdict_pairs"))
    verdict = artifacts.read_json(artifacts.artifact(work, "verdict"))
    assert [(p["before"], p["after"]) for p in pairs["pairs"]] == [("base", "tuned"), ("tuned", "grpo"), ("base", "grpo")]
    assert [s["id"] for s in pairs["grpo"]] == [s["id"] for s in verdict["tuned"]] == [s["id"] for s in verdict["base"]]
    for pair in pairs["pairs"]:
        assert pair["overall"]["items"] == len(verdict["base"]) and pair["overall"]["alpha"] == 0.05 / 2 / 3
        said = pair["verdict"].split(" (")[0]
        assert said in (f"{pair['change']} helped", f"{pair['change']} hurt", "too few items to detect any change") \
            or said.startswith("no change larger")
    answers = artifacts.read_jsonl(artifacts.artifact(work, "eval_answers"))
    assert sorted((a["round"], a["model"]) for a in answers) == [(r, m) for r in range(3) for m in ("base", "grpo", "tuned")]
    pairs_table, reading_table = artifacts.artifact(work, "verdict_pairs_html").read_text().split(
        "How the answers were read")
    assert pairs_table.count("<tr") == 4 and "SFT (03) &rarr; SFT + GRPO (07)" in pairs_table
    assert reading_table.count("<tr") == 4  # a header, then base, SFT and SFT + GRPO
    # the base-against-SFT page, written after 07, points to the page of every pair its sentence speaks of
    assert "<a href='verdict_pairs.html'>" in artifacts.artifact(work, "verdict_html").read_text()
    metrics = artifacts.read_json(artifacts.artifact(work, "compare_metrics"))
    assert [p["after"] for p in metrics["pairs"]] == ["tuned", "grpo", "grpo"]


def test_merged_model_reloads_and_matches_the_adapter_model(work):
    report = artifacts.read_json(artifacts.artifact(work, "export_report"))
    assert report["verified"] and report["pushed"] == [] and report["check"]["relative_diff"] < 1e-4
    rt = rt_mod.detect_runtime()
    adapter_model, tok, _ = models_mod.load_adapter_model(work, "cpu", rt, 2048, True)
    merged, _ = models_mod.load_model_and_tokenizer(str(artifacts.artifact(work, "merged")), "cpu", rt, 2048)
    assert export_mod.max_logit_difference(export_mod.probe_logits(adapter_model, tok), export_mod.probe_logits(merged, tok)) < 1e-3


def test_model_card(work):
    card = (artifacts.artifact(work, "adapter") / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert f"datasets:\n- {params.DATASET_NAME}" in card and "| learning_rate | 0.005 |" in card
    assert "## Did fine-tuning help?" in card and card.count("| no change larger than ±") + card.count("| too few items to detect any change") == 6
    assert "\nNot decided (1 of 1 headlines open) when every item drawn was answered" in card  # 04 before 07
    assert (artifacts.artifact(work, "merged") / "README.md").read_text() == card


def test_planted_secrets_appear_nowhere(work):
    for path in pathlib.Path(work).rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".bin", ".pt", ".pth", ".png"):
            text = path.read_bytes().decode("utf-8", "ignore")
            for value in FAKE_SECRETS.values():
                assert value not in text, f"a secret leaked into {path}"
