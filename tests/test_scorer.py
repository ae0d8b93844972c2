"""medical_r1.scorer on 114 R1-style outputs written and labelled for this project (tests/fixtures/scorer_cases.json),
and HuatuoGPT-o1's own scorer on the same outputs (scripts/compare_scorers.py, the README's table)."""
import sys

import pytest

from medical_r1 import REPO_ROOT, artifacts, benchmarks, scorer

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import compare_scorers  # noqa: E402

ROWS = compare_scorers.readings()
# The families the scorer must read: the issue's, and what it read before.
FAMILIES = {"today", "today_zh", "negation", "negation_zh", "elimination", "elimination_zh", "second_thoughts",
            "hedge", "word_boundary", "negated_text", "choose", "ten_options", "zh_text", "unfinished"}


def test_the_scorer_reads_what_a_clinician_would_on_the_labelled_set():
    misread = [(r["family"], r["output"].split("</think>")[-1], r["expected"], r["ours"]) for r in ROWS
               if r["ours"] != r["expected"]]
    assert len(ROWS) >= 80 and FAMILIES <= {r["family"] for r in ROWS}
    assert 1 - len(misread) / len(ROWS) >= 0.99, misread
    assert not [m for m in misread if m[2] is None], "an output that commits to no answer was given a letter"


def test_huatuo_reads_differently_where_the_readme_says():
    """Its last letter copes with second thoughts, but it always gives a letter (hedges, unfinished outputs,
    answers naming no option) and matches option text inside words."""
    theirs = {family: [r for r in ROWS if r["family"] == family] for family in ("hedge", "unfinished", "word_boundary")}
    assert all(r["theirs"] is not None for r in theirs["hedge"] + theirs["unfinished"])
    assert sum(r["theirs"] == r["expected"] for r in theirs["word_boundary"]) < len(theirs["word_boundary"])
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert compare_scorers.table(ROWS) in readme, "README's scorer table is stale: python scripts/compare_scorers.py"


@pytest.mark.parametrize("answer, options, letter", [
    ("It isn't A; the answer is C.", {"A": "a", "B": "b", "C": "c"}, "C"),
    ("I cannot say.", {"A": "yes", "B": "no", "C": "maybe"}, None),
])
def test_a_mention_is_negated_or_chosen_in_its_own_clause(answer, options, letter):
    mentions = scorer.find_mentions(answer, options)
    assert scorer.extract_choice("...</think>\n\n" + answer, options)[0] == letter
    assert all(m.negated for m in mentions if m.letter != letter)


@pytest.mark.parametrize("items", [-1, -30, 1.5, True])
def test_eval_items_below_zero_is_refused_with_the_setting_named(tmp_path, items):
    with pytest.raises(ValueError, match="EVAL_ITEMS"):
        benchmarks.load_eval_data(str(tmp_path / "never-read.json"), items, 0)


def test_an_artifact_that_does_not_parse_names_its_file(tmp_path):
    broken = tmp_path / "train_metrics.json"
    broken.write_text('{"model_name": "x", ')
    with pytest.raises(ValueError, match="train_metrics.json.*line 1"):
        artifacts.read_json(broken)
    assert artifacts.read_json(artifacts.write_json(tmp_path / "ok.json", {"a": 1})) == {"a": 1}
