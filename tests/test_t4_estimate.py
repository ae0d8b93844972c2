"""The T4 estimate (medical_r1/t4_estimate.py): its arithmetic, that its calibration gives back the measurements it
was taken from, and that 03 and 07 print and say what it gives."""
import json
import pathlib
import re
import sys

import pytest

from medical_r1 import params
from medical_r1 import t4_estimate as t4

ROOT = pathlib.Path(__file__).resolve().parents[1]
LLAMA = params.MODELS["llama-8b"]


def test_the_shapes_count_the_weights_as_the_training_benchmark_does():
    """N (every matmul's weights) is bench_train's count, from the real config.json of each distill."""
    sys.path.insert(0, str(ROOT / "lab" / "bench"))
    import bench_train

    for key, shape in t4.SHAPES.items():
        config = {"hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
                  "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
                  "num_key_value_heads": shape.kv_heads, "vocab_size": shape.vocab, "head_dim": shape.head_dim}
        assert shape.matmul_params == bench_train.matmul_parameters(config), key
    llama = t4.SHAPES["llama-8b"]
    # 32 layers x (2 x 4096^2 + 2 x 4096 x 1024 + 3 x 4096 x 14336) + the head, 4096 x 128,256
    assert llama.quantized_params == 32 * 218_103_808 and llama.head_params == 525_336_576
    assert llama.kv_bytes_per_token == 128 * 1024  # 128 KiB a token, as BENCHMARKS_LOG counts it


def test_models_are_found_by_name_and_others_get_no_estimate():
    assert t4.shape_for(LLAMA) == t4.SHAPES["llama-8b"]
    assert t4.shape_for("/kaggle/input/x/DeepSeek-R1-Distill-Qwen-1.5B") == t4.SHAPES["qwen-1.5b"]
    assert t4.shape_for("tests/fixtures/tiny-qwen2") is None
    assert t4.training_minutes("tiny", 60, 2, 2, 2048) is None
    assert t4.describe_training("tiny", 60, 2, 2, 2048).startswith("T4 estimate: none for tiny")


def test_a_decode_step_reads_the_4_bit_weights_and_above_batch_1_their_fp16_copies():
    llama = t4.SHAPES["llama-8b"]
    one = t4.decode_step_bytes(llama, 1, 0)
    assert one == pytest.approx(llama.quantized_params * (0.5 + 1 / 64) + llama.head_params * 2)
    # batch 2: + 4 bytes a weight (fp16 written, then read) + two answers' KV cache of 100 tokens
    two = t4.decode_step_bytes(llama, 2, 100)
    assert two - one == pytest.approx(llama.quantized_params * 4 + 2 * 100 * 128 * 1024)
    # at batch 1 the T4's floor is the bytes over the bandwidth a kernel reaches: about 16 ms for the 8B
    floor = t4.decode_step_floor_s(llama, 1, 0, t4.T4)
    assert floor == pytest.approx(one / (320e9 * t4.BANDWIDTH_EFFICIENCY)) and 0.014 < floor < 0.018


def test_the_calibration_gives_back_the_measurements_it_was_taken_from():
    """The H100 dequantisation (5.9 ms a step) sets the bandwidth share; the H200's decode steps at batch 4 and 32
    are its floor plus the overhead; its training step is 4N x tokens at the measured MFU."""
    assert 0.85 < t4.BANDWIDTH_EFFICIENCY < 0.92
    context = t4.PROMPT_TOKENS + 512
    for batch, rate in t4.DECODE_MEASURED_H200:
        step = t4.decode_step_floor_s(t4.LAB_LLAMA_8B, batch, context, t4.H200) + t4.step_overhead_s(batch)
        assert batch / step == pytest.approx(rate)
    assert 0 < t4.step_overhead_s(4) < t4.step_overhead_s(16) < t4.step_overhead_s(32) == t4.step_overhead_s(64)
    h200_step = t4.train_step_seconds(t4.LAB_LLAMA_8B, t4.TRAIN_STEP_TOKENS_MEASURED, t4.H200)
    assert h200_step == pytest.approx(21.125 / 20, rel=0.01)  # a_project: 20 steps in 21.125 s
    raw = json.loads((ROOT / "lab/bench/results/grpo_bench.json").read_text())["summary"]
    assert raw["rollout_tokens_per_s"] == t4.DECODE_MEASURED_H200[0][1]


def test_the_t4_figures_follow_from_the_rates():
    """03: 60 steps of 2 x 2 packed rows of 2,048 at the measured fill, 4N FLOPs a token, at 27% of 39 TFLOP/s."""
    llama = t4.SHAPES["llama-8b"]
    tokens = 2 * 2 * 2048 * t4.PACKED_FILL
    expected = 60 * 4 * llama.matmul_params * tokens / (65e12 * 0.6 * 0.27) / 60
    assert t4.training_minutes(LLAMA, 60, 2, 2, 2048) == pytest.approx(expected) and 18 < expected < 25
    assert t4.training_minutes(LLAMA, 60, 2, 2, 2048, packing=False) < expected  # 683-token examples, not rows
    # 04: more answers a minute at a bigger batch; the 1.5B faster than the 8B
    assert t4.eval_items_per_minute(LLAMA, 64) > t4.eval_items_per_minute(LLAMA, 32) > t4.eval_items_per_minute(LLAMA,
                                                                                                               16)
    assert t4.eval_items_per_minute(params.MODELS["qwen-1.5b"]) > 3 * t4.eval_items_per_minute(LLAMA)
    # 07: the rollout (4 answers of 1,024 tokens) and the training on them
    shape_seconds = (t4.answer_seconds(llama, 4, 1024) + t4.train_step_seconds(llama, 4 * (t4.PROMPT_TOKENS + 1024)))
    assert t4.grpo_step_seconds(LLAMA, 4, 4, 1024) == pytest.approx(shape_seconds)
    assert t4.grpo_step_seconds(LLAMA, 4, 4, 1024, grad_accum=2) == pytest.approx(2 * shape_seconds)
    with pytest.raises(ValueError, match="GRPO_BATCH_SIZE"):
        t4.grpo_step_seconds(LLAMA, 6, 4, 1024)


def test_about_keeps_two_significant_figures():
    assert [t4.about(x) for x in (21.4, 138.7, 1353, 3.96, 0.44)] == ["21", "140", "1,400", "4", "0.4"]


def test_03_and_07_say_and_print_what_the_estimate_gives():
    """The 'Time on a T4' line of each notebook quotes the function's figure for its defaults, and the settings
    cell prints the function's line for the run's own settings."""
    d = params.Params()
    minutes = t4.about(t4.training_minutes(LLAMA, d.max_steps, d.batch_size, d.grad_accum, d.max_seq_length))
    train = (ROOT / "notebooks/03_train.py").read_text()
    assert re.search(rf"\*\*Time on a T4.*about {minutes} minutes for {d.max_steps} steps", train)
    assert "print(describe_training(" in train.replace("t4_estimate.", "")
    seconds = t4.about(t4.grpo_step_seconds(LLAMA, d.grpo_batch_size, d.num_generations, d.max_completion_length))
    grpo = (ROOT / "notebooks/07_grpo.py").read_text()
    assert re.search(rf"\*\*Time on a T4.*about {seconds} s a step", grpo.replace("\n# ", " "))
    assert "print(describe_grpo(" in grpo.replace("t4_estimate.", "")
    # 04: the items per model its default budget holds, quoted in the header and the parameters cell, printed by the plan
    items = t4.about(d.eval_minutes * t4.eval_items_per_minute(LLAMA, 32, d.eval_max_new_tokens) / 2)
    compare = (ROOT / "notebooks/04_compare.py").read_text()
    assert re.search(rf"\*\*Time on a T4.*about {items} items per model", compare.replace("\n# ", " "))
    assert f"(about {items} items per model on a T4, estimated)" in compare
    assert "print(describe_evaluation(" in compare
    assert t4.describe_evaluation(LLAMA, 32, 1024, 60, 2).endswith(f"hold about {items} items per model for 2 models")
