"""The token-level traps: one BOS, the CoT kept, the prompt a prefix of the training ids, eos a label."""
import pytest
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

import src_helpers as sh
from medical_r1 import data as data_mod

TEMPLATES = sorted(sh.TEMPLATES)


def test_fixture_reproduces_the_double_bos_trap(tokenizer):
    text = sh.render_prompt(tokenizer, "Why?", "r1_chat")
    naive = tokenizer(text)["input_ids"]
    assert naive[:2] == [tokenizer.bos_token_id, tokenizer.bos_token_id]  # what the tutorials train on
    assert sh.encode_prompt(tokenizer, "Why?", "r1_chat").count(tokenizer.bos_token_id) == 1


def test_fixture_has_the_real_special_tokens(tokenizer):
    assert tokenizer.bos_token == "<｜begin▁of▁sentence｜>"
    assert tokenizer.eos_token == "<｜end▁of▁sentence｜>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # pad = eos, as in the real tokenizer
    for token in ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


def test_decoding_keeps_think_and_the_turn_markers_as_the_real_tokenizer_does(tokenizer):
    """In the real tokenizer.json only BOS and EOS are special; <think>, </think> and the turn markers are kept by
    decode(skip_special_tokens=True), which TRL's GRPO uses for the completions its rewards read and 04 for its
    answers. A fixture that dropped </think> would make every answer look unfinished."""
    text = "<｜User｜>Hi<｜Assistant｜><think>\nReasoning\n</think>\n\nThe answer is B."
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_r1_chat_prompt_exact_tokens(tokenizer):
    ids = sh.encode_prompt(tokenizer, "Hi", "r1_chat")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:2] == ["<｜begin▁of▁sentence｜>", "<｜User｜>"]
    assert tokens[-3:] == ["<｜Assistant｜>", "<think>", "Ċ"]  # Ċ is "\n" in byte-level BPE


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_prompt_ends_by_opening_the_thought(tokenizer, template):
    prompt = sh.render_prompt(tokenizer, "What is gout?", template)
    assert prompt.endswith("<think>\n")
    assert prompt.startswith(tokenizer.bos_token) and prompt.count(tokenizer.bos_token) == 1


def test_named_templates_hold_the_seed_wording(tokenizer):
    assert "### Response:\n<think>\n" in sh.render_prompt(tokenizer, "q", "alpaca_r1")
    assert "请一步一步推理下面的问题" in sh.render_prompt(tokenizer, "q", "zh_r1")
    with pytest.raises(ValueError, match="unknown template"):
        sh.render_prompt(tokenizer, "q", "chatml")


@pytest.mark.parametrize("template", TEMPLATES)
def test_inference_prompt_is_the_prefix_of_every_training_example(tokenizer, en_rows, zh_rows, template):
    for row in en_rows + zh_rows:
        enc = sh.encode_example(tokenizer, row, template)
        prompt_ids = sh.encode_prompt(tokenizer, row["Question"], template)
        assert enc["input_ids"][:len(prompt_ids)] == prompt_ids
        assert enc["input_ids"].count(tokenizer.bos_token_id) == 1
        assert enc["input_ids"][-1] == tokenizer.eos_token_id


def test_every_cot_survives_formatting(tokenizer, en_rows, zh_rows):
    records, dropped = data_mod.format_rows(en_rows + zh_rows, tokenizer, "r1_chat", 2048)
    assert dropped == 0 and len(records) == len(en_rows) + len(zh_rows)
    for row, rec in zip(en_rows + zh_rows, records):
        text = tokenizer.decode(rec["input_ids"])
        assert row["Complex_CoT"].strip() in text
        assert row["Complex_CoT"].strip() + "\n</think>\n\n" + row["Response"].strip() + tokenizer.eos_token in text


def test_rendering_the_conversation_through_the_template_would_drop_the_cot(tokenizer, en_rows):
    row = en_rows[0]
    assistant = "<think>\n" + row["Complex_CoT"] + "\n</think>\n\n" + row["Response"]
    naive = tokenizer.apply_chat_template([{"role": "user", "content": row["Question"]},
                                           {"role": "assistant", "content": assistant}], tokenize=False)
    assert row["Complex_CoT"] not in naive  # the trap this project avoids
    assert row["Response"] in naive


def test_loss_mask_covers_completion_only_by_default(tokenizer, en_rows):
    enc = sh.encode_example(tokenizer, en_rows[0], "r1_chat")
    n = enc["prompt_len"]
    assert enc["labels"][:n] == [-100] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    full = sh.encode_example(tokenizer, en_rows[0], "r1_chat", completion_only_loss=False)
    assert full["labels"] == full["input_ids"]


def test_final_eos_is_a_label_in_a_collated_batch(tokenizer, en_rows):
    records, _ = data_mod.format_rows(en_rows[:4], tokenizer, "r1_chat", 2048)
    assert len({len(r["input_ids"]) for r in records}) > 1  # different lengths, so padding happens
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    batch = collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])
    for i, rec in enumerate(records):
        n = len(rec["input_ids"])
        assert batch["labels"][i, n - 1].item() == tokenizer.eos_token_id
        assert (batch["labels"][i, n:] == -100).all()
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()  # pads are eos ids, yet not labels


def test_over_length_rows_are_dropped_and_counted_never_cut(tokenizer, en_rows):
    lengths = [len(sh.encode_example(tokenizer, r)["input_ids"]) for r in en_rows]
    limit = sorted(lengths)[len(lengths) // 2]
    records, dropped = data_mod.format_rows(en_rows, tokenizer, "r1_chat", limit)
    assert dropped == sum(n > limit for n in lengths) > 0
    assert len(records) + dropped == len(en_rows)
    assert all(r["input_ids"][-1] == tokenizer.eos_token_id and len(r["input_ids"]) <= limit for r in records)
