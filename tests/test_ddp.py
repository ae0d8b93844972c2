"""03's script under torchrun with two CPU processes (gloo): the same effective batch, the same losses and
adapter as one process up to float noise, and only the first process writes files or prints."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from medical_r1 import REPO_ROOT, artifacts
from medical_r1 import runtime as rt_mod
from medical_r1 import training as training_mod

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import run_series  # noqa: E402

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def formatted(tmp_path_factory):
    """02 run once (papermill) on the demo's tiny model and sample data."""
    work = tmp_path_factory.mktemp("ddp") / "work"
    recipe = run_series.load_recipe("demo")
    run_series.run(recipe, work, only=["02"])
    return work


def train_script(work: pathlib.Path, launcher: list[str]) -> subprocess.CompletedProcess:
    """03 as a script in work (02's run.json there names the model)."""
    args = {"WORK_DIR": str(work), "BACKEND": "cpu", "MAX_STEPS": 4,
            "BATCH_SIZE": 1, "GRAD_ACCUM": 2, "WARMUP_STEPS": 0, "LEARNING_RATE": 0.005, "EVAL_STEPS": 2,
            "SAVE_STEPS": 2, "REPORT_TO": "none", "INSTALL_REQUIREMENTS": "never"}
    argv = [f"--{k}={v}" for k, v in args.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([*launcher, str(REPO_ROOT / "notebooks" / "03_train.py"), *argv], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def copy_of(work: pathlib.Path, name: str) -> pathlib.Path:
    target = work.parent / name
    shutil.copytree(work, target)
    return target


def test_two_processes_train_like_one(formatted):
    single, double = copy_of(formatted, "single"), copy_of(formatted, "double")
    one = train_script(single, [sys.executable])
    assert one.returncode == 0, one.stderr[-3000:]
    two = train_script(double, [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                "--master_port=29533"])
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads(artifacts.artifact(single, "train_metrics").read_text())
    m2 = json.loads(artifacts.artifact(double, "train_metrics").read_text())
    assert (m1["processes"], m2["processes"]) == (1, 2)
    # the same examples make each optimizer step, so the losses and the adapter agree up to float noise
    assert len(m1["train_losses"]) == len(m2["train_losses"]) == 4
    for (step_a, loss_a), (step_b, loss_b) in zip(m1["train_losses"], m2["train_losses"]):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, rel=1e-3)
    a = load_file(str(artifacts.artifact(single, "adapter") / "adapter_model.safetensors"))
    b = load_file(str(artifacts.artifact(double, "adapter") / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert any((b[k] != 0).any() for k in b if "lora_B" in k)
    # one writer: one summary line printed, no stray temporary files
    assert two.stdout.count("train loss") == 1, two.stdout[-2000:]
    assert not [p for p in double.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_grad_accum_must_split_evenly_across_processes():
    assert training_mod.per_process_grad_accum(4, 2) == 2 and training_mod.per_process_grad_accum(3, 1) == 3
    with pytest.raises(ValueError, match="GRAD_ACCUM"):
        training_mod.per_process_grad_accum(3, 2)


def test_script_overrides_apply_to_known_parameters_only():
    namespace = {"MAX_STEPS": 60, "WORK_DIR": "runs/x", "PACKING": True}
    applied = rt_mod.setup_script_run(namespace, ["03_train.py", "--MAX_STEPS=4", "--WORK_DIR=/tmp/w", "--PACKING=False",
                                              "-f", "/kernel.json", "--HistoryManager.hist_file=:memory:"])
    assert namespace == {"MAX_STEPS": 4, "WORK_DIR": "/tmp/w", "PACKING": False} and len(applied) == 3
    with pytest.raises(ValueError, match="--MAX_STEP"):
        rt_mod.setup_script_run(namespace, ["x", "--MAX_STEP=4"])
