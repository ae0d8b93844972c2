"""The grouped decode attention that replaces Unsloth's attention core in the CUDA-graph decode step: it must
give the attention Unsloth computes (K and V repeated per query group, float32 softmax over the unmasked
cache rows), and be switched in only for the block."""
import math
import sys
import types

import pytest
import torch

from medical_r1 import generation


def decode_cache(batch=3, kv_heads=2, groups=4, length=11, head_dim=16, dtype=torch.float32, seed=0):
    """An attention module's decode state as Unsloth lays it out: cache [rows, 2, batch, kv_heads, head_dim]
    with spare rows, queries [batch, heads, 1, head_dim] as a transposed view, left padding in the mask."""
    g = torch.Generator().manual_seed(seed)
    paged = torch.randn(length + 5, 2, batch, kv_heads, head_dim, generator=g).to(dtype)
    attn = types.SimpleNamespace(paged_attention_K=paged[:, 0], paged_attention_V=paged[:, 1],
                                 config=types.SimpleNamespace(sliding_window=None))
    queries = torch.randn(batch, 1, kv_heads * groups, head_dim, generator=g).to(dtype).transpose(1, 2)
    keep = torch.ones(batch, length, dtype=torch.bool)
    for row in range(batch):
        keep[row, :row * 2] = False  # row r has 2r pad positions on the left
    return attn, queries, keep


def reference_attention(attn, queries, kv_len, keep):
    """Unsloth's batched core written out: repeat K and V for each query group, float32 scores and softmax."""
    keys = attn.paged_attention_K[:kv_len].permute(1, 2, 0, 3).float()
    values = attn.paged_attention_V[:kv_len].permute(1, 2, 0, 3).float()
    groups = queries.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    scores = queries.float() @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    scores = scores.masked_fill(~keep[:, None, None, :kv_len], float("-inf"))
    return scores.softmax(-1) @ values


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mask_form", ["bool 4-D", "2-D padding", "additive 4-D", "none"])
def test_grouped_attention_equals_repeated_kv_attention(mask_form, fused):
    attn, queries, keep = decode_cache()
    kv_len = keep.shape[1]
    masks = {"bool 4-D": keep[:, None, None, :], "2-D padding": keep.long(),
             "additive 4-D": torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)[:, None, None, :],
             "none": None}
    if mask_form == "none":
        keep = torch.ones_like(keep)
    got = generation.grouped_query_decode_attention(attn, queries, kv_len, masks[mask_form], fused)
    want = reference_attention(attn, queries, kv_len, keep)
    assert got.shape == queries.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_grouped_attention_reads_only_the_first_kv_len_rows():
    """Rows past kv_len (spare cache rows) must not change the result."""
    attn, queries, keep = decode_cache()
    kv_len = keep.shape[1] - 3
    before = generation.grouped_query_decode_attention(attn, queries, kv_len, keep[:, None, None, :kv_len])
    attn.paged_attention_K[kv_len:] = 1e4
    attn.paged_attention_V[kv_len:] = 1e4
    after = generation.grouped_query_decode_attention(attn, queries, kv_len, keep[:, None, None, :kv_len])
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    torch.testing.assert_close(after, reference_attention(attn, queries, kv_len, keep), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_grouped_attention_in_bfloat16_stays_within_rounding_of_float32(fused):
    attn, queries, keep = decode_cache(dtype=torch.bfloat16, head_dim=64, length=40)
    got = generation.grouped_query_decode_attention(attn, queries, keep.shape[1], keep[:, None, None, :], fused)
    want = reference_attention(attn, queries, keep.shape[1], keep)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 2e-2


def test_unfused_grouped_attention_is_sdpa_math_up_to_float32_rounding():
    """fused=False must give what torch's math SDPA gives on the repeated K and V (the path Unsloth's core takes
    on the GPU, float32 inside), up to the order of float32 sums (4e-7 here), far below bfloat16's rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn, queries, keep = decode_cache(head_dim=32, length=23)
    kv_len = keep.shape[1]
    keys = attn.paged_attention_K[:kv_len].permute(1, 2, 0, 3).repeat_interleave(4, 1)
    values = attn.paged_attention_V[:kv_len].permute(1, 2, 0, 3).repeat_interleave(4, 1)
    with sdpa_kernel([SDPBackend.MATH]):
        want = torch.nn.functional.scaled_dot_product_attention(queries, keys, values, attn_mask=keep[:, None, None, :])
    got = generation.grouped_query_decode_attention(attn, queries, kv_len, keep[:, None, None, :], fused=False)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_the_switch_replaces_unsloths_core_only_in_the_block(monkeypatch):
    calls = []

    def unsloth_core(attn, queries, kv_len, mask, batch, sdpa_gqa_with_batch_mask):
        calls.append(batch)
        return "unsloth", None, None

    llama = types.ModuleType("unsloth.models.llama")
    llama._decode_attention_core = unsloth_core
    monkeypatch.setitem(sys.modules, "unsloth.models.llama", llama)
    monkeypatch.setattr(generation, "unsloth_version", lambda: "2026.10.9")
    attn, queries, keep = decode_cache()
    with generation.grouped_decode_attention():
        out, _, _ = llama._decode_attention_core(attn, queries, keep.shape[1], keep[:, None, None, :], 3, True)
        torch.testing.assert_close(out, reference_attention(attn, queries, keep.shape[1], keep), atol=1e-5, rtol=1e-5)
        assert llama._decode_attention_core(attn, queries[:1], keep.shape[1], None, 1, True)[0] == "unsloth"
        attn.config.sliding_window = 4
        assert llama._decode_attention_core(attn, queries, keep.shape[1], None, 3, True)[0] == "unsloth"
    assert calls == [1, 3]
    assert llama._decode_attention_core is unsloth_core
    with generation.grouped_decode_attention(active=False):
        assert llama._decode_attention_core is unsloth_core


def test_an_untested_unsloth_keeps_its_own_core_and_says_so_once(monkeypatch, capsys):
    """The grouped core replaces a private function of Unsloth; a release it was not tested on keeps Unsloth's."""
    def unsloth_core(*args):
        return "unsloth", None, None

    llama = types.ModuleType("unsloth.models.llama")
    llama._decode_attention_core = unsloth_core
    monkeypatch.setitem(sys.modules, "unsloth.models.llama", llama)
    monkeypatch.setattr(generation, "unsloth_version", lambda: "2027.1.1")
    for _ in range(2):
        with generation.grouped_decode_attention():
            assert llama._decode_attention_core is unsloth_core
    said = capsys.readouterr().out
    assert said.count("Unsloth 2027.1.1's own core") == 1 and "2026.10.9" in said


def test_the_switch_does_nothing_without_unsloth(monkeypatch):
    monkeypatch.delitem(sys.modules, "unsloth.models.llama", raising=False)
    with generation.grouped_decode_attention():
        assert "unsloth.models.llama" not in sys.modules


def test_generate_answers_switches_the_grouped_core_in_around_generate(monkeypatch, tiny_model_dir, tokenizer):
    """04's generate_answers has the grouped core in place while model.generate runs (where Unsloth's graph
    step would call it), and Unsloth's own back afterwards; grouped_attention=False leaves Unsloth's core."""
    from transformers import AutoModelForCausalLM

    def unsloth_core(*args):
        raise AssertionError("not called on the CPU")

    llama = types.ModuleType("unsloth.models.llama")
    llama._decode_attention_core = unsloth_core
    monkeypatch.setitem(sys.modules, "unsloth.models.llama", llama)
    monkeypatch.setattr(generation, "unsloth_version", lambda: "2026.10.9")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seen = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        seen.append(llama._decode_attention_core is unsloth_core)
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    question = generation.QUESTIONS[:1]
    two_tokens = generation.GenerationSettings(max_new_tokens=2, do_sample=False, batch_size=1, seed=0)
    generation.generate_answers(model, tokenizer, question, "r1_chat", two_tokens, "cpu")
    generation.generate_answers(model, tokenizer, question, "r1_chat", two_tokens, "cpu", grouped_attention=False)
    assert seen == [False, True]
    assert llama._decode_attention_core is unsloth_core


def test_greedy_answers_with_the_grouped_core_equal_todays_token_for_token(tmp_path, tokenizer):
    """The tiny Llama (grouped-query attention, 4 heads over 2 KV heads) decodes 04's questions, left-padded in one
    batch, once with torch's SDPA and once with every decode step's attention computed by the grouped core over
    its cache laid out as Unsloth's: the greedy answers are the same, token for token. (On the CPU Unsloth's graph
    step does not run, so this drives the core through transformers' attention interface instead.)"""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from medical_r1 import models as models_mod

    calls = []

    def grouped_core_attention(module, query, key, value, attention_mask, **kwargs):
        if query.shape[2] != 1:  # the prefill: torch's SDPA, as Unsloth's prefill is not the decode core
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        calls.append(query.shape[0])
        cache = types.SimpleNamespace(paged_attention_K=key.permute(2, 0, 1, 3),
                                      paged_attention_V=value.permute(2, 0, 1, 3))
        mask = attention_mask[:, :, :, : key.shape[2]] if attention_mask is not None else None
        out = generation.grouped_query_decode_attention(cache, query, key.shape[2], mask)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("grouped_core_test", grouped_core_attention)
    AttentionMaskInterface.register("grouped_core_test", sdpa_mask)
    path = models_mod.build_tiny_model(tmp_path / "tiny-llama", "llama")
    kwargs = dict(template="r1_chat", backend="cpu", min_new_tokens=12, settings=generation.GenerationSettings(
        max_new_tokens=12, do_sample=False, batch_size=len(generation.QUESTIONS), seed=0))
    answers = {}
    for implementation in ("sdpa", "grouped_core_test"):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=implementation)
        answers[implementation] = [a["output"] for a in generation.generate_answers(
            model, tokenizer, generation.QUESTIONS, **kwargs)]
    assert calls and set(calls) == {len(generation.QUESTIONS)}  # the core ran, on the whole batch
    assert answers["grouped_core_test"] == answers["sdpa"]
