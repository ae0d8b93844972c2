"""The README's bad-input table, row by row, and surviving a stopped Kaggle session."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medical_r1 import REPO_ROOT, artifacts, credentials, params, publish, tracking
from medical_r1 import data as data_mod
from medical_r1 import export as export_mod
from medical_r1 import models as models_mod
from medical_r1 import runtime as rt_mod
from medical_r1 import training as training_mod

WORKER = [sys.executable, str(REPO_ROOT / "tests" / "resume_worker.py")]


def worker(model, work, kill_at=0):
    # One CPU thread: with two, a reduction's order can depend on thread timing, and Adam amplifies that
    # last-bit difference to ~1e-4 in the adapter (seen here under load); the test is about resuming.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(WORKER + ["--model", model, "--work-dir", str(work), "--kill-at", str(kill_at)],
                          capture_output=True, text=True, timeout=600, env=env)


def test_killed_training_resumes_to_the_same_adapter(tiny_model_dir, tmp_path):
    straight = worker(tiny_model_dir, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = worker(tiny_model_dir, tmp_path / "resumed", kill_at=5)
    assert killed.returncode == 3  # died after step 5, with checkpoint-4 on disk
    assert training_mod.last_checkpoint(tmp_path / "resumed").endswith("checkpoint-4")
    assert not artifacts.artifact(tmp_path / "resumed", "adapter").exists()
    resumed = worker(tiny_model_dir, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    a = load_file(str(artifacts.artifact(tmp_path / "straight", "adapter") / "adapter_model.safetensors"))
    b = load_file(str(artifacts.artifact(tmp_path / "resumed", "adapter") / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 28
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert any((a[k] != 0).any() for k in a if "lora_B" in k)  # the adapter did train


class PoisonAtStep(TrainerCallback):
    """Sets one LoRA weight to NaN at the end of a step, so the next step's loss is NaN."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(t for n, t in model.named_parameters() if "lora_A" in n).fill_(float("nan"))


def small_trainer(tiny_model_dir, tmp_path, en_rows, **overrides):
    p = params.Params(**{"work_dir": str(tmp_path), "model_name": tiny_model_dir, "max_steps": 6, "batch_size": 2,
                     "grad_accum": 1, "save_steps": 2, "eval_steps": 100, "report_to": "none", **overrides})
    rt = rt_mod.detect_runtime()
    model, tok = models_mod.load_model_and_tokenizer(tiny_model_dir, "cpu", rt, 2048)
    records, _ = data_mod.format_rows(en_rows[:12], tok, "r1_chat", 2048)
    model = models_mod.add_lora(model, "cpu", p)
    return p, training_mod.make_trainer(model, tok, records, [], p, "cpu", rt)


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, en_rows):
    p, trainer = small_trainer(tiny_model_dir, tmp_path, en_rows)
    trainer.add_callback(PoisonAtStep(3))
    with pytest.raises(RuntimeError, match=r"NaN or infinite at step 4.*LEARNING_RATE.*checkpoint-2"):
        training_mod.train(trainer, p)
    assert training_mod.last_checkpoint(tmp_path).endswith("checkpoint-2")  # step 4 was a save step, yet not saved
    assert trainer.state.global_step == 4


def test_out_of_memory_names_the_settings_to_lower(tiny_model_dir, tmp_path, en_rows, monkeypatch):
    p, trainer = small_trainer(tiny_model_dir, tmp_path, en_rows, batch_size=2, grad_accum=4)

    def oom(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train", oom)
    with pytest.raises(RuntimeError, match=r"GRADIENT_CHECKPOINTING = 'on' first \(now 'auto'\).*"
                       r"BATCH_SIZE \(now 2; 1 with GRAD_ACCUM 8.*MAX_SEQ_LENGTH \(now 2048"):
        training_mod.train(trainer, p)


def test_07s_guards_name_07s_settings_and_folder(tiny_model_dir, tmp_path, en_rows, monkeypatch):
    """The guards as 07 calls them (folder "grpo_checkpoints"; any trainer inside): out of memory names the answers' length and count, not 03's batch; a NaN
    names GRPO_LEARNING_RATE and grpo_checkpoints."""
    p, trainer = small_trainer(tiny_model_dir, tmp_path, en_rows, num_generations=4, grpo_batch_size=8)

    def oom(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train", oom)
    with pytest.raises(RuntimeError, match=r"MAX_COMPLETION_LENGTH \(now 1024\), NUM_GENERATIONS \(now 4; "
                                           r"GRPO_BATCH_SIZE, now 8") as err:
        with training_mod.training_guards(trainer, p, "grpo_checkpoints"):
            trainer.train()
    assert "BATCH_SIZE (now" not in str(err.value).replace("GRPO_BATCH_SIZE", "")
    monkeypatch.undo()
    trainer.add_callback(PoisonAtStep(3))
    with pytest.raises(RuntimeError, match=r"NaN or infinite at step 4.*GRPO_LEARNING_RATE \(now 5e-06\).*"
                                           r"grpo_checkpoints to start afresh"):
        with training_mod.training_guards(trainer, p, "grpo_checkpoints"):
            trainer.train()


def test_unknown_model_while_offline_says_what_to_check():
    with pytest.raises(OSError, match=r"could not load model 'deepseek-ai/No-Such-Model'.*HF_HUB_OFFLINE=1.*MODEL_NAME"):
        models_mod.load_tokenizer("deepseek-ai/No-Such-Model")


def test_disk_too_small_for_the_merge_is_refused_before_writing(tmp_path):
    class Usage:
        free = 5 * 10**9

    with pytest.raises(RuntimeError, match=r"needs about 16.1 GB.*5.0 GB free.*SAVE_MERGED = False"):
        export_mod.check_disk_space(tmp_path, 8_030_000_000 * 2, disk_usage=lambda _: Usage)
    assert list(tmp_path.iterdir()) == []
    export_mod.check_disk_space(tmp_path, 10**9, disk_usage=lambda _: Usage)  # 1 GB fits


def test_parameter_count_comes_from_the_config(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    real = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert export_mod.count_parameters(tiny_model_dir) == real


def test_push_failure_keeps_local_files_and_says_retry(tmp_path, monkeypatch):
    import huggingface_hub

    adapter = artifacts.artifact(tmp_path, "adapter")
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")

    class FailingApi:
        def create_repo(self, *args, **kwargs):
            pass

        def upload_folder(self, **kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    p = params.Params(work_dir=str(tmp_path), push_to_hub=True, hub_repo_id="me/r1-med", save_merged=False)
    with pytest.raises(RuntimeError, match=r"failed \(ConnectionError.*local files are kept.*run this cell again"):
        publish.push_to_hub(p, ["adapter -> me/r1-med-lora"], {"verified": None})
    assert (adapter / "adapter_config.json").exists()


def test_no_wandb_key_means_no_wandb_and_the_notebook_says_so():
    assert tracking.resolve_report_to("auto", ".", {})[0] == "none"
    assert "not set: skipping logging the training run" in credentials.load_secrets({})["WANDB_API_KEY"]


def test_push_uploads_adapter_and_verified_merge_privately(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id):
            calls.append(("upload", repo_id, folder_path))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    p = params.Params(work_dir=str(tmp_path), push_to_hub=True, hub_repo_id="me/r1-med")
    merged = str(tmp_path / "merged_16bit")
    assert publish.push_to_hub(p, ["..."], {"verified": True, "merged": merged}) == ["me/r1-med-lora", "me/r1-med"]
    assert calls == [("create", "me/r1-med-lora", True), ("upload", "me/r1-med-lora", str(artifacts.artifact(tmp_path, "adapter"))),
                     ("create", "me/r1-med", True), ("upload", "me/r1-med", merged)]
    calls.clear()
    assert publish.push_to_hub(p, ["..."], {"verified": False, "merged": merged}) == ["me/r1-med-lora"]  # no unverified merge
    assert publish.push_to_hub(params.Params(work_dir=str(tmp_path)), [], {}) == []
