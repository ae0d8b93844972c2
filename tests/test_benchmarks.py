"""Answer extraction on hand-labelled R1 outputs, intervals, verdicts, and the evaluation file's schema."""
import json

import pytest

from medical_r1 import benchmarks, rouge
from medical_r1 import data as data_mod

OPTIONS = {"A": "Acute cystitis", "B": "Acute pyelonephritis", "C": "Nephrolithiasis", "D": "Urethritis",
           "E": "Acute glomerulonephritis"}
TEN = {k: f"option {k}" for k in "ABCDEFGHIJ"}

# (model output, expected letter, expected rule): written by hand, the way R1 distills answer.
LABELLED = [
    ("Fever and flank pain... so B fits.</think>\n\nThe answer is B.", "B", "answer_is"),
    ("Let me weigh A against C.</think>\n\nThe answer is C", "C", "answer_is"),
    ("Option A is tempting, but...</think>\n\nAnswer: (D) Urethritis", "D", "answer_is"),
    ("...</think>\n\nTherefore, the correct answer is **E. Acute glomerulonephritis**.", "E", "answer_is"),
    ("...</think>\n\n**B. Acute pyelonephritis**\n\nWhite cell casts localise the infection to the kidney.", "B",
     "marked_letter"),
    ("...</think>\n\n**B**", "B", "marked_letter"),
    ("...</think>\n\nI would choose (C) here.", "C", "marked_letter"),
    ("...</think>\n\nA patient with white cell casts most likely has option B.", "B", "standalone_letter"),
    ("...</think>\n\nI think it is D, urethritis being unlikely.", "D", "standalone_letter"),
    ("...</think>\n\nB", "B", "standalone_letter"),
    ("...</think>\n\nThis is acute pyelonephritis, an infection of the kidney.", "B", "option_text"),
    ("...</think>\n\nMost consistent with pyelonephritis of the upper tract.", "B", "similarity"),
    ("The answer is A. But wait, casts mean kidney.</think>\n\nThe answer is B.", "B", "answer_is"),
    ("I keep going back and forth between A and B and", None, "unfinished"),
    ("...</think>\n\n", None, "empty"),
    ("……</think>\n\n答案是B。白细胞管型提示肾盂肾炎。", "B", "answer_is"),
    ("……</think>\n\n正确答案：C", "C", "answer_is"),
    ("……</think>\n\n综上，答案为 E", "E", "answer_is"),
    ("...</think>\n\nThe answer is a kidney infection: acute pyelonephritis.", "B", "option_text"),
]


@pytest.mark.parametrize("output, letter, rule", LABELLED)
def test_extraction_on_hand_labelled_outputs(output, letter, rule):
    assert benchmarks.extract_choice(output, OPTIONS) == (letter, rule)


def test_letters_inside_the_reasoning_are_never_caught():
    output = "A? No. C? The answer is C, surely... no, wait.</think>\n\nIt is option E."
    assert benchmarks.extract_choice(output, OPTIONS) == ("E", "standalone_letter")


def test_letters_beyond_the_options_are_ignored_and_ten_options_work():
    assert benchmarks.extract_choice("...</think>\n\nThe answer is J.", TEN) == ("J", "answer_is")
    assert benchmarks.extract_choice("...</think>\n\nThe answer is F.", OPTIONS)[1] != "answer_is"


def test_pubmedqa_style_options():
    options = {"A": "yes", "B": "no", "C": "maybe"}
    assert benchmarks.extract_choice("...</think>\n\nThe answer is A: yes.", options) == ("A", "answer_is")
    assert benchmarks.extract_choice("...</think>\n\nno", options) == ("B", "option_text")


def test_wilson_interval_known_values():
    lo, hi = benchmarks.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert benchmarks.wilson_interval(0, 10)[0] == 0.0 and benchmarks.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert benchmarks.wilson_interval(0, 0) == (0.0, 1.0)


def scored(benchmark, correct, pred="A"):
    return [{"id": f"{benchmark}/{i}", "benchmark": benchmark, "gold": "A", "pred": pred if c else "B",
             "rule": "answer_is", "correct": c} for i, c in enumerate(correct)]


def test_verdicts_helped_hurt_and_no_change():
    base = scored("X", [False] * 60 + [True] * 40) + scored("Y", [True] * 50 + [False] * 50)
    tuned = scored("X", [True] * 100) + scored("Y", [True] * 10 + [False] * 90)
    rows = {r["benchmark"]: r for r in benchmarks.verdict_rows(base, tuned)}
    assert rows["X"]["verdict"].startswith("fine-tuning helped")
    assert rows["Y"]["verdict"].startswith("fine-tuning hurt")
    assert rows["all"]["items"] == 200
    same = benchmarks.verdict_rows(base, base)
    assert all(r["verdict"].startswith("no detectable change") for r in same)
    page = benchmarks.verdict_html(list(rows.values()))
    assert page.count("<tr>") == 4 and "fine-tuning hurt" in page


def test_unfinished_outputs_are_counted_as_no_answer_not_guessed():
    items = [{"id": "X/0", "benchmark": "X", "options": OPTIONS, "answer_idx": "B"}]
    result = benchmarks.score_answers(items, [{"output": "still thinking about B"}])
    assert result[0]["pred"] is None and result[0]["rule"] == "unfinished" and not result[0]["correct"]
    rows = benchmarks.verdict_rows(result, result)
    assert rows[0]["base_no_answer"] == 1


def test_sample_eval_file_loads_and_samples_deterministically():
    data = benchmarks.load_eval_data(str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"), 4, seed=1)
    assert set(data) == set(benchmarks.EVAL_BENCHMARKS) and all(len(v) == 4 for v in data.values())
    assert data == benchmarks.load_eval_data(str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"), 4, seed=1)
    item = data["MedQA_USLME_test"][0]
    assert benchmarks.mc_question(item).startswith("Please answer the following multiple-choice question:\n")
    assert "\nA. " in benchmarks.mc_question(item)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[]", "JSON object keyed by benchmark"),
    (json.dumps({"MedQA": []}), "benchmark 'MedQA': expected a non-empty list"),
    (json.dumps({"MedQA": [{"question": "", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}]}),
     "item 0: 'question' must be a non-empty string"),
    (json.dumps({"MedQA": [{"question": "q", "options": ["x", "y"], "answer_idx": "A"}]}),
     "item 0: 'options' must map letters"),
    (json.dumps({"MedQA": [{"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "C"}]}),
     "item 0: 'answer_idx' 'C' is not one of the options"),
])
def test_malformed_eval_file_names_what_to_fix(tmp_path, content, message):
    path = tmp_path / "eval.json"
    path.write_text(content)
    with pytest.raises(benchmarks.EvalDataError, match=message):
        benchmarks.load_eval_data(str(path), 5, 0)


def test_rouge_l():
    assert rouge.rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge.rouge_l("the cat", "the cat sat on") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge.rouge_l("糖尿病", "可能是糖尿病") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge.rouge_l("", "x") == 0.0
