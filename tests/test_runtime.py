"""Backend choice, runtime detection, secrets and parameters, on CPU with faked device properties."""

import os

import pytest

import src_helpers as sh
from medical_r1 import REPO_ROOT, artifacts, credentials, install, params, publish, tracking, training
from medical_r1 import runtime as rt_mod


def runtime(capability=None, supported=True, unsloth=True):
    return rt_mod.Runtime(platform="kaggle", cuda=capability is not None, gpu_name="GPU" if capability else None,
                      capability=capability, bf16_supported=bool(capability and capability >= (8, 0)),
                      torch_supports_gpu=supported if capability else False, unsloth_installed=unsloth,
                      bitsandbytes_installed=True)


@pytest.mark.parametrize("rt, expected", [
    (runtime(None), "cpu"),
    (runtime((7, 5)), "unsloth"),  # T4
    (runtime((8, 0)), "unsloth"),  # A100
    (runtime((7, 5), unsloth=False), "transformers"),
    (runtime((6, 0)), "transformers"),  # P100 with a torch that still has sm_60 kernels
])
def test_auto_backend(rt, expected):
    backend, why = rt_mod.choose_backend("auto", rt)
    assert backend == expected and why


def test_p100_without_kernels_stops_before_loading_and_says_switch_to_t4():
    with pytest.raises(RuntimeError, match="T4"):
        rt_mod.choose_backend("auto", runtime((6, 0), supported=False))


def test_explicit_backends_that_cannot_run_are_refused():
    with pytest.raises(RuntimeError, match="compute capability >= 7.0"):
        rt_mod.choose_backend("unsloth", runtime((6, 0)))
    with pytest.raises(RuntimeError, match="backend='cpu'"):
        rt_mod.choose_backend("transformers", runtime(None))
    with pytest.raises(ValueError, match="backend must be"):
        rt_mod.choose_backend("tpu", runtime(None))


def test_detect_runtime_sees_a_faked_p100_without_kernels(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_70", "sm_75", "sm_80", "sm_90"])
    rt = rt_mod.detect_runtime()
    assert rt.capability == (6, 0) and not rt.torch_supports_gpu and not rt.bf16_supported
    with pytest.raises(RuntimeError, match="Accelerator"):
        rt_mod.choose_backend("auto", rt)


@pytest.mark.parametrize("local_rank, expected", [("1", ["set_device 1", "detect"]), (None, ["detect"])])
def test_each_process_makes_its_own_gpu_current_before_any_cuda_call(monkeypatch, local_rank, expected):
    """Under torchrun the second process's first CUDA calls (the runtime check, Unsloth's import) otherwise open a
    context on GPU 0 too: nvidia-smi saw it there on two H200s. In a notebook (no LOCAL_RANK) nothing is bound."""
    import torch

    calls = []
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(f"set_device {i}"))
    real_detect = rt_mod.detect_runtime

    def detect():
        calls.append("detect")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        return real_detect()

    monkeypatch.setattr(rt_mod, "detect_runtime", detect)
    runtime, backend = rt_mod.setup_backend("cpu")
    assert calls == expected and backend == "cpu"


def test_detect_runtime_on_this_machine():
    rt = rt_mod.detect_runtime()
    assert rt.platform == "local"
    assert rt_mod.choose_backend("auto", rt)[0] in params.BACKENDS


@pytest.mark.parametrize("env, expected", [
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ({"COLAB_RELEASE_TAG": "release-colab"}, "colab"),
    ({}, "local"),
])
def test_detect_platform(env, expected):
    assert rt_mod.detect_platform(env) == expected


def test_secrets_are_resolved_but_never_reported():
    env = {"HF_TOKEN": "hf_FAKEfakeFAKEfake1234567890"}
    report = credentials.load_secrets(env)
    assert report["HF_TOKEN"] == "found (environment)"
    assert report["WANDB_API_KEY"].startswith("not set: skipping")
    assert "hf_FAKE" not in repr(report)
    record = rt_mod.runtime_record(runtime(None), "cpu", report)
    assert record["secrets_found"] == {"HF_TOKEN": True, "WANDB_API_KEY": False, "JUDGE_API_KEY": False}
    assert "hf_FAKE" not in repr(record)


def test_report_to_follows_the_wandb_key(tmp_path):
    assert tracking.resolve_report_to("auto", tmp_path, {})[0] == "none"
    assert tracking.resolve_report_to("none", tmp_path, {"WANDB_API_KEY": "x"})[0] == "none"
    env = {"WANDB_API_KEY": "x"}
    assert tracking.resolve_report_to("auto", tmp_path, env)[0] == "wandb" and env["WANDB_DIR"] == str(tmp_path.resolve())
    env = {}
    assert tracking.resolve_report_to("wandb", tmp_path, env)[0] == "wandb" and env["WANDB_MODE"] == "offline"
    assert tracking.resolve_report_to("wandb", tmp_path, {"WANDB_MODE": "disabled"})[0] == "none"


def test_params_defaults_are_valid_and_match_the_seed_tutorial():
    p = params.Params()
    assert (p.lora_r, p.lora_alpha, p.lora_dropout, p.seed, p.max_seq_length) == (16, 16, 0.0, 3407, 2048)
    assert (p.learning_rate, p.max_steps, p.optim) == (2e-4, 60, "adamw_8bit")
    assert (p.temperature, p.top_p) == (0.6, 0.95)


@pytest.mark.parametrize("field, value", [
    ("max_steps", 0), ("lora_r", -1), ("learning_rate", 0.0), ("template", "chatml"), ("data_config", "fr"),
    ("batch_size", 1.5), ("top_p", 0.0), ("backend", "tpu"), ("lora_dropout", 1.0), ("val_size", -1),
    ("num_generations", 1), ("start_from", "sft"), ("grpo_batch_size", 3), ("grpo_learning_rate", 0.0),
])
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        params.Params(**{field: value})


def test_push_needs_a_repo_id_and_a_token():
    with pytest.raises(ValueError, match="hub_repo_id"):
        params.Params(push_to_hub=True, hub_repo_id="")
    p = params.Params(push_to_hub=True, hub_repo_id="me/r1-medical")
    with pytest.raises(RuntimeError, match="HF_TOKEN"):
        publish.hub_upload_plan(p, environ={})
    assert publish.hub_upload_plan(p, environ={"HF_TOKEN": "x"}) == ["adapter -> me/r1-medical-lora",
                                                                  "merged 16-bit model -> me/r1-medical"]
    assert publish.hub_upload_plan(params.Params(), environ={"HF_TOKEN": "x"}) == []


def test_missing_artifact_names_the_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="03_train"):
        artifacts.require_artifact(tmp_path, "adapter")


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    path = artifacts.write_json(tmp_path / "a.json", {"x": 1})

    class Boom:
        def __iter__(self):
            yield {"x": 2}
            raise OSError("disk full")

    with pytest.raises(OSError):
        artifacts.write_jsonl(tmp_path / "b.jsonl", Boom())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert artifacts.read_json(path) == {"x": 1}


def test_requirements_pins_are_parsed_and_shared_with_the_test_environment():
    gpu = install.parse_requirements(REPO_ROOT / "requirements.txt")
    cpu = install.parse_requirements(REPO_ROOT / "requirements-test.txt")
    for name in ("transformers", "trl", "peft", "datasets", "accelerate", "wandb"):
        assert gpu[name] == cpu[name], name
    assert install.parse_requirements(REPO_ROOT / "requirements-gguf.txt")["sentencepiece"] == cpu["sentencepiece"]
    assert gpu["unsloth"] == "2026.10.9" and gpu["transformers"] <= "5.17.0" and gpu["datasets"] < "5"
    assert "not installing" in install.install_requirements("never") or "all pinned" in install.install_requirements("never")
    with pytest.raises(ValueError, match="INSTALL_REQUIREMENTS"):
        install.install_requirements("sometimes")


def test_split_thinking():
    assert sh.split_thinking("a </think> b </think>\n\nanswer") == ("a </think> b", "answer", True)
    assert sh.split_thinking("still thinking") == ("still thinking", "", False)


def test_environment_block_sets_and_restores(monkeypatch):
    from medical_r1 import generation

    monkeypatch.setenv("UNSLOTH_DECODE_CUDA_GRAPHS", "0")
    monkeypatch.delenv("MEDICAL_R1_UNSET", raising=False)
    with generation.environment({"UNSLOTH_DECODE_CUDA_GRAPHS": "1", "MEDICAL_R1_UNSET": "x"}):
        assert os.environ["UNSLOTH_DECODE_CUDA_GRAPHS"] == "1" and os.environ["MEDICAL_R1_UNSET"] == "x"
    assert os.environ["UNSLOTH_DECODE_CUDA_GRAPHS"] == "0" and "MEDICAL_R1_UNSET" not in os.environ


# (name, compute capability, GiB): what torch reports on the GPUs Kaggle and Colab lend, and on an A100/H100.
GPUS = {"T4": ("Tesla T4", (7, 5), 15), "V100": ("Tesla V100-SXM2-16GB", (7, 0), 16),
        "A100": ("NVIDIA A100-SXM4-40GB", (8, 0), 40), "H100": ("NVIDIA H100 80GB HBM3", (9, 0), 80)}


def fake_gpu(monkeypatch, gpu, unsloth_imported=False):
    """Make torch answer as it does on `gpu` (torch 2.11-2.13's cuda/__init__.py): is_bf16_supported() counts
    emulation by default, so it says True on a T4 or V100 too (a bf16 tensor can be made there); only
    including_emulation=False says no. Importing Unsloth swaps in its own is_bf16_supported, whose default is
    including_emulation=False (unsloth/_gpu_init.py, 2026.10.9), which transformers' TrainingArguments then asks."""
    import torch

    name, capability, gib = GPUS[gpu]

    def is_bf16_supported(including_emulation=not unsloth_imported):
        return capability >= (8, 0) or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


@pytest.mark.parametrize("gpu, bf16", [("T4", False), ("V100", False), ("A100", True), ("H100", True)])
def test_precision_follows_the_hardware_not_emulation(monkeypatch, gpu, bf16):
    """bf16 only from compute capability 8.0 on: on a T4 torch.cuda.is_bf16_supported() says True (emulation),
    and a runtime that believed it loaded in bfloat16 and asked SFTConfig for bf16=True, which stopped 03."""
    import torch

    fake_gpu(monkeypatch, gpu)
    assert torch.cuda.is_bf16_supported() and torch.cuda.is_bf16_supported(including_emulation=False) == bf16
    runtime = rt_mod.apply_precision(rt_mod.detect_runtime(), "auto")
    assert runtime.bf16_supported == bf16 and rt_mod.choose_backend("auto", runtime)[0] in ("unsloth", "transformers")
    assert runtime.dtype == ("bfloat16" if bf16 else "float16")
    assert rt_mod.compute_dtype(runtime) == (torch.bfloat16 if bf16 else torch.float16)
    args = training.runtime_training_args("unsloth", runtime, "adamw_8bit")
    assert (args["bf16"], args["fp16"]) == (bf16, not bf16)
    if not bf16:
        with pytest.raises(ValueError, match="bf16"):
            rt_mod.apply_precision(runtime, "bf16")


@pytest.mark.parametrize("gpu", ["T4", "A100"])
def test_sftconfig_accepts_the_precision_chosen_after_unsloth_is_imported(monkeypatch, tmp_path, gpu):
    """03 builds SFTConfig after importing Unsloth, so transformers' bf16 check asks Unsloth's is_bf16_supported."""
    from transformers.utils import import_utils
    from trl import SFTConfig

    import_utils.is_torch_bf16_gpu_available.cache_clear()  # transformers asks once per process
    fake_gpu(monkeypatch, gpu)
    runtime = rt_mod.detect_runtime()
    fake_gpu(monkeypatch, gpu, unsloth_imported=True)
    args = training.runtime_training_args("unsloth", runtime, "adamw_torch")
    try:
        config = SFTConfig(output_dir=str(tmp_path), report_to="none", **args)
    finally:  # accelerate keeps the (faked) device in a process-wide state that later CPU tests would inherit
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        import_utils.is_torch_bf16_gpu_available.cache_clear()
    assert (config.bf16, config.fp16) == (gpu == "A100", gpu == "T4")


def test_t4_mode_answers_as_a_t4_to_the_libraries_and_as_the_real_gpu_to_the_compilers():
    """lab/gpu/t4_mode (the GPU checks' T4 mode): Unsloth, transformers and the helpers must see 7.5, while torch's
    compiler and Triton must see the GPU that runs the kernels, even after Unsloth assigns its cached copy."""
    code = """
import sys, types, torch
sys.path.insert(0, "lab/gpu/t4_mode")
torch.cuda.get_device_capability = lambda device=None: (9, 0)  # the real GPU: an H200
torch.cuda.get_device_properties = lambda device=None: types.SimpleNamespace(name="NVIDIA H200", major=9, minor=0,
                                                                             total_memory=140 * 2**30)
fraction = {"real": 15 / 140}  # T4 mode's own cap: 15 GiB of the H200's 140
torch.cuda.set_per_process_memory_fraction = lambda value, device=None: fraction.update(real=value)
torch.cuda.get_per_process_memory_fraction = lambda device=None: fraction["real"]
import t4_device
t4_device.install()
torch.cuda.get_device_capability = lambda device=None: "a cached copy of the first answer"
ask = lambda module: eval("torch.cuda.get_device_capability()", {"__name__": module, "torch": torch})
print([ask(m) for m in ("medical_r1.runtime", "unsloth.models._utils", "torch._inductor.utils",
                        "triton.backends.nvidia.driver")],
      torch.cuda.is_bf16_supported(), torch.cuda.is_bf16_supported(including_emulation=False),
      torch.backends.cuda.flash_sdp_enabled(), torch.cuda.get_device_name())
fractions = lambda: [eval("torch.cuda.get_per_process_memory_fraction()", {"__name__": m, "torch": torch})
                     for m in ("unsloth.models._utils", "unsloth_zoo.block_swap", "torch.cuda.memory")]
print(fractions())
eval("torch.cuda.set_per_process_memory_fraction(0.5)", {"__name__": "medical_r1.runtime", "torch": torch})
print(fractions(), fraction["real"] * 2 * 140 / 15)
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == "[(7, 5), (7, 5), (9, 0), (9, 0)] True False False Tesla T4".split()
    # Memory fractions are of a T4's 15 GiB: T4 mode's cap reads 1.0 as on a T4 nobody capped (Unsloth scales the
    # T4's total by it), and a cap the code sets (0.5 of a T4) becomes 0.5 x 15 of the 140 GiB, never more.
    assert lines[1] == f"[1.0, 1.0, {15 / 140}]"
    assert lines[2] == f"[0.5, 0.5, {0.5 * 15 / 140}] 1.0"
    # How the checks start their processes in T4 mode: the environment alone (sitecustomize.py) makes a T4.
    sys.path.insert(0, str(REPO_ROOT / "lab" / "gpu"))
    from t4_mode import t4_device

    seen = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(), "
                           "torch.cuda.is_bf16_supported(including_emulation=False))"], cwd=REPO_ROOT,
                          env=t4_device.child_environment(os.environ), capture_output=True, text=True, check=True)
    assert seen.stdout.split() == ["Tesla", "T4", "False"]


@pytest.mark.parametrize("capability, precision, dtype", [
    ((8, 0), "auto", "bfloat16"), ((8, 0), "fp16", "float16"), ((8, 0), "bf16", "bfloat16"),
    ((7, 5), "auto", "float16"), ((7, 5), "fp16", "float16"), (None, "bf16", "float32"), (None, "auto", "float32"),
])
def test_precision_becomes_one_dtype_that_the_model_and_the_trainer_both_read(capability, precision, dtype):
    """PRECISION is turned into the run's dtype once (apply_precision); the model's dtype and SFTConfig's fp16/bf16
    are read from it, so they cannot disagree, and the GPU's own bf16 support stays what it is."""
    import torch

    decided = rt_mod.apply_precision(runtime(capability), precision)
    assert decided.dtype == dtype and rt_mod.compute_dtype(decided) == getattr(torch, dtype)
    args = training.runtime_training_args("cpu" if capability is None else "unsloth", decided, "adamw_8bit")
    assert (args["bf16"], args["fp16"]) == (dtype == "bfloat16", dtype == "float16")
    assert decided.bf16_supported == runtime(capability).bf16_supported


def test_bf16_on_a_t4_and_an_unknown_precision_are_refused_by_name():
    with pytest.raises(ValueError, match="has no bf16 support: use PRECISION = 'fp16' or 'auto'"):
        rt_mod.apply_precision(runtime((7, 5)), "bf16")
    with pytest.raises(ValueError, match="PRECISION must be 'auto', 'fp16' or 'bf16', got 'fp32'"):
        rt_mod.apply_precision(runtime((8, 0)), "fp32")
