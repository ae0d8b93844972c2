"""Answer extraction on hand-labelled R1 outputs, intervals, verdicts, and the evaluation file's schema."""
import json

import pytest

from medical_r1 import benchmarks, generation, rouge, verdict_pages
from medical_r1 import data as data_mod

OPTIONS = {"A": "Acute cystitis", "B": "Acute pyelonephritis", "C": "Nephrolithiasis", "D": "Urethritis",
           "E": "Acute glomerulonephritis"}
TEN = {k: f"option {k}" for k in "ABCDEFGHIJ"}
GREEDY_8 = generation.GenerationSettings(max_new_tokens=8, do_sample=False, batch_size=1, seed=0)

# (model output, expected letter, expected rule): written by hand, the way R1 distills answer.
LABELLED = [
    ("Fever and flank pain... so B fits.</think>\n\nThe answer is B.", "B", "answer_is"),
    ("Let me weigh A against C.</think>\n\nThe answer is C", "C", "answer_is"),
    ("Option A is tempting, but...</think>\n\nAnswer: (D) Urethritis", "D", "answer_is"),
    ("...</think>\n\nTherefore, the correct answer is **E. Acute glomerulonephritis**.", "E", "answer_is"),
    ("...</think>\n\n**B. Acute pyelonephritis**\n\nWhite cell casts localise the infection to the kidney.", "B",
     "marked_letter"),
    ("...</think>\n\n**B**", "B", "marked_letter"),
    ("...</think>\n\nI would choose (C) here.", "C", "answer_is"),
    ("...</think>\n\nA patient with white cell casts most likely has option B.", "B", "answer_is"),
    ("...</think>\n\nI think it is D, urethritis being unlikely.", "D", "standalone_letter"),
    ("...</think>\n\nB", "B", "standalone_letter"),
    ("...</think>\n\nThis is acute pyelonephritis, an infection of the kidney.", "B", "option_text"),
    ("...</think>\n\nMost consistent with pyelonephritis of the upper tract.", None, "unreadable"),
    ("The answer is A. But wait, casts mean kidney.</think>\n\nThe answer is B.", "B", "answer_is"),
    ("I keep going back and forth between A and B and", None, "unfinished"),
    ("...</think>\n\n", None, "unreadable"),
    ("……</think>\n\n答案是B。白细胞管型提示肾盂肾炎。", "B", "answer_is"),
    ("……</think>\n\n正确答案：C", "C", "answer_is"),
    ("……</think>\n\n综上，答案为 E", "E", "answer_is"),
    ("...</think>\n\nThe answer is a kidney infection: acute pyelonephritis.", "B", "option_text"),
]


# Lower-case letters and other phrasings, in English and Chinese, each written by hand: (answer after
# </think>, letter). Every one must be read as that option, whatever its case.
PHRASINGS = [
    ("the answer is c", "C"), ("The answer is c.", "C"), ("So the answer is: b", "B"), ("answer: d", "D"),
    ("Answer: (b)", "B"), ("**Answer:** e", "E"), ("The answer would be a.", "A"), ("The answer is (a)", "A"),
    ("The correct option is d.", "D"), ("The best choice is b", "B"), ("Final choice: c", "C"),
    ("I'd go with b.", "B"), ("I would choose option e here.", "E"), ("I'll pick c", "C"),
    ("The answer is option c, nephrolithiasis.", "C"), ("answer = b", "B"), ("THE ANSWER IS D", "D"),
    ("Option A is tempting, but the answer is b", "B"), ("(c)", "C"), ("[b]", "B"), ("（d）", "D"),
    ("答案是 b", "B"), ("答案是b。", "B"), ("答案：c", "C"), ("答案为 E", "E"), ("答案应为d", "D"),
    ("最佳答案是 e", "E"), ("故选B", "B"), ("因此选 d。", "D"), ("所以选择 a", "A"), ("我选c", "C"),
    ("答：a", "A"), ("正确选项是 b", "B"), ("选项A不对，答案是C", "C"), ("综上所述，答案选 d", "D"),
]


@pytest.mark.parametrize("answer, letter", PHRASINGS)
def test_phrasings_in_any_case_name_their_option(answer, letter):
    found, rule = benchmarks.extract_choice("...</think>\n\n" + answer, OPTIONS)
    assert found == letter, (answer, found, rule)


# Answers that name no option: unreadable, counted apart, never scored as if answered.
NO_OPTION = ["The answer is a kidney infection.", "I think a kidney problem is likely.",
             "It is an infection of the bladder.", "Most consistent with pyelonephritis.", "这是一种肾脏感染。",
             "I am not sure.", ""]


@pytest.mark.parametrize("answer", NO_OPTION)
def test_an_answer_naming_no_option_is_unreadable(answer):
    assert benchmarks.extract_choice("...</think>\n\n" + answer, OPTIONS) == (None, "unreadable")


def test_a_letter_beyond_the_options_is_an_abstention_not_a_letter():
    assert benchmarks.extract_choice("...</think>\n\nThe answer is F.", OPTIONS) == (None, "abstained")
    assert benchmarks.read_answer("...</think>\n\nThe answer is F.", OPTIONS)[2] == "not_an_option"
    items = [{"id": "X/0", "benchmark": "X", "options": OPTIONS, "answer_idx": "B"}]
    scored = benchmarks.score_answers(items, [{"output": "...</think>\n\nThe answer is not B."}])
    assert scored[0]["rule"] == "abstained" and scored[0]["abstention"] == "only_excluded"
    row = benchmarks.verdict_rows(scored, scored)[0]
    assert row["base_abstained"] == 1 and row["base_unreadable"] == 0 and row["base_no_answer"] == 1
    assert "1 abstained" in verdict_pages.verdict_html([row])


def test_similarity_is_only_an_opt_in_and_reported_apart():
    output = "...</think>\n\nMost consistent with pyelonephritis of the upper tract."
    assert benchmarks.extract_choice(output, OPTIONS) == (None, "unreadable")
    assert benchmarks.extract_choice(output, OPTIONS, similarity=True) == ("B", "similarity")
    items = [{"id": "X/0", "benchmark": "X", "options": OPTIONS, "answer_idx": "B"}]
    guessed = benchmarks.score_answers(items, [{"output": output}], similarity=True)
    row = benchmarks.verdict_rows(guessed, guessed)[0]
    assert row["base_correct"] == 1 and row["base_similarity"] == 1 and row["base_unreadable"] == 0
    assert "by similarity" in verdict_pages.verdict_html([row])


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
    assert rows["X"]["decided"] == 1 and rows["Y"]["decided"] == -1 and rows["X"]["alpha"] == 0.05 / 2 / 2
    assert "anytime-valid 98.8% interval" in rows["X"]["verdict"] and "100 items" in rows["X"]["verdict"]
    same = benchmarks.verdict_rows(base, base)
    assert all(r["verdict"].startswith("no change larger than ±") and not r["decided"] for r in same)
    page = verdict_pages.verdict_html(list(rows.values()), "Decided at 200 items per model: fine-tuning helped.")
    assert "Decided at 200 items per model: fine-tuning helped." in page
    verdict_table, reading_table = page.split("How the answers were read")
    assert verdict_table.count("<tr") == 2 + 3 and "fine-tuning hurt" in page  # two header rows, three benchmarks
    assert reading_table.count("<tr") == 1 + 2  # a header, then the base and the fine-tuned model


def test_04_has_a_row_per_pair_of_the_models_that_exist_and_names_what_changed():
    base = scored("X", [False] * 70 + [True] * 30)
    sft = scored("X", [False] * 40 + [True] * 60)
    grpo = scored("X", [False] * 10 + [True] * 90)
    two = benchmarks.pair_verdicts({"base": base, "tuned": sft, "grpo": None})  # 07 not run
    assert [(p["before"], p["after"]) for p in two] == [("base", "tuned")]
    assert two[0]["verdict"].startswith("fine-tuning helped") and two[0]["overall"]["alpha"] == 0.025
    three = benchmarks.pair_verdicts({"base": base, "tuned": sft, "grpo": grpo})
    assert [(p["before"], p["after"]) for p in three] == [("base", "tuned"), ("tuned", "grpo"), ("base", "grpo")]
    assert [p["verdict"].split(" (")[0] for p in three] == ["fine-tuning helped", "GRPO helped", "SFT + GRPO helped"]
    assert all(p["overall"]["alpha"] == pytest.approx(0.05 / 2 / 3) for p in three)  # the pairs share the 5%
    assert three[1]["overall"]["difference"] == pytest.approx(0.3) and three[1]["rows"][0]["verdict"].startswith("GRPO")
    pairs_table, reading_table = verdict_pages.pairs_html(three, "Decided.").split("How the answers were read")
    assert pairs_table.count("<tr") == 1 + 3 and pairs_table.count("class='verdict helped'") == 3
    assert reading_table.count("<tr") == 1 + 3 and "SFT + GRPO (07)" in reading_table  # each model once
    worse = benchmarks.pair_verdicts({"base": base, "tuned": grpo, "grpo": sft})  # GRPO undoing SFT's gain
    assert worse[1]["verdict"].startswith("GRPO hurt") and "class='verdict hurt'" in verdict_pages.pairs_html(worse, "")


def test_the_three_way_table_holds_every_row_to_5_percent_when_nothing_changed():
    """Three models answering alike (each item right with its own chance, the same for every model): the share of
    simulated runs in which any row of any pair claims a change stays at or below 5%."""
    import random

    rng = random.Random(0)
    claims, runs = 0, 300
    for _ in range(runs):
        chance = [rng.random() for _ in range(60)]
        models = {m: scored("X", [rng.random() < c for c in chance]) for m in ("base", "tuned", "grpo")}
        pairs = benchmarks.pair_verdicts(models)
        claims += any(r["decided"] for p in pairs for r in p["rows"])
    assert claims / runs <= 0.05


def test_07s_adapter_joins_04_only_if_it_exists_and_shares_03s_base_model(tmp_path, capsys):
    from medical_r1 import artifacts, rounds

    assert rounds.load_grpo_adapter(None, tmp_path, "base-model") is None
    assert "07 has not run" in capsys.readouterr().out
    grpo = artifacts.artifact(tmp_path, "grpo_adapter")
    grpo.mkdir(parents=True)
    artifacts.write_json(grpo / "adapter_config.json", {"base_model_name_or_path": "another-model"})
    with pytest.raises(ValueError, match="trained on another-model, 03's on base-model"):
        rounds.load_grpo_adapter(None, tmp_path, "base-model")


def test_unfinished_outputs_are_counted_as_no_answer_not_guessed():
    items = [{"id": "X/0", "benchmark": "X", "options": OPTIONS, "answer_idx": "B"}]
    result = benchmarks.score_answers(items, [{"output": "still thinking about B"}])
    assert result[0]["pred"] is None and result[0]["rule"] == "unfinished" and not result[0]["correct"]
    rows = benchmarks.verdict_rows(result, result)
    assert rows[0]["base_no_answer"] == 1 and rows[0]["base_unfinished"] == 1 and rows[0]["base_unreadable"] == 0


def test_the_verdict_table_counts_each_kind_of_answer_per_model():
    items = [{"id": f"X/{i}", "benchmark": "X", "options": OPTIONS, "answer_idx": "B"} for i in range(4)]
    base = benchmarks.score_answers(items, [{"output": o} for o in [
        "...</think>\n\nThe answer is b", "...</think>\n\nThe answer is c", "thinking...", "...</think>\n\nHmm."]])
    tuned = benchmarks.score_answers(items, [{"output": o} for o in [
        "...</think>\n\n答案是 B", "...</think>\n\n答案是 b", "...</think>\n\nB", "still thinking"]])
    row = benchmarks.verdict_rows(base, tuned)[0]
    assert (row["items"], row["base_correct"], row["base_unfinished"], row["base_unreadable"]) == (4, 1, 1, 1)
    assert (row["tuned_correct"], row["tuned_unfinished"], row["tuned_unreadable"]) == (3, 1, 0)
    assert row["base_accuracy"] == 0.25 and row["tuned_accuracy"] == 0.75 and row["difference"] == 0.5
    lo, hi = row["difference_interval"]
    assert lo < 0 < hi and not row["decided"]  # 4 items decide nothing
    page = verdict_pages.verdict_html([row], "")
    # 4 items leave every difference open (the interval reaches 100 points): the page says so, not "100 points"
    assert max(-lo, hi) >= 1 and "too few items to detect any change" in page and ">100 points<" not in page
    for header in ("accuracy [95%]", "no answer", "difference [anytime-valid]", "largest change left open"):
        assert f">{header}</th>" in page, header
    # Every figure carries its unit, and each cell its column's label for the phone layout.
    assert ">1 right, 25.0%<br>" in page and "%]</span></td>" in page and "1 unfinished,<br>1 unreadable" in page
    assert "+50.0 points<br>" in page and "data-label='fine-tuned: no answer'" in page


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
