"""07's rewards and training items (medical_r1.rewards), and two GRPO steps with TRL's GRPOTrainer on the tiny
model using them: rewards computed, loss finite, only LoRA tensors moved."""
import json
import pathlib
import re

import pytest

from medical_r1 import REPO_ROOT, benchmarks, grpo, params, rewards, training
from medical_r1 import data as data_mod
from medical_r1 import models as models_mod
from medical_r1 import runtime as rt_mod

OPTIONS = json.dumps({"A": "Lithium", "B": "Donepezil", "C": "Haloperidol", "D": "Memantine"})
SAMPLE = data_mod.SAMPLE_DATA_DIR / "grpo_train.json"


@pytest.mark.parametrize("completion, correct, formatted", [
    ("Memory loss, cholinergic deficit...\n</think>\n\nThe answer is B.", rewards.CORRECT, rewards.FORMAT_BONUS),
    ("...\n</think>\n\nThe answer is A.", rewards.WRONG, rewards.FORMAT_BONUS),
    ("...\n</think>\n\nNot lithium; donepezil.", rewards.CORRECT, rewards.FORMAT_BONUS),  # the scorer's reading
    ("...\n</think>\n\nA or B.", rewards.NO_ANSWER, 0.0),  # a hedge is no answer
    ("Still weighing donepezil against memantine and", rewards.NO_ANSWER, 0.0),  # never closed its thinking
    ("The answer is B.", rewards.NO_ANSWER, 0.0),  # an answer inside the thinking does not count
])
def test_correctness_and_format_rewards_read_the_committed_answer(completion, correct, formatted):
    assert rewards.correctness_reward([completion], ["B"], [OPTIONS]) == [correct]
    assert rewards.format_reward([completion], [OPTIONS]) == [formatted]


def test_the_length_guard_penalises_only_a_runaway_that_never_closed_its_thinking():
    guard = rewards.length_guard(8)
    assert guard(["thinking on and on", "short</think> B", "long but done</think> B", "short"],
                 [[1] * 8, [1] * 3, [1] * 8, [1] * 2]) == [rewards.RUNAWAY_PENALTY, 0.0, 0.0, 0.0]


def test_training_items_never_share_a_question_with_04s_evaluation_file(capsys):
    items = rewards.load_items(SAMPLE)
    eval_data = json.loads((data_mod.SAMPLE_DATA_DIR / "eval_data.json").read_text())
    assert rewards.without_eval_questions(items, eval_data) == items  # the shipped sample is clean
    assert "none of them in 04's evaluation file" in capsys.readouterr().out
    planted = {**eval_data["MedQA_USLME_test"][0]}
    planted["question"] = "  " + planted["question"].upper().replace(" ", "  ") + " "  # other case and spacing
    kept = rewards.without_eval_questions(items[:3] + [planted] + items[3:], eval_data)
    assert kept == items and "1 left out because their question is in 04's evaluation file" in capsys.readouterr().out
    evaluated = {rewards.normalise_question(q["question"]) for qs in eval_data.values() for q in qs}
    assert not {rewards.normalise_question(item["question"]) for item in kept} & evaluated
    with pytest.raises(ValueError, match="every training item's question is in 04's evaluation file"):
        rewards.without_eval_questions([planted], eval_data)


def test_the_default_training_items_come_from_the_hubs_medqa_training_split(monkeypatch):
    """07's default reads MedQA's USMLE training split through `datasets` (the Hub's rows carry more columns than
    07 needs); a dataset without the columns, or no internet, is one sentence naming the fix."""
    import datasets

    hub_rows = [{"question": "A 30-year-old man has a cough. What is the diagnosis?", "answer": "Asthma",
                 "options": {"A": "Asthma", "B": "Flu", "C": "Cold", "D": "Croup"}, "answer_idx": "A",
                 "meta_info": "step1", "metamap_phrases": ["man", "cough"]}] * 3
    asked = []

    def fake_load_dataset(name, split=None, **_):
        asked.append((name, split))
        if name == "offline/dataset":
            raise ConnectionError("no internet")
        return datasets.Dataset.from_list(hub_rows if name == params.Params().train_items else [{"text": "x"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = rewards.load_items(params.Params().train_items, 2)
    assert asked == [("GBaker/MedQA-USMLE-4-options", "train")]
    assert items == [{"question": hub_rows[0]["question"], "options": hub_rows[0]["options"], "answer_idx": "A",
                      "source": "GBaker/MedQA-USMLE-4-options"}] * 2
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer_idx', 'options', 'question'\]"):
        rewards.load_items("someone/other-dataset")
    with pytest.raises(ValueError, match="turn the notebook's internet on, or set TRAIN_ITEMS to a local JSON file"):
        rewards.load_items("offline/dataset")


def distinct_characters(completions, **_):
    """A reward that differs between a random model's completions, so that GRPO's group advantages are not all zero
    (the three real rewards give every completion of a random model the same value)."""
    return [len(set(text)) / 10 for text in completions]


def test_two_grpo_steps_on_the_tiny_model_use_the_rewards_and_move_only_lora(tiny_model_dir, tmp_path):
    rt = rt_mod.detect_runtime()
    model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 512)
    model = models_mod.add_lora(model, "cpu", params.Params(lora_r=4))
    rows = rewards.grpo_rows(rewards.load_items(SAMPLE)[:4], tok, "r1_chat")
    assert all(tok(r["prompt"], add_special_tokens=False)["input_ids"].count(tok.bos_token_id) == 1 for r in rows)
    before = training.weight_snapshot(model)
    head = model.get_output_embeddings()
    hooks_during_rollouts, generate = [], model.generate

    def counting_generate(*args, **kwargs):
        hooks_during_rollouts.append(len(head._forward_pre_hooks))
        return generate(*args, **kwargs)

    model.generate = counting_generate
    assert "decode speed-ups" in grpo.rollouts_with_decode_speedups(model, "cpu")  # as 07 does
    p = params.Params(work_dir=str(tmp_path), grpo_batch_size=4, num_generations=2, max_completion_length=12,
                      grpo_max_steps=2, report_to="none", grpo_learning_rate=5e-3)
    trainer = grpo.make_grpo_trainer(model, tok, rewards.load_items(SAMPLE)[:4], "r1_chat", p, "cpu", rt,
                                     [rewards.correctness_reward, rewards.format_reward, rewards.length_guard(12),
                                      distinct_characters])
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(abs(h["loss"]) < 1e3 for h in logged)
    # 12 new tokens from a random model almost never close </think>: no answer, no format bonus, the runaway penalty.
    assert all(h["rewards/correctness_reward/mean"] == 0 and h["rewards/length_guard_reward/mean"] == rewards.RUNAWAY_PENALTY
               for h in logged)
    changes = training.weight_changes(before, model)
    assert changes["lora_tensors_changed"] > 0 and changes["base_tensors_changed"] == 0
    # Each rollout ran inside 04's decode speed-ups (the head's layout hook), and none is left on the head after.
    assert hooks_during_rollouts == [1, 1] and len(head._forward_pre_hooks) == 0
    assert benchmarks.mc_question(rewards.load_items(SAMPLE)[0]) in rows[0]["prompt"]


def test_07_leaves_generate_alone_where_vllm_writes_the_rollouts(tiny_model_dir):
    model, _ = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt_mod.detect_runtime(), 256)
    generate = model.generate
    model.vllm_engine = object()  # what Unsloth's fast_inference load sets
    assert "vLLM" in grpo.rollouts_with_decode_speedups(model, "unsloth") and model.generate == generate
    model.vllm_engine = None
    assert "decode speed-ups" in grpo.rollouts_with_decode_speedups(model, "cpu") and model.generate != generate


def test_07_writes_its_answers_with_vllm_only_where_unsloth_and_vllm_are_both_there(monkeypatch):
    import importlib.util

    from medical_r1.grpo import rollout_engine

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert rollout_engine("unsloth")[0] is False and "not installed" in rollout_engine("unsloth")[1]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    assert rollout_engine("unsloth") == (True, rollout_engine("unsloth")[1]) and "vLLM" in rollout_engine("unsloth")[1]
    for backend in ("transformers", "cpu"):  # vLLM present, but only Unsloth's fast_inference drives it
        assert rollout_engine(backend)[0] is False


def test_07_keeps_the_embeddings_on_the_gpu_only_where_unsloth_graphs_the_decode(tiny_model_dir, tmp_path):
    """Unsloth graphs llama's decode step (the Llama-8B default), not Qwen2's; 03's adapter folder answers for its
    base model; the plain backends leave Unsloth's offload alone."""
    from medical_r1.grpo import embedding_offload

    llama = models_mod.build_tiny_model(tmp_path / "tiny-llama", "llama")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": llama}))
    assert embedding_offload(llama, "unsloth")[0] is False
    assert embedding_offload(str(adapter), "unsloth")[0] is False
    assert "graphs" in embedding_offload(llama, "unsloth")[1]
    assert embedding_offload(tiny_model_dir, "unsloth")[0] == "auto"
    assert embedding_offload(llama, "cpu")[0] == "auto" and embedding_offload(llama, "transformers")[0] == "auto"
    with pytest.raises(OSError, match="could not load model .*Check MODEL_NAME"):
        embedding_offload(str(tmp_path / "no-such-model"), "unsloth")
    model, _ = models_mod.load_model_and_tokenizer(llama, "cpu", rt_mod.detect_runtime(), 256, offload_embedding=False)
    assert model.config.model_type == "llama"  # Unsloth-only load options pass through the plain backends unused


@pytest.mark.parametrize("reward_sign", [1, -1], ids=["wired_as_07", "reward_negated"])
def test_grpo_learns_what_it_is_rewarded_for(tmp_path, reward_sign):
    """07's trainer (grpo.make_grpo_trainer) on a tiny model that closes its thinking now and then, rewarded for a
    closed </think> (the format reward's first step). Wired as 07 wires it, the share of answers that close their
    thinking rises from under 10% to over half in 30 steps; with the reward negated (a sign lost between the rewards
    and the update) the same assertion fails and the behaviour dies out instead. Only LoRA tensors move."""
    from medical_r1 import learning

    result = learning.grpo_learns(tmp_path, reward_sign)
    rose = result["first"] < 0.1 and result["last"] > 0.5
    assert rose == (reward_sign > 0), result["closed_share"]
    if reward_sign < 0:
        assert result["last"] <= 0.02 and sum(result["closed_share"][-10:]) == 0
    changes = result["weight_changes"]
    assert changes["lora_tensors_changed"] == changes["lora_tensors"] > 0 and changes["base_tensors_changed"] == 0
    assert pathlib.Path(result["curve"]).read_bytes()[:4] == b"\x89PNG"


def test_07_configures_its_trainer_like_make_grpo_trainer():
    """make_grpo_trainer (the learning check, the tests, the benchmark) trains what 07 trains: the same GRPOConfig
    settings and GRPOTrainer arguments, with 07's parameter names for Params' fields; only the rewards are passed in."""
    import ast

    notebook = ast.parse((REPO_ROOT / "notebooks" / "07_grpo.py").read_text())
    helper = ast.parse((REPO_ROOT / "medical_r1" / "grpo.py").read_text())
    make = next(n for n in helper.body if isinstance(n, ast.FunctionDef) and n.name == "make_grpo_trainer")
    names = {"grpo_max_steps": "GRPO_MAX_STEPS", "grpo_learning_rate": "GRPO_LEARNING_RATE", "seed": "SEED",
             "grpo_batch_size": "GRPO_BATCH_SIZE", "grpo_grad_accum": "GRPO_GRAD_ACCUM", "report_to": "REPORT_TO",
             "num_generations": "NUM_GENERATIONS", "max_completion_length": "MAX_COMPLETION_LENGTH",
             "grpo_temperature": "GRPO_TEMPERATURE", "grpo_save_steps": "GRPO_SAVE_STEPS", "work_dir": "WORK_DIR"}

    def call(tree, name):
        return next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == name)

    def keywords(node, as_notebook=False):
        found = {k.arg or "**": ast.unparse(k.value) for k in node.keywords}
        if as_notebook:
            found = {k: re.sub(r"\bp\.(\w+)", lambda m: names[m.group(1)], v) for k, v in found.items()}
        return found

    assert keywords(call(notebook, "GRPOConfig")) == keywords(call(make, "GRPOConfig"), as_notebook=True)
    ours = keywords(call(make, "GRPOTrainer"))
    theirs = keywords(call(notebook, "GRPOTrainer"))
    assert ours.pop("reward_funcs") == "reward_funcs" and theirs.pop("reward_funcs").startswith("[")
    assert theirs == ours
