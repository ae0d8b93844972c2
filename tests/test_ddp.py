"""03 in two CPU processes (gloo), as a script under torchrun and as a notebook whose cells run in two processes
(NUM_GPUS = 2, what "Run all" does on Kaggle's two T4s): the same effective batch, the same losses and adapter as one
process up to float noise, only the first process writes files or prints, and a checkpoint written by two processes
resumes in one."""
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


def train_notebook(work: pathlib.Path, **changed) -> dict:
    """03 executed by papermill in work, with train_script's settings; returns train_metrics.json."""
    args = {"BACKEND": "cpu", "MAX_STEPS": 4, "BATCH_SIZE": 1, "GRAD_ACCUM": 2, "WARMUP_STEPS": 0,
            "LEARNING_RATE": 0.005, "EVAL_STEPS": 2, "SAVE_STEPS": 2, "REPORT_TO": "none",
            "INSTALL_REQUIREMENTS": "never",
            **changed}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_series.execute(args, work, only=["03"])
    return json.loads(artifacts.artifact(work, "train_metrics").read_text())


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


def test_run_all_with_two_processes_trains_like_one(formatted):
    """The notebook itself, NUM_GPUS = 2: its cells run in two processes, against the one-process script."""
    single, double = copy_of(formatted, "nb_single"), copy_of(formatted, "nb_double")
    one = train_script(single, [sys.executable])
    assert one.returncode == 0, one.stderr[-3000:]
    m1 = json.loads(artifacts.artifact(single, "train_metrics").read_text())
    m2 = train_notebook(double, NUM_GPUS=2)
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert [s for s, _ in m2["train_losses"]] == [1, 2, 3, 4]
    assert [loss for _, loss in m2["train_losses"]] == pytest.approx([loss for _, loss in m1["train_losses"]], rel=1e-3)
    assert m2["weight_changes"]["base_tensors_changed"] == 0
    assert m2["weight_changes"]["lora_tensors_changed"] == m2["weight_changes"]["lora_tensors"] > 0
    a = load_file(str(artifacts.artifact(single, "adapter") / "adapter_model.safetensors"))
    b = load_file(str(artifacts.artifact(double, "adapter") / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    executed = (double / "executed" / "03_train.ipynb").read_text()
    assert executed.count("train loss ") == 1 and "2 processes" in executed and "image/png" in executed
    # the trainer's progress as one GPU shows it in a notebook: one table updated in place, no printed log dicts
    # or text bars repeated after every step
    train_cell = next(c for c in json.loads(executed)["cells"] if "trainer.train(" in "".join(c["source"]))
    tables = [o for o in train_cell["outputs"] if "<progress" in "".join(o.get("data", {}).get("text/html", ""))]
    text = "".join("".join(o.get("text", "")) for o in train_cell["outputs"])
    assert len(tables) == 1 and "{'loss'" not in text and "\x1b[A" not in text and text.count("it/s]") <= 1, text
    assert sorted(p.name for p in (double / "logs").iterdir()) == ["gpu_process_0.log", "gpu_process_1.log"]


def test_a_checkpoint_of_two_processes_resumes_in_one_and_in_two(formatted):
    work = copy_of(formatted, "resume")
    first = train_notebook(work, NUM_GPUS=2, MAX_STEPS=2)
    assert first["processes"] == 2 and (work / "checkpoints" / "checkpoint-2").is_dir()
    second = train_notebook(work, NUM_GPUS=1, MAX_STEPS=4)
    assert second["processes"] == 1
    # steps 1-2 are the checkpoint's (its log history), 3-4 trained in one process after it
    assert second["train_losses"][:2] == first["train_losses"]
    assert [s for s, _ in second["train_losses"]] == [1, 2, 3, 4]
    assert "checkpoint-2" in (work / "executed" / "03_train.ipynb").read_text()
    assert (work / "checkpoints" / "checkpoint-4").is_dir()
    # and back in two CPU processes (the demo run again): transformers maps the optimizer state onto "cpu:0"
    third = train_notebook(work, NUM_GPUS=2, MAX_STEPS=6)
    assert third["processes"] == 2 and [s for s, _ in third["train_losses"]] == [1, 2, 3, 4, 5, 6]
    assert third["train_losses"][:4] == second["train_losses"]


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
