"""The second reader (medical_r1.model_reader) on the tiny model: where the rules read no answer, the model's own
next-token probabilities after the answer prompt give the letter, accepted only at the threshold."""
import pytest

from medical_r1 import benchmarks, generation, model_reader
from src_helpers import encode_text

ITEM = {"id": "X/0", "benchmark": "X", "question": "Which drug?", "answer_idx": "C",
        "options": {"A": "Lithium", "B": "Donepezil", "C": "Haloperidol", "D": "Memantine"}}
# A finished answer the rules cannot read: it names no option.
UNREADABLE = "Weighing the options carefully.\n</think>\n\nThe picture is a movement disorder of the elderly."


def scored_unreadable(output=UNREADABLE):
    outputs = [{"output": output}]
    return outputs, benchmarks.score_answers([ITEM], outputs)


def prompts():
    return [{"question": benchmarks.mc_question(ITEM), "options": ITEM["options"]}]


@pytest.fixture
def means_c(adapter_model):
    """The tiny model made to mean C: +30 on the logit of the token "C" at the last position, as a model that wrote
    an answer about option C would put its weight there. Records the ids each forward pass saw."""
    model, tokenizer = adapter_model
    letter_c = encode_text(tokenizer, "C")[0]
    seen = []

    def bias(module, args, output):
        output[:, -1, letter_c] += 30.0
        return output

    handles = [model.get_output_embeddings().register_forward_hook(bias),
               model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"][0].tolist()),
                                               with_kwargs=True)]
    yield model, tokenizer, seen
    for handle in handles:
        handle.remove()


def test_where_the_rules_read_nothing_the_model_reads_its_own_answer(means_c):
    model, tokenizer, seen = means_c
    outputs, scored = scored_unreadable()
    assert scored[0]["rule"] == "unreadable"
    found = model_reader.read_unreadable(model, tokenizer, prompts(), outputs, scored, "r1_chat", 0.5)
    assert found == {"tried": 1, "read": 1}
    assert scored[0]["rule"] == "model_extracted" and scored[0]["pred"] == "C" and scored[0]["correct"]
    assert 0.5 <= scored[0]["model_probability"] <= 1
    # What the model read: the question as asked, its own output, then the fixed answer prompt.
    text = tokenizer.decode(seen[0])
    assert benchmarks.mc_question(ITEM) in text and UNREADABLE in text
    assert text.endswith("Therefore, among A through D, the answer is (")
    counts = benchmarks.verdict_rows(scored, scored)[-1]
    assert counts["tuned_model_extracted"] == 1 and counts["tuned_rules"]["model_extracted"] == 1


def test_an_answer_the_rules_abstained_on_goes_to_the_model_reader_and_is_counted_apart(means_c):
    """"If I had to pick, C, but it cannot be determined": no letter from the rules (why: undetermined), counted as
    abstained on the verdict row; the model reader then decides."""
    model, tokenizer, _ = means_c
    outputs, scored = scored_unreadable("Weighing.\n</think>\n\nIf I had to pick, C. But this cannot be determined.")
    assert scored[0]["rule"] == "abstained" and scored[0]["abstention"] == "undetermined" and scored[0]["pred"] is None
    row = benchmarks.verdict_rows(scored, scored)[-1]
    assert row["tuned_abstained"] == 1 and row["tuned_unreadable"] == 0 and row["tuned_no_answer"] == 1
    found = model_reader.read_unreadable(model, tokenizer, prompts(), outputs, scored, "r1_chat", 0.5)
    assert found == {"tried": 1, "read": 1} and scored[0]["pred"] == "C"


def test_below_the_threshold_the_answer_stays_unreadable_with_its_probability(adapter_model):
    """The random tiny model spreads its weight over its whole vocabulary: no letter comes near 0.5."""
    model, tokenizer = adapter_model
    outputs, scored = scored_unreadable()
    found = model_reader.read_unreadable(model, tokenizer, prompts(), outputs, scored, "r1_chat", 0.5)
    assert found == {"tried": 1, "read": 0}
    assert scored[0]["rule"] == "unreadable" and scored[0]["pred"] is None and not scored[0]["correct"]
    assert 0 <= scored[0]["model_probability"] < 0.5


def test_only_finished_unreadable_answers_are_given_to_the_model(means_c):
    """An answer the rules read keeps its reading, and an unfinished one was never an answer: neither is tried."""
    model, tokenizer, seen = means_c
    read, unfinished = ("...</think>\n\nThe answer is B.", "answer_is"), ("Still thinking about C and", "unfinished")
    for output, rule in (read, unfinished):
        outputs, scored = scored_unreadable(output)
        assert model_reader.read_unreadable(model, tokenizer, prompts(), outputs, scored, "r1_chat", 0.5)["tried"] == 0
        assert scored[0]["rule"] == rule
    outputs, scored = scored_unreadable()
    assert model_reader.read_unreadable(model, tokenizer, prompts(), outputs, scored, "r1_chat", 0)["tried"] == 0
    assert not seen


def test_04_reads_the_base_answers_with_the_adapter_off(means_c, monkeypatch):
    """04's path (rounds.answer_round): the base model's unreadable answers are read with the adapter switched off,
    the tuned ones on."""
    from medical_r1 import rounds

    model, tokenizer, _ = means_c
    states = []
    real = model_reader.letter_probabilities

    def spy(model, *args, **kwargs):
        states.append(bool(model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(model_reader, "letter_probabilities", spy)
    monkeypatch.setattr(rounds, "generate_answers", lambda model, tokenizer, questions, *a, **k: [
        {**q, "output": UNREADABLE, "new_tokens": 8, "finished_thinking": True} for q in questions])
    settings = generation.GenerationSettings(max_new_tokens=8, do_sample=False, batch_size=1, seed=0)
    answered = [rounds.answer_round(model, tokenizer, [ITEM], name, 0, "r1_chat", settings, "cpu", False, 0.5)
                for name in ("base", "tuned")]
    assert states == [True, False]
    assert [a["scored"][0]["rule"] for a in answered] == ["model_extracted"] * 2


def test_a_letter_written_as_more_than_one_token_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="'Cx'.*EVAL_MODEL_READER"):
        model_reader.letter_token_ids(tokenizer, ["A", "Cx"])
