"""Packing: whole examples laid end to end without padding must train on exactly the same loss as padded
batches, and no example may see another's tokens."""
import pathlib
import sys

import pytest
import torch

from medical_r1 import data as data_mod
from medical_r1 import models as models_mod
from medical_r1 import params
from medical_r1 import runtime as rt_mod
from medical_r1 import training as training_mod

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lab" / "bench"))
import bench_train  # noqa: E402  (the bucketed collator it measures)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory, en_rows):
    rt = rt_mod.detect_runtime()
    model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 2048)
    records, _ = data_mod.format_rows(en_rows[:9], tok, "r1_chat", 2048)
    trainers = {}
    for packing in (True, False):
        p = params.Params(work_dir=str(tmp_path_factory.mktemp("w")), model_name=tiny_model_dir, max_steps=1,
                      batch_size=3, grad_accum=1, report_to="none", packing=packing, max_seq_length=2048)
        trainers[packing] = training_mod.make_trainer(model, tok, records, [], p, "cpu", rt)
    return {"model": model, "records": records, "trainers": trainers}


def examples(records):
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records]


def test_packing_keeps_every_example_whole(setup):
    packed = setup["trainers"][True].train_dataset
    lengths = sorted(n for row in packed["seq_lengths"] for n in row)
    assert lengths == sorted(len(r["input_ids"]) for r in setup["records"])  # none cut, none dropped
    assert all(len(ids) <= 2048 for ids in packed["input_ids"])
    assert len(packed) < len(setup["records"])  # several examples share a row
    label_tokens = sum(sum(t != -100 for t in row) for row in packed["labels"])
    assert label_tokens == sum(sum(t != -100 for t in r["labels"]) for r in setup["records"])


def test_packed_batch_has_no_padding_and_the_same_loss(setup):
    model, batch = setup["model"], examples(setup["records"][:3])
    packed = setup["trainers"][True].data_collator(batch)
    padded = setup["trainers"][False].data_collator(batch)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in batch))
    assert "attention_mask" not in packed and padded["attention_mask"].float().mean() < 1
    assert packed["position_ids"][0].tolist().count(0) == 3  # positions restart at each example
    model.eval()
    with torch.no_grad():
        loss_packed = setup["trainers"][True].compute_loss(model, dict(packed))
        loss_padded = setup["trainers"][False].compute_loss(model, dict(padded))
    assert loss_packed.item() == pytest.approx(loss_padded.item(), rel=1e-5)


def test_packed_examples_do_not_attend_across_boundaries(setup):
    model, batch = setup["model"], examples(setup["records"][:3])
    packed = setup["trainers"][True].data_collator(batch)
    first = len(batch[0]["input_ids"])
    changed = packed["input_ids"].clone()
    changed[0, 1:first] = (changed[0, 1:first] + 7) % model.config.vocab_size  # rewrite example 0 (not its BOS)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        after = model(input_ids=changed, position_ids=packed["position_ids"], use_cache=False).logits
    assert (before[0, :first] - after[0, :first]).abs().max() > 1e-3  # the change is visible where it was made
    assert torch.equal(before[0, first:], after[0, first:])  # and nowhere after the boundary


def test_bucketed_packing_pads_to_the_bucket_with_a_filler_no_example_sees_and_the_loss_ignores(setup):
    """bench_train's bucketed configuration: the packed row padded to a multiple of 512 tokens trains on exactly
    the same loss, the examples' logits are unchanged, and the filler is counted."""
    model, batch = setup["model"], examples(setup["records"][:3])
    trainer = setup["trainers"][True]
    bucketed = bench_train.BucketedCollator(trainer.data_collator, 512, 0)
    packed, padded = trainer.data_collator(batch), bucketed(batch)
    n = packed["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] % 512 == 0 and padded["input_ids"].shape[1] - n == bucketed.last_filler > 0
    assert (padded["labels"][0, n:] == -100).all() and padded["position_ids"][0, n:].tolist() == list(range(bucketed.last_filler))
    assert torch.equal(padded["input_ids"][0, :n], packed["input_ids"][0])
    model.eval()
    with torch.no_grad():
        assert trainer.compute_loss(model, dict(padded)).item() == pytest.approx(
            trainer.compute_loss(model, dict(packed)).item(), rel=1e-6)
        kept = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        with_filler = model(input_ids=padded["input_ids"], position_ids=padded["position_ids"], use_cache=False).logits
    assert torch.allclose(kept[0], with_filler[0, :n], atol=1e-5)
    with pytest.raises(ValueError, match="needs packed, padding-free batches"):
        bench_train.BucketedCollator(setup["trainers"][False].data_collator, 512, 0)(batch)
