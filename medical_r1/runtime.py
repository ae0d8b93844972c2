"""Where the notebooks run: platform, GPU, the backend `auto` picks and why, precision, and running a
notebook's script under torchrun or accelerate. Installing the pinned stack is medical_r1.install.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import os
import re

from medical_r1.params import BACKENDS, check_precision

UNSLOTH_MIN_CAPABILITY = (7, 0)
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs that compute in bf16 (T4 is 7.5, V100 7.0)


@dataclasses.dataclass
class Runtime:
    platform: str  # "kaggle", "colab" or "local"
    cuda: bool
    gpu_name: str | None
    capability: tuple[int, int] | None
    bf16_supported: bool  # the GPU computes in bf16 (compute capability 8.0 or newer)
    torch_supports_gpu: bool  # torch was built with kernels for this GPU's architecture
    unsloth_installed: bool
    bitsandbytes_installed: bool
    # The precision this run computes in, decided once from PRECISION and the GPU (apply_precision): "bfloat16",
    # "float16" or, without a GPU, "float32". The model's dtype (compute_dtype) and SFTConfig's fp16/bf16
    # (training.runtime_training_args) are both read from it.
    dtype: str = "float32"

    def describe(self) -> str:
        gpu = f"{self.gpu_name} (compute capability {self.capability[0]}.{self.capability[1]}, bf16 " \
              f"{'yes' if self.bf16_supported else 'no'}); computing in {self.dtype}" if self.cuda else "no GPU"
        return f"platform: {self.platform}; {gpu}"


def detect_platform(environ=os.environ) -> str:
    if "KAGGLE_KERNEL_RUN_TYPE" in environ or "KAGGLE_URL_BASE" in environ:
        return "kaggle"
    if "COLAB_RELEASE_TAG" in environ or "COLAB_GPU" in environ:
        return "colab"
    return "local"


def detect_runtime() -> Runtime:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    name = capability = None
    bf16 = supported = False
    if cuda:
        name = torch.cuda.get_device_name()
        capability = tuple(torch.cuda.get_device_capability())
        arch = f"sm_{capability[0]}{capability[1]}"
        # torch lists the architectures it has kernels for; Kaggle's current torch has no sm_60 (P100).
        supported = arch in torch.cuda.get_arch_list() or any(
            a.startswith("compute_") and int(a[8:]) <= capability[0] * 10 + capability[1]
            for a in torch.cuda.get_arch_list())
        # Not torch.cuda.is_bf16_supported(): by default it counts emulated bf16 and says True on a T4, where
        # TrainingArguments then refuses bf16=True. Unsloth's is_bfloat16_supported() also reads the capability.
        bf16 = bool(supported and capability >= BF16_MIN_CAPABILITY)
    return apply_precision(Runtime(  # PRECISION "auto" until setup_backend applies the notebook's own
        platform=detect_platform(), cuda=cuda, gpu_name=name, capability=capability, bf16_supported=bf16,
        torch_supports_gpu=supported,
        unsloth_installed=importlib.util.find_spec("unsloth") is not None,
        bitsandbytes_installed=importlib.util.find_spec("bitsandbytes") is not None,
    ), "auto")


def choose_backend(requested: str, runtime: Runtime) -> tuple[str, str]:
    """Resolve "auto" to a backend and say why. Raises RuntimeError when no backend can run."""
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {requested!r}")
    if runtime.cuda and not runtime.torch_supports_gpu:
        cap = ".".join(map(str, runtime.capability))
        raise RuntimeError(
            f"This PyTorch has no kernels for {runtime.gpu_name} (compute capability {cap}). On Kaggle, open "
            "Settings > Accelerator and choose 'GPU T4 x2', then run the notebook again.")
    unsloth_ok = runtime.cuda and runtime.capability >= UNSLOTH_MIN_CAPABILITY and runtime.unsloth_installed
    if requested == "auto":
        if not runtime.cuda:
            return "cpu", "no CUDA GPU: CPU in float32, no quantisation (for tests and the demo; slow)"
        if unsloth_ok:
            return "unsloth", f"CUDA GPU with compute capability >= 7.0 ({runtime.gpu_name}) and Unsloth installed"
        why = "Unsloth is not installed" if runtime.capability >= UNSLOTH_MIN_CAPABILITY else \
            "Unsloth needs compute capability >= 7.0"
        return "transformers", f"{why}: plain transformers + PEFT with bitsandbytes 4-bit"
    if requested == "unsloth" and not unsloth_ok:
        raise RuntimeError("backend='unsloth' needs a CUDA GPU of compute capability >= 7.0 with unsloth "
                           "installed; use backend='auto' to fall back to transformers + PEFT")
    if requested == "transformers" and not runtime.cuda:
        raise RuntimeError("backend='transformers' needs a CUDA GPU for bitsandbytes; use backend='cpu'")
    return requested, f"asked for backend={requested!r}"


def apply_precision(runtime: Runtime, precision: str) -> Runtime:
    """The runtime with its compute dtype decided from PRECISION: "auto" takes what the GPU supports (bf16 from
    Ampere on, fp16 on a T4), "fp16" forces a T4's behaviour, "bf16" is refused where the GPU has none. The CPU
    computes in float32 whatever is asked."""
    check_precision(precision, "PRECISION")
    if not runtime.cuda:
        return dataclasses.replace(runtime, dtype="float32")
    if precision == "bf16" and not runtime.bf16_supported:
        raise ValueError(f"{runtime.gpu_name} has no bf16 support: use PRECISION = 'fp16' or 'auto'")
    bf16 = precision == "bf16" or (precision == "auto" and runtime.bf16_supported)
    return dataclasses.replace(runtime, dtype="bfloat16" if bf16 else "float16")


# The cap cap_gpu_memory set for this process, in bytes (0: none); free_gpu_bytes respects it.
GPU_MEMORY_CAP_BYTES = 0


def cap_gpu_memory(gib: float) -> None:
    """Let this process use at most `gib` GiB of GPU memory, so a big GPU shows what fits on a T4."""
    import torch

    global GPU_MEMORY_CAP_BYTES
    total = torch.cuda.get_device_properties().total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))
    GPU_MEMORY_CAP_BYTES = int(min(gib * 2**30, total))


def free_gpu_bytes() -> int:
    """GPU memory this process can still allocate: the device's free memory plus what torch holds unused,
    or what is left under cap_gpu_memory's cap."""
    import torch

    if GPU_MEMORY_CAP_BYTES:
        return max(0, GPU_MEMORY_CAP_BYTES - torch.cuda.memory_allocated())
    return torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()


def bind_process_gpu() -> None:
    """Under torchrun or accelerate launch, make this process's own GPU (LOCAL_RANK) the current one before
    anything touches CUDA. Left to accelerate (which binds it later, in the trainer), the first CUDA calls of every
    process (the runtime check, Unsloth's import) open a context on GPU 0 as well, and the first process then
    shares its GPU with the others (seen with nvidia-smi on two H200s: lab/bench/profile_ddp.py)."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(local_rank))


def setup_backend(requested: str = "auto", precision: str = "auto", memory_cap_gib: float = 0) -> tuple[Runtime, str]:
    """Detect the runtime, pick the backend, and say which one and why (one line each)."""
    bind_process_gpu()
    runtime = apply_precision(detect_runtime(), precision)
    backend, why = choose_backend(requested, runtime)
    print(runtime.describe())
    print(f"backend: {backend} ({why})")
    if memory_cap_gib and runtime.cuda:
        cap_gpu_memory(memory_cap_gib)
        print(f"GPU memory capped at {memory_cap_gib} GiB for this process")
    return runtime, backend


def peak_gpu_memory_gib() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def compute_dtype(runtime: Runtime):
    """The torch dtype of the run's precision (Runtime.dtype): what the notebooks pass as from_pretrained's dtype."""
    import torch

    return getattr(torch, runtime.dtype)


def process_rank() -> tuple[int, int]:
    """(rank, number of processes) under torchrun or accelerate launch; (0, 1) in a notebook."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank()[0] == 0


# How long one collective may wait for the other processes before it fails (the cell then ends with its message,
# and a "Save & Run All" with nobody to press Interrupt stops instead of burning the session's GPU quota). The
# longest wait in the series is a process finishing its share of answers before the others gather them: minutes.
COLLECTIVE_TIMEOUT_S = int(os.environ.get("MEDICAL_R1_COLLECTIVE_TIMEOUT_S", 30 * 60))


def join_process_group() -> str:
    """Join the notebook's processes (one per GPU, started by gpu_processes or torchrun) in a torch.distributed
    group, if not yet: NCCL for CUDA tensors between GPUs, gloo for Python objects (the answers each process wrote)
    and on the CPU. MEDICAL_R1_PROCESS_BACKEND overrides it (gloo where processes share one GPU, which NCCL
    refuses). A collective waits at most COLLECTIVE_TIMEOUT_S. The trainers' accelerate finds the group made and
    uses it. Returns the backend."""
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=os.environ.get("MEDICAL_R1_PROCESS_BACKEND") or (
            "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"),
            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    load_onto_numbered_cpu()
    return str(dist.get_backend())


@functools.cache  # registered once
def load_onto_numbered_cpu() -> None:
    """Let torch.load map onto "cpu:0". In a group of CPU processes transformers names each one's device "cpu:0",
    and a resumed Trainer loads its optimizer state with that as map_location, which torch's own CPU restore
    (it knows only "cpu") refuses: a checkpoint written by two CPU processes (the demo's NUM_GPUS = 2) could not
    be resumed in two. Other locations go on to torch's own."""
    import torch.serialization as serialization

    def restore_numbered_cpu(storage, location: str):
        return storage if location.startswith("cpu:") else None

    # a priority of its own: torch sorts its registry, and two packages of one priority would compare functions
    serialization.register_package(9, lambda obj: None, restore_numbered_cpu)


def check_processes_reach_each_other() -> None:
    """One small sum across the processes, on the GPU where there is one (NCCL's path between the GPUs): a pair of
    GPUs that cannot talk hangs here, at launch, where gpu_processes waits for it a few seconds, rather than in
    the first training step."""
    import torch
    import torch.distributed as dist

    nccl = "nccl" in str(dist.get_backend())
    device = f"cuda:{torch.cuda.current_device()}" if nccl else "cpu"
    total = torch.ones(1, device=device)
    dist.all_reduce(total)
    if int(total.item()) != dist.get_world_size():
        raise RuntimeError(f"a sum of ones across {dist.get_world_size()} processes gave {total.item()}")


def agree_on_smallest(value: int) -> int:
    """The smallest of every process's value (one process: value). Choices each process makes from its own GPU
    (the free memory behind GEN_BATCH_SIZE = 0) must be one choice, or the processes' batches no longer line up."""
    if process_rank()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    join_process_group()
    smallest = torch.tensor([value], dtype=torch.int64)  # on the CPU: gloo, whatever the GPUs' backend
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    return int(smallest.item())


def gather_from_processes(part: dict) -> dict:
    """Every process's part (a dict keyed by item), merged, in every process; one process: part itself."""
    if process_rank()[1] == 1:
        return part
    import torch.distributed as dist

    join_process_group()
    parts = [None] * process_rank()[1]
    dist.all_gather_object(parts, part)
    return {key: value for each in parts for key, value in each.items()}


def setup_script_run(namespace: dict, argv: list[str]) -> list[str]:
    """For a notebook run as a script (python, torchrun, accelerate launch): apply `--NAME=value` arguments to
    the parameters already in `namespace` (values read as Python literals, else as text), and silence
    print() on every process but the first, so the output reads as one run. In a notebook it does nothing."""
    applied = []
    for arg in argv[1:]:
        match = re.fullmatch(r"--([A-Z][A-Z0-9_]*)=(.*)", arg, re.S)
        if not match:
            continue
        name, text = match.groups()
        if name not in namespace:
            raise ValueError(f"--{name}: not a parameter of this notebook")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        namespace[name] = value
        applied.append(name)
    if not is_main_process():
        import sys

        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return applied


def runtime_record(runtime: Runtime, backend: str, secrets: dict) -> dict:
    """What 00 saves: the runtime and which secrets were found (never their values)."""
    return {**dataclasses.asdict(runtime), "backend": backend,
            "secrets_found": {name: status.startswith("found") for name, status in secrets.items()}}
