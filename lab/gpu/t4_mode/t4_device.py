"""T4 mode for the GPU checks: a big GPU that answers as a Kaggle/Colab T4 does, to the code that decides.

What a T4 is, as the notebooks' decisions read it: compute capability 7.5, bf16 only by emulation (torch's
`is_bf16_supported()` says True, `is_bf16_supported(including_emulation=False)` False), 15 GiB, no FlashAttention
(neither the flash_attn package nor torch's flash or cuDNN SDPA kernels, which need 8.0).

The seam is the caller. torch.cuda's device queries answer as a T4 to every module but torch's own (Inductor,
Dynamo) and Triton's, which build kernels for the GPU that will run them: told 7.5, they compile sm_75 code that an
H100/H200 refuses ("no kernel image is available"). Triton also keeps the function it found when its driver starts,
and Unsloth swaps in a cached copy of whatever it finds at import, which torch.cuda here declines (a cache decides
nothing). bf16 emulation answers everyone, and Unsloth wraps it as it does on a T4 (its default becomes
including_emulation=False, which transformers' bf16 check then asks). Memory is capped at 15 GiB for the allocator
and reported as 15 GiB in all, the bytes in use counted as they are. Memory fractions are a T4's too, set and
read: the cap is 1.0 of a T4 (as on a T4 nobody capped), and a fraction the code sets (the notebooks'
GPU_MEMORY_CAP_GIB) is of the T4's 15 GiB. Before 2026-11-30 they were the big GPU's: Unsloth multiplied the real
fraction (15 GiB of 141) by the T4's 15 GiB, saw about 1.6 GiB and moved the input embeddings to CPU RAM where a
T4 keeps them, and a 15 GiB cap set by the code (fraction 1.0 of the T4 it was told of) lifted the cap.

Started by sitecustomize.py beside this file when MEDICAL_R1_T4=1, in every Python process (papermill's kernels
too). With MEDICAL_R1_T4_LOG set, each process appends JSON lines there: which module got which T4 answer, and
its peak memory at exit.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import types

NAME = "Tesla T4"
CAPABILITY = (7, 5)
MEMORY_BYTES = 15 * 2**30
REAL_ANSWER_FOR = ("torch", "triton")  # top-level packages that build kernels for the GPU that runs them
GUARDED = ("get_device_capability",)  # Unsloth's import replaces it with a cache (its is_bf16_supported stays: a T4 gets it too)

_seen: set = set()


def child_environment(environ, log_path=None) -> dict:
    """`environ` for a new Python process that sees a T4: this folder first on PYTHONPATH (its sitecustomize.py
    runs at the process's start) and MEDICAL_R1_T4 set; with `log_path`, where its answers are logged."""
    folder = os.path.dirname(os.path.abspath(__file__))
    env = {**environ, "MEDICAL_R1_T4": "1", "PYTHONPATH": os.pathsep.join([folder, environ.get("PYTHONPATH", "")])}
    if log_path:
        env["MEDICAL_R1_T4_LOG"] = str(log_path)
    return env


def log(event: dict) -> None:
    path = os.environ.get("MEDICAL_R1_T4_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), **event}) + "\n")


def answer_by_caller(real, t4):
    """A stand-in for `real` that gives `t4`'s answer unless its caller is in torch or Triton."""
    @functools.wraps(real)
    def answer(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".")[0] in REAL_ANSWER_FOR:
            return real(*args, **kwargs)
        if (real.__name__, caller) not in _seen:
            _seen.add((real.__name__, caller))
            log({"asked": real.__name__, "by": caller})
        return t4(*args, **kwargs)
    return answer


class T4Properties:
    """The real device's properties, but for its name, capability and memory."""

    def __init__(self, real):
        self._real = real
        self.name, self.major, self.minor, self.total_memory = NAME, *CAPABILITY, MEMORY_BYTES

    def __getattr__(self, attribute):
        return getattr(self._real, attribute)


class KeepsT4Answers(types.ModuleType):
    """torch.cuda, but the capability answer stays: Unsloth's import assigns a cached copy of get_device_capability,
    which would give the first caller's answer to every later one, Inductor's included."""

    def __setattr__(self, attribute, value):
        if attribute in GUARDED and getattr(self, "_t4_installed", False):
            log({"kept": attribute, "instead_of": getattr(value, "__module__", repr(value))})
            return
        super().__setattr__(attribute, value)


def install() -> None:
    import torch

    cuda = torch.cuda
    real_capability, real_properties = cuda.get_device_capability, cuda.get_device_properties
    real_mem_get_info, real_lazy_init = cuda.mem_get_info, cuda._lazy_init

    def t4_mem_get_info(device=None):
        free, total = real_mem_get_info(device)
        return max(0, MEMORY_BYTES - (total - free)), MEMORY_BYTES

    def is_bf16_supported(including_emulation: bool = True):
        return including_emulation  # a T4 has no bf16 units; a bf16 tensor can still be made there

    real_set_fraction, real_get_fraction = cuda.set_per_process_memory_fraction, cuda.get_per_process_memory_fraction

    def t4_share(device=None):
        """A T4's memory as a fraction of the real GPU's: a fraction of a T4 times this is one of the real GPU."""
        return MEMORY_BYTES / real_properties(device).total_memory

    capped = []

    def lazy_init():
        real_lazy_init()
        if not capped:
            capped.append(True)
            real_set_fraction(t4_share(cuda.current_device()))

    cuda.__class__ = KeepsT4Answers
    cuda.get_device_capability = answer_by_caller(real_capability, lambda device=None: CAPABILITY)
    cuda.get_device_properties = answer_by_caller(real_properties, lambda device=None: T4Properties(real_properties(device)))
    cuda.get_device_name = lambda device=None: NAME
    cuda.is_bf16_supported = is_bf16_supported
    cuda.mem_get_info = answer_by_caller(real_mem_get_info, t4_mem_get_info)
    cuda.set_per_process_memory_fraction = answer_by_caller(
        real_set_fraction, lambda fraction, device=None: real_set_fraction(fraction * t4_share(device), device))
    cuda.get_per_process_memory_fraction = answer_by_caller(
        real_get_fraction, lambda device=None: real_get_fraction(device) / t4_share(device))
    cuda._lazy_init = lazy_init
    cuda._t4_installed = True
    torch.backends.cuda.enable_flash_sdp(False)  # torch's flash and cuDNN attention kernels need compute capability 8.0
    torch.backends.cuda.enable_cudnn_sdp(False)
    atexit.register(record_peak)


def record_peak() -> None:
    import torch

    if torch.cuda.is_initialized():
        log({"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
             "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)})
