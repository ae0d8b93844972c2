"""The benchmark scripts' counting on CPU: the GPU runs are only as right as these."""
import json
import pathlib
import sys

import pytest
import torch

import src_helpers as sh
from medical_r1 import data as data_mod
from medical_r1 import models as models_mod
from medical_r1 import runtime as rt_mod

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab" / "bench"))
import bench_train  # noqa: E402


def test_matmul_parameters_counts_every_linear_weight(tiny_model_dir):
    model = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt_mod.detect_runtime(), 512)[0]
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = json.loads((pathlib.Path(tiny_model_dir) / "config.json").read_text())
    assert bench_train.matmul_parameters(config) == linear


def test_answer_positions_are_those_after_the_assistant_token(tokenizer, en_rows):
    records, _ = data_mod.format_rows(en_rows[:2], tokenizer, "r1_chat", 2048)
    ids = torch.tensor(records[0]["input_ids"] + records[1]["input_ids"] + [tokenizer.pad_token_id] * 3)
    real = torch.tensor([True] * (len(ids) - 3) + [False] * 3)
    assistant = tokenizer.convert_tokens_to_ids("<｜Assistant｜>")
    answer = bench_train.completion_positions(ids, real, tokenizer.bos_token_id, assistant)
    # completion-only labels mark exactly the tokens after the prompt, which ends "<｜Assistant｜><think>\n"
    expected = sum(sum(t != -100 for t in r["labels"]) for r in records)
    prompt_tail = len(sh.encode_text(tokenizer, "<think>\n"))
    assert int(answer.sum()) == expected + 2 * prompt_tail


def test_counting_collator_counts_padding(tokenizer, en_rows):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    records, _ = data_mod.format_rows(en_rows[:2], tokenizer, "r1_chat", 2048)
    counter = bench_train.CountingCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
                                           tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<｜Assistant｜>"))
    counter([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])
    lengths = [len(r["input_ids"]) for r in records]
    assert counter.batches[0]["positions"] == 2 * max(lengths)
    assert counter.batches[0]["real"] == sum(lengths)
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    bucketed = bench_train.CountingCollator(bench_train.BucketedCollator(packed, 512, tokenizer.pad_token_id),
                                            tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<｜Assistant｜>"))
    bucketed([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])
    assert bucketed.batches[0]["positions"] % 512 == 0 and bucketed.batches[0]["real"] == sum(lengths)


@pytest.mark.parametrize(("value", "met"), [(4.5, True), (3.9, False)])
def test_verdicts_compare_with_the_targets(value, met):
    fake = {"mfu": 0.3, "peak_reserved_gib": 7.0}
    results = {"a_project": {**fake, "answer_tokens_per_s": value}, "b_seed": {**fake, "answer_tokens_per_s": 1.0},
               "c_peft_bnb": {**fake, "answer_tokens_per_s": 1.0}}
    v = bench_train.verdicts(results)
    assert v["a_over_c"]["met"] is met and v["peak_gib"]["met"] is True and v["mfu"]["met"] is False
    assert bench_train.verdicts({"a_project": {"error": "x"}})["a_over_b"]["met"] is None


def test_steady_seconds_per_step_leaves_out_the_first_steps():
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab" / "gpu"))
    import bench_ddp

    assert bench_ddp.steady_seconds_per_step([30.0, 31.0, 32.0, 33.5, 35.0], skip=2) == pytest.approx(4.0 / 3)  # from the end of step 2 to the end of step 5


def test_the_raw_loop_trains_on_the_trainers_own_batches(tiny_model_dir, en_rows):
    """Configuration (r) of bench_train: its first loss equals the trainer's first logged loss on the same model,
    so the two are timed on the same work."""
    from medical_r1 import params
    from medical_r1 import training as training_mod

    rt = rt_mod.detect_runtime()
    first = {}
    for mode in ("trainer", "raw"):
        p = params.Params(model_name=tiny_model_dir, max_steps=2, batch_size=2, grad_accum=1, warmup_steps=0,
                          save_steps=100, eval_steps=100, report_to="none", work_dir=f"/tmp/raw-loop-test-{mode}")
        model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 2048)
        model = models_mod.add_lora(model, "cpu", p)
        records, _ = data_mod.format_rows(en_rows[:8], tok, "r1_chat", 2048)
        trainer = training_mod.make_trainer(model, tok, records, [], p, "cpu", rt)
        if mode == "raw":
            marks = []
            first[mode] = bench_train.raw_loop(trainer, model, p, 2, marks, {}, profile_from=99)[0]
            assert len(marks) == 2 and marks[1] > marks[0] > 0
        else:
            trainer.train()
            first[mode] = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    assert first["raw"] == pytest.approx(first["trainer"], rel=1e-4)


@pytest.mark.parametrize("rollout_speedups", [False, True])
def test_grpo_bench_times_every_rollout_the_trainer_makes_and_counts_its_tokens(tiny_model_dir, tmp_path,
                                                                               rollout_speedups):
    """bench_grpo on the tiny model (CPU, 2 answers of 8 tokens): one timed generate call per GRPO step, each
    with the step's answers and their real new tokens; 04's loop answers the same question as often. The load
    follows 07's embedding choice unless told otherwise, and the rollouts run inside 04's speed-ups as 07's do
    unless told otherwise."""
    import bench_grpo

    raw = bench_grpo.child(3, tmp_path, pathlib.Path(tiny_model_dir),
                           {"num_generations": 2, "grpo_batch_size": 2, "max_completion_length": 8},
                           rollout_speedups=rollout_speedups)
    assert raw["offload_embedding"] == "notebook" and raw["offload_embedding_passed"] == "auto"  # CPU: not Unsloth
    assert raw["rollout_speedups"] is rollout_speedups
    assert len(raw["step_seconds"]) == 3 and len(raw["rollouts"]) == 3
    assert all(r["rows"] == 2 and 0 < r["new_tokens"] <= 2 * 8 for r in raw["rollouts"])
    assert all(r["decode_graphs"] == {} for r in raw["rollouts"])  # Unsloth's graph counters: none on the CPU
    warmup, timed = raw["generate_answers"]
    assert warmup["max_new_tokens"] == 8 and timed["max_new_tokens"] == 8  # the smoke size: 8-token answers
    assert 0 < timed["new_tokens"] <= 2 * 8
    summary = bench_grpo.summarise(raw)
    assert 0 < summary["rollout_share"] <= 1 and summary["rollout_tokens_per_s"] > 0
    assert summary["faster"] in ("generate_answers", "the trainer's generate")


@pytest.mark.parametrize("t4_mode", [True, False])
def test_the_capped_generation_run_asks_for_a_t4s_15_gib_in_either_mode(monkeypatch, tmp_path, t4_mode):
    """The capped run caps its process at 15 GiB, in T4 mode too, where the cap is read as a fraction of the T4's
    15 GiB (t4_device; test_t4_mode_answers_... checks it), and says which mode it ran in."""
    import bench_generate

    seen = {}

    def fake_load(model_dir, precision, memory_cap_gib, **options):
        seen.update(cap=memory_cap_gib, precision=precision, options=options)
        return object(), object(), "unsloth"

    monkeypatch.setattr(bench_generate, "load_4bit_with_adapter", fake_load)
    monkeypatch.setattr(bench_generate, "eval_questions", lambda n: [{"question": "q"}] * n)
    monkeypatch.setattr(bench_generate, "timed_generation", lambda *a, **k: {"tokens_per_s": 1.0})
    monkeypatch.setenv("MEDICAL_R1_T4", "1") if t4_mode else monkeypatch.delenv("MEDICAL_R1_T4", raising=False)
    bench_generate.t4_cap_run("/models/llama-8b", 1024, tmp_path, 16, "false")
    assert seen == {"cap": 15, "precision": "fp16", "options": {"offload_embedding": False}}
    row = json.loads((tmp_path / "t4_cap.json").read_text())
    assert row["t4_mode"] is t4_mode and row["tokens_per_s"] == 1.0


def test_the_repeated_raw_loop_cycles_over_its_first_batches_and_counts_each_use(tiny_model_dir, en_rows):
    """r_raw_loop_repeated: 4 micro-batches taken from 2 are the 2 again, in order, and each use is counted, so the
    timed window's tokens are those the loop computed."""
    from medical_r1 import params
    from medical_r1 import training as training_mod

    rt = rt_mod.detect_runtime()
    p = params.Params(model_name=tiny_model_dir, max_steps=4, batch_size=1, grad_accum=1, warmup_steps=0, packing=False,
                      save_steps=100, eval_steps=100, report_to="none", work_dir="/tmp/raw-loop-repeat-test")
    model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 2048)
    model = models_mod.add_lora(model, "cpu", p)
    records, _ = data_mod.format_rows(en_rows[:8], tok, "r1_chat", 2048)
    trainer = training_mod.make_trainer(model, tok, records, [], p, "cpu", rt)
    counter = bench_train.CountingCollator(trainer.data_collator, tok.bos_token_id,
                                           tok.convert_tokens_to_ids("<｜Assistant｜>"))
    trainer.data_collator = counter
    losses = bench_train.raw_loop(trainer, model, p, 4, [], {}, profile_from=99, repeat=2)
    assert len(counter.batches) == 4 and counter.batches[2:] == counter.batches[:2]
    assert counter.batches[0] != counter.batches[1]  # two different examples, not one counted twice
    assert losses[2] < losses[0]  # the same batch again, after two optimizer steps on it: learned


@pytest.mark.parametrize("t4_mode", [True, False])
def test_generate_bench_runs_its_capped_row_with_the_load_and_batch_asked_and_in_t4_mode_when_asked(
        monkeypatch, tmp_path, t4_mode):
    """The capped run is a process of its own: it gets the batch and embedding load asked for, and sees a T4 (the
    T4 mode's sitecustomize first on its path) only with --t4-mode; what it wrote comes back."""
    import argparse
    import subprocess

    import bench_generate

    seen = {}

    def fake_run(command, check, env):
        seen.update(command=command, env=env)
        (tmp_path / "t4_cap.json").write_text(json.dumps({"tokens_per_s": 1.0}))

    monkeypatch.delenv("MEDICAL_R1_T4", raising=False)
    monkeypatch.setattr(subprocess, "run", fake_run)
    args = argparse.Namespace(out=tmp_path, t4_new_tokens=1024, t4_batch=16, t4_offload_embedding="false",
                              t4_mode=t4_mode)
    assert bench_generate.capped_run("/models/llama-8b", args) == {"tokens_per_s": 1.0}
    command = seen["command"]
    assert command[command.index("--t4-batch") + 1] == "16" and "--t4-cap" in command
    assert command[command.index("--t4-offload-embedding") + 1] == "false"
    assert (seen["env"].get("MEDICAL_R1_T4") == "1") is t4_mode


def test_the_model_building_child_finds_real_shapes_where_it_lives(monkeypatch, tmp_path):
    """build_model_in_child puts its own folder on the child's path (after lab/ moved, it named the old gpu/
    folder and the GPU run stopped at once)."""
    import ast
    import subprocess

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab" / "gpu"))
    import real_shapes

    seen = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: seen.append(command))
    real_shapes.build_model_in_child("llama-8b", tmp_path / "model")
    code = seen[0][-1]
    folder = ast.literal_eval(code.split("sys.path.insert(0, ")[1].split(")")[0])
    assert (pathlib.Path(folder) / "real_shapes.py").exists()
