"""GEN_BATCH_SIZE = 0: the generation batch chosen from the GPU memory left, never below the batch that fits a T4."""
import pytest
import torch
from transformers import LlamaConfig

from medical_r1 import generation, params, runtime

GIB = 2**30
# The Llama-8B distill's widths, with the vocabulary of the random-weight shape the benchmarks measured.
LLAMA_8B = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=151936)


class FakeModel:
    config = LLAMA_8B


def test_memory_per_row_counts_the_kv_cache_and_the_prompts_logits():
    kv_per_token = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads of 128, 16-bit: 128 KiB
    assert generation.batch_memory_per_row(LLAMA_8B, 250, 256) == kv_per_token * 506 + 250 * 151936 * 8
    # on the safe side of the 85-170 MiB per row measured on an H100 at 256 new tokens
    assert 170 * 2**20 < generation.batch_memory_per_row(LLAMA_8B, 250, 256) < 400 * 2**20
    assert generation.batch_memory_per_row(LLAMA_8B, 250, 1024) > generation.batch_memory_per_row(LLAMA_8B, 250, 256)


@pytest.mark.parametrize("free_gib, new_tokens, expected", [
    (8.5, 1024, 32),   # a T4 after the 4-bit 8B weights: the floor, which fits there (13.07 GiB peak of 15)
    (0.5, 1024, 32),   # never below the floor: too little memory shows as out-of-memory, with the hint to lower it
    (34, 1024, 64),    # a 40 GB A100 after the weights
    (70, 1024, 128),   # an 80 GB H100
    (70, 8192, 32),    # long answers take more per row
])
def test_auto_batch_takes_the_largest_that_fits(monkeypatch, free_gib, new_tokens, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "free_gpu_bytes", lambda: int(free_gib * GIB))
    batch, why = generation.auto_batch_size(FakeModel(), 250, new_tokens)
    assert batch == expected
    assert why.startswith(f"batch {expected}: {free_gib:.1f} GiB free") and "never less than 32" in why


def test_auto_batch_without_a_gpu_is_the_floor(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert generation.auto_batch_size(FakeModel(), 250, 1024) == (32, "batch 32 (no GPU)")


def test_free_gpu_bytes_respects_the_cap(monkeypatch):
    monkeypatch.setattr(runtime, "GPU_MEMORY_CAP_BYTES", 15 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 6 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 7 * GIB)
    assert runtime.free_gpu_bytes() == 9 * GIB
    monkeypatch.setattr(runtime, "GPU_MEMORY_CAP_BYTES", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (50 * GIB, 80 * GIB))
    assert runtime.free_gpu_bytes() == 51 * GIB  # the device's free memory and what torch holds unused


def test_gen_batch_size_zero_is_the_default_and_negative_is_refused():
    assert params.Params().gen_batch_size == 0
    with pytest.raises(ValueError, match="gen_batch_size must be an integer >= 0"):
        params.Params(gen_batch_size=-1)


def test_generate_answers_with_batch_zero_says_what_it_chose(tiny_model_dir, tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    answers = generation.generate_answers(model, tokenizer, generation.QUESTIONS[:2], "r1_chat",
                                          generation.GenerationSettings(max_new_tokens=2, do_sample=False), "cpu")
    assert [a["id"] for a in answers] == [q["id"] for q in generation.QUESTIONS[:2]]
    assert "generation batch 32 (no GPU)" in capsys.readouterr().out


def test_benchmark_plan_says_the_batch_it_chose_the_rate_and_what_the_budget_holds(tiny_model_dir, tokenizer, capsys):
    import re

    from transformers import AutoModelForCausalLM

    from medical_r1 import benchmarks, data, rounds

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    eval_data = benchmarks.load_eval_data(str(data.SAMPLE_DATA_DIR / "eval_data.json"), 2, seed=0)
    settings = generation.choose_batch_size(model, tokenizer, benchmarks.benchmark_questions(eval_data)[1], "r1_chat",
                                            generation.GenerationSettings(max_new_tokens=1024))  # once, as 04 does
    assert settings.batch_size == 32 and capsys.readouterr().out.startswith("generation batch 32 (no GPU)")
    order = rounds.draw_order(eval_data, 0)
    plan = benchmarks.benchmark_plan(model, tokenizer, order, "r1_chat", settings, "cpu", minutes=60)
    assert "generation batch" not in capsys.readouterr().out  # chosen once, not again in each call
    assert benchmarks.benchmark_plan(model, tokenizer, order, "r1_chat", settings.replace(batch_size=0), "cpu", 60) \
        and "generation batch 32 (no GPU)" in capsys.readouterr().out  # left at 0, the plan chooses it itself
    found = re.search(r"measured ([\d,.]+) generated tokens/s at batch 10; a round \(32 items, answered by 2 models, "
                      r"up to 1024 tokens each\) takes at most ([\d.]+) (min|s) here, so EVAL_MINUTES = 60 holds all 1 "
                      r"round the 10 items drawn need", plan)
    assert found, plan
    rate, took = float(found.group(1).replace(",", "")), float(found.group(2)) / (60 if found.group(3) == "s" else 1)
    assert rate > 0 and took == pytest.approx(2 * 32 * 1024 / rate / 60, rel=0.05, abs=0.06)
    # a budget shorter than one round still gets that round (the GPU check's EVAL_MINUTES = 1), and says so
    short = benchmarks.benchmark_plan(model, tokenizer, order, "r1_chat", settings, "cpu", minutes=1e-6)
    assert "is shorter than one round, so 04 answers one round and stops" in short, short
