"""medical_r1.scorer on 451 R1-style outputs written and labelled for this project (tests/fixtures/scorer_cases.json),
and HuatuoGPT-o1's own scorer on the same outputs (scripts/compare_scorers.py, the table in docs/evaluation.md)."""
import sys

import pytest

from medical_r1 import REPO_ROOT, artifacts, benchmarks, scorer

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import compare_scorers  # noqa: E402

ROWS = compare_scorers.readings()
# The families the scorer must read: the issue's, and what it read before.
FAMILIES = {"today", "today_zh", "negation", "negation_zh", "elimination", "elimination_zh", "second_thoughts",
            "hedge", "word_boundary", "negated_text", "choose", "ten_options", "zh_text", "unfinished",
            # issue #33's: closing statements after distractors, names that look like letters, option text in
            # another sense, distractors stated as answers, EXCEPT questions, two answers, lower case and full width,
            # the prose SFT teaches, no single answer; and two sets written after the design, unseen by it
            "closing", "closing_zh", "names_letters", "text_sense", "distractor", "except", "two_answers",
            "lower_width", "prose", "no_answer", "unseen_1", "unseen_2"}
# issue #44's, each at least 15 cases, English and Chinese: a lead-in to no option, withdrawn picks, rejected options
# named in passing, degenerate tails after a clear answer, answer-first layouts, exclusion lists, JSON answers, option
# text in another form.
NEW_FAMILIES = {"lead_in_no_option", "withdrawn_pick", "passing_mention", "degenerate_tail", "answer_first",
                "exclusion_list", "structured", "other_form"}


def test_the_scorer_reads_what_a_clinician_would_on_the_labelled_set():
    misread = [(r["family"], r["output"].split("</think>")[-1], r["expected"], r["ours"]) for r in ROWS
               if r["ours"] != r["expected"]]
    assert len(ROWS) >= 400 and FAMILIES | NEW_FAMILIES <= {r["family"] for r in ROWS}
    assert 1 - len(misread) / len(ROWS) >= 0.98, misread
    assert not [m for m in misread if m[2] is None], "an output that commits to no answer was given a letter"


def test_wrong_letters_are_counted_apart_from_no_letter_and_kept_within_budget():
    """A wrong letter goes straight into the verdict; no letter goes on to the model reader. At most 0.5% of the
    labelled cases may be given a wrong letter, and none of those labelled "no answer"."""
    right, wrong, no_letter = compare_scorers.counts(ROWS, "ours")
    assert right + wrong + no_letter == len(ROWS)
    assert wrong / len(ROWS) <= 0.005, [r["output"].split("</think>")[-1] for r in ROWS
                                        if r["ours"] not in (None, r["expected"])]
    # The budget can fail: HuatuoGPT-o1's last letter, on the same cases, gives many wrong letters.
    assert compare_scorers.counts(ROWS, "theirs")[1] / len(ROWS) > 0.1
    for family in NEW_FAMILIES:
        mine = [r for r in ROWS if r["family"] == family]
        assert len(mine) >= 15, family
        assert compare_scorers.counts(mine, "ours")[0] >= len(mine) - 1, family


@pytest.mark.parametrize("answer, why", [
    ("The answer is not B.", "only_excluded"), ("答案不是B。", "only_excluded"), ("The answer is E.", "not_an_option"),
    ("None of the above.", "not_an_option"), ("以上都不对。", "not_an_option"),
    ("If I had to pick, C. But C is wrong too, so this cannot be determined.", "undetermined"),
    ("如果必须选，我选C，但无法确定。", "undetermined"),
    ("Final answer: B\n\nThe answer is C.", "disagreeing"),
    ("The answer is B.\n\nHowever, since she is pregnant, the answer is D.", "disagreeing"),
])
def test_where_a_careful_grader_would_hesitate_the_rules_abstain_and_say_why(answer, why):
    options = {"A": "Amlodipine", "B": "Metoprolol", "C": "Lisinopril", "D": "Hydrochlorothiazide"}
    assert scorer.read_answer("...</think>\n\n" + answer, options) == (None, "abstained", why)
    assert why in scorer.ABSTENTIONS
    # Said before a commitment, the doubt is settled by it.
    assert scorer.read_answer("...</think>\n\n" + answer + "\n\nOn reflection, the answer is A.", options)[0] == "A"


def test_huatuo_reads_differently_where_the_readme_says():
    """Its last letter copes with second thoughts, but it always gives a letter (hedges, unfinished outputs,
    answers naming no option) and matches option text inside words."""
    theirs = {family: [r for r in ROWS if r["family"] == family] for family in ("hedge", "unfinished", "word_boundary")}
    assert all(r["theirs"] is not None for r in theirs["hedge"] + theirs["unfinished"])
    assert sum(r["theirs"] == r["expected"] for r in theirs["word_boundary"]) < len(theirs["word_boundary"])
    page = (REPO_ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    assert compare_scorers.table(ROWS) in page, "docs/evaluation.md's table is stale: python scripts/compare_scorers.py"


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


LETTER_STYLE = ("The answer is {L}.", "**{L}. {T}**", "Answer: ({L})", "Final answer: {L}", "{L}",
                "\\boxed{{{L}}}")
# Distractors discussed by their text, without a negation word, then a closing statement in prose.
DISMISSALS = ("{T} is reserved for another setting.", "{T} has no role here.", "{T} would worsen the picture.",
              "{T} fits a different presentation.", "{T} comes later, if at all.")
CLOSINGS = ("The most likely answer is {t}.", "{T} is the best choice.", "This points to {t}.",
            "Therefore, {t}.", "The correct option is {t}.", "So I would go with {t}.")


def test_letter_and_prose_answers_score_alike():
    """The same committed answers (the gold option for even items, a wrong one for odd) written as a letter and as
    prose that discusses the distractors by name: the two accuracies stay within 2 points, and both read nearly
    every answer. A scorer that read letters only would score the prose near zero; one that read the first option
    named would score the prose by its distractors."""
    items = [i for name, rows in artifacts.read_json(REPO_ROOT / "data/sample/eval_data.json").items() for i in rows]
    items += [i for rows in artifacts.read_json(REPO_ROOT / "data/sample/grpo_train.json").values() for i in rows]
    correct = {"letter": 0, "prose": 0}
    read = {"letter": 0, "prose": 0}
    for n, item in enumerate(items):
        options, gold = item["options"], item["answer_idx"]
        letters = sorted(options)
        chosen = gold if n % 2 == 0 else letters[(letters.index(gold) + 1) % len(letters)]
        text = options[chosen]
        others = [k for k in letters if k != chosen][:2]
        letter = LETTER_STYLE[n % len(LETTER_STYLE)].format(L=chosen, T=text)
        prose = " ".join(DISMISSALS[(n + i) % len(DISMISSALS)].format(T=options[k][0].upper() + options[k][1:])
                         for i, k in enumerate(others))
        prose += " " + CLOSINGS[n % len(CLOSINGS)].format(t=text, T=text[0].upper() + text[1:])
        for style, answer in (("letter", letter), ("prose", prose)):
            found, _ = scorer.extract_choice("Let me weigh each option.\n</think>\n\n" + answer, options)
            read[style] += found is not None
            correct[style] += found == gold
    n = len(items)
    assert n >= 40 and read["letter"] >= 0.95 * n and read["prose"] >= 0.95 * n, read
    assert abs(correct["letter"] - correct["prose"]) / n <= 0.02, correct


def test_the_held_out_check_reads_published_outputs_in_their_layout(tmp_path, capsys):
    """scripts/heldout_published.py on a page laid out as vlievin/medical-reasoning's samples (written here, not
    copied): the options from the question row, each output's reasoning and the model's own extracted letter."""
    import heldout_published

    page = tmp_path / "sample.html"
    page.write_text(
        "<tr data-qid=1>\n<td colspan=\"30\"><strong>USMLE [x]</strong> Q: Which drug?\n\nA) Aspirin\nB) Heparin\n"
        "<strong>C) Warfarin</strong>\nD) Alteplase</td>\n</tr>\n<tr data-qid=1>\n<td>&#9989; Let's think step by "
        "step. Warfarin fits; heparin (B) does not fit.\n\nTherefore, among A through D, the answer is C.\n\n</td>\n"
        "<td>&#10060; Let's think. The patient was 38.1&#176;C.\n\nTherefore, among A through D, the answer is A."
        "\n\n</td>\n</tr>", encoding="utf-8")
    found = list(heldout_published.outputs(str(page)))
    assert [(o["C"], theirs) for o, _, _, theirs in found] == [("Warfarin", "C"), ("Warfarin", "A")]
    assert found[0][1].endswith("heparin (B) does not fit.")
    heldout_published.main([str(page)])
    out = capsys.readouterr().out
    assert "'full agrees': 2" in out and "'reasoning read': 1" in out and "'reasoning wrong': 0" in out
