"""04's evaluation in rounds (medical_r1.rounds): the seeded interleaved order, stopping when decided or at the
budget, resuming after a stop with the answers and verdict of an uninterrupted run, and refusing changed inputs."""
import json

import pytest

from medical_r1 import benchmarks, generation, rounds
from medical_r1 import data as data_mod
from medical_r1.artifacts import artifact

EVAL_DATA = benchmarks.load_eval_data(str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"), 0, seed=0)
GREEDY_2 = generation.GenerationSettings(max_new_tokens=8, do_sample=False, batch_size=2, seed=0)


def test_items_are_drawn_once_in_a_seeded_order_interleaved_across_benchmarks():
    order = rounds.draw_order(EVAL_DATA, seed=3)
    assert len(order) == 30 and len({item["id"] for item in order}) == 30
    assert [item["benchmark"] for item in order[:5]] == sorted(EVAL_DATA)  # one of each benchmark in turn
    assert rounds.draw_order(EVAL_DATA, seed=3) == order and rounds.draw_order(EVAL_DATA, seed=4) != order
    assert rounds.draw_order(EVAL_DATA, seed=3, max_items=7) == order[:7]  # EVAL_ITEMS bounds it


@pytest.mark.parametrize("minutes, items, decide, name", [(0, 0, "headline", "EVAL_MINUTES"),
                                                          (5, -1, "headline", "EVAL_ITEMS"),
                                                          (5, 0, "all", "EVAL_DECIDE")])
def test_a_bad_stopping_setting_is_refused_by_name(minutes, items, decide, name):
    with pytest.raises(ValueError, match=name):
        rounds.check_stopping(minutes, items, decide)


class FakeModel:
    """Answers as `right` says per model: the right option or a wrong one. Counts its batches."""

    def __init__(self, right):
        self.right, self.active, self.batches = right, "tuned", 0

    def disable_adapter(self):
        import contextlib

        @contextlib.contextmanager
        def off():
            self.active = "base"
            yield
            self.active = "tuned"
        return off()

    def set_adapter(self, name):
        self.active = {"default": "tuned", "grpo": "grpo"}[name]


@pytest.fixture
def fake_answers(monkeypatch):
    by_id = {item["id"]: item for item in rounds.draw_order(EVAL_DATA, 0)}

    def answer(model, tokenizer, questions, template, settings, backend):
        model.batches += 1
        letters = []
        for q in questions:
            item = by_id[q["id"]]
            wrong = next(k for k in item["options"] if k != item["answer_idx"])
            letters.append(item["answer_idx"] if model.right(model.active, q["id"]) else wrong)
        return [{**q, "output": f"...</think>\n\nThe answer is {letter}.", "new_tokens": 8,
                 "finished_thinking": True} for q, letter in zip(questions, letters)]

    monkeypatch.setattr(rounds, "generate_answers", answer)


def run(model, work_dir, minutes=60, decide="headline", models=("base", "tuned"), max_items=0):
    order = rounds.draw_order(EVAL_DATA, 0, max_items)
    return rounds.evaluate_in_rounds(model, None, order, "r1_chat", GREEDY_2, "cpu", work_dir, models, minutes, decide)


def test_it_stops_as_soon_as_the_headline_is_decided(fake_answers, tmp_path, capsys):
    model = FakeModel(lambda name, item_id: name == "tuned")  # fine-tuning gets every item right, base none
    result = run(model, tmp_path)
    assert result["stopped"] == "decided" and result["pairs"][0]["overall"]["decided"] == 1
    assert result["items"] < 30 and result["items"] % 2 == 0 and model.batches == result["rounds"] * 2
    assert result["outcome"] == f"Decided at {result['items']} items per model: fine-tuning helped."
    assert "fine-tuning +100.0 points" in capsys.readouterr().out  # the live table's text form, a line per round
    # every row decided takes more items: each benchmark has only a fifth of them
    every = run(FakeModel(lambda name, item_id: name == "tuned"), tmp_path / "every", decide="every")
    assert every["items"] > result["items"] and every["stopped"] in ("decided", "items")


def test_with_no_change_it_stops_at_the_budget_and_says_what_is_left_open(fake_answers, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 30))  # every batch takes 30 s
    monkeypatch.setattr(rounds.time, "perf_counter", lambda: next(clock))
    result = run(FakeModel(lambda name, item_id: int(item_id.split("/")[1]) % 2), tmp_path, minutes=2.5)
    # 4 batches of 30 s is 2 minutes; a third round (60 s more) would not fit 2.5 minutes
    assert result["stopped"] == "budget" and result["rounds"] == 2 and result["items"] == 4
    assert result["outcome"].startswith("Not decided (1 of 1 headlines open) when the budget of 2.5 minutes ran "
                                        "out, at 4 items per model: ")
    assert result["outcome"].endswith(("too few items to detect any change from fine-tuning.", " points from "
                                       "fine-tuning.")) and "no change larger than ±100 " not in result["outcome"]


def test_04_stopped_mid_run_and_run_again_gives_the_answers_and_verdict_of_an_uninterrupted_run(
        adapter_model, tmp_path, monkeypatch):
    """The tiny model answering for real (greedy): stopped by an Interrupt in its fourth batch (round 1, the tuned
    model), then run again."""
    model, tokenizer = adapter_model
    order = rounds.draw_order(EVAL_DATA, 0, max_items=6)

    def evaluate(work_dir):
        return rounds.evaluate_in_rounds(model, tokenizer, order, "r1_chat", GREEDY_2, "cpu", work_dir,
                                         ("base", "tuned"), minutes=60)

    whole = evaluate(tmp_path / "whole")
    real, calls = rounds.generate_answers, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds, "generate_answers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tmp_path / "stopped")
    kept = (artifact(tmp_path / "stopped", "eval_answers")).read_text().splitlines()
    assert [(json.loads(line)["round"], json.loads(line)["model"]) for line in kept] == [
        (0, "base"), (0, "tuned"), (1, "base")]  # each finished batch was on disk
    resumed = evaluate(tmp_path / "stopped")
    assert len(calls) == 4 + 3  # it went on from round 1's tuned batch, not from the start
    assert resumed["scored"] == whole["scored"] and resumed["pairs"] == whole["pairs"]
    assert resumed["outcome"] == whole["outcome"] and whole["items"] == 6 and whole["rounds"] == 3
    answers = [json.loads(line)["answers"] for line in artifact(tmp_path / "whole", "eval_answers").read_text()
               .splitlines()]
    assert [json.loads(line)["answers"] for line in artifact(tmp_path / "stopped", "eval_answers").read_text()
            .splitlines()] == answers


def test_a_changed_setting_or_adapter_is_refused_with_what_changed(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")

    def manifest(settings=GREEDY_2, data=EVAL_DATA):
        return rounds.evaluation_manifest("base-model", {"tuned": adapter}, "r1_chat", settings, False, 0.5, data)

    rounds.check_manifest(tmp_path, manifest())
    rounds.check_manifest(tmp_path, manifest(GREEDY_2.replace(batch_size=8)))  # the batch size may change
    with pytest.raises(ValueError, match="EVAL_MAX_NEW_TOKENS: was 8, now 16. 04 does not mix them: set them back.*delete"):
        rounds.check_manifest(tmp_path, manifest(GREEDY_2.replace(max_new_tokens=16)))
    with pytest.raises(ValueError, match=r"EVAL_GREEDY \(do_sample = not it\): was False, now True"):
        rounds.check_manifest(tmp_path, manifest(GREEDY_2.replace(do_sample=True)))
    with pytest.raises(ValueError, match="EVAL_DATA: another evaluation file"):
        rounds.check_manifest(tmp_path, manifest(data={"X": EVAL_DATA["PubMedQA_test"]}))
    (adapter / "adapter_model.safetensors").write_bytes(b"trained again")
    with pytest.raises(ValueError, match=r"SFT \(03\)'s adapter \(retrained since\)"):
        rounds.check_manifest(tmp_path, manifest())


def test_a_rerun_with_fewer_items_replays_only_those_and_more_minutes_buy_more_rounds(fake_answers, tmp_path):
    model = FakeModel(lambda name, item_id: int(item_id.split("/")[1]) % 2)  # both models alike: never decided
    first = run(model, tmp_path, max_items=6)
    assert (first["stopped"], first["items"], model.batches) == ("items", 6, 6)
    fewer = run(model, tmp_path, max_items=4)
    assert (fewer["items"], model.batches) == (4, 6)  # read back, nothing answered again
    assert fewer["scored"]["base"] == first["scored"]["base"][:4]
    more = run(model, tmp_path, max_items=10)
    assert (more["items"], model.batches) == (10, 10)  # on from where the first run stopped
    with pytest.raises(ValueError, match="EVAL_ITEMS holds fewer items than the first round"):
        run(model, tmp_path, max_items=1)
