"""W&B without a key: an offline run under WORK_DIR that holds the training metrics, for `wandb sync` later."""
import time

import pytest

from medical_r1 import data as data_mod
from medical_r1 import models as models_mod
from medical_r1 import params, tracking
from medical_r1 import runtime as rt_mod
from medical_r1 import training as training_mod


def test_offline_wandb_run_holds_the_metrics(tiny_model_dir, tmp_path, en_rows, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    p = params.Params(work_dir=str(tmp_path), model_name=tiny_model_dir, max_steps=3, batch_size=2, grad_accum=1,
                  save_steps=10, eval_steps=2, report_to="wandb")
    rt = rt_mod.detect_runtime()
    model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 2048)
    records, _ = data_mod.format_rows(en_rows[:8], tok, "r1_chat", 2048)
    trainer = training_mod.make_trainer(models_mod.add_lora(model, "cpu", p), tok, records[:6], records[6:], p, "cpu", rt)
    assert trainer.args.report_to == ["wandb"]
    training_mod.train(trainer, p)
    link = tracking.wandb_run_link()
    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert link == f"wandb sync {runs[0]}", link
    data = b""
    for _ in range(60):  # the wandb service writes the run file from its own process; give a loaded CI time
        data = b"".join(path.read_bytes() for path in runs[0].glob("run-*.wandb"))
        if b"train/loss" in data and b"eval/loss" in data:
            break
        time.sleep(0.5)
    assert b"train/loss" in data and b"eval/loss" in data, f"{len(data)} bytes in the offline run file"
