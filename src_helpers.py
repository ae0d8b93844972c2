"""Helpers for the medical-R1 notebook series: every non-trivial line the notebooks run lives here.

The notebooks (notebooks/00..05) are the tutorial; this module is the code, with unit tests in tests/.
Importing it is cheap: torch, transformers, trl and unsloth are imported inside the functions that need
them, so the first notebook cell works before the install cell has run and on a machine without a GPU.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import pathlib
import random
import re
import shutil
import tempfile
from typing import Any, Iterable

REPO_ROOT = pathlib.Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------------
# Names, defined once
# --------------------------------------------------------------------------------------------------
DATASET_NAME = "FreedomIntelligence/medical-o1-reasoning-SFT"
# Hub config -> file name in the dataset repo; a local folder in the same layout works offline.
DATA_CONFIG_FILES = {
    "en": "medical_o1_sft.json",
    "zh": "medical_o1_sft_Chinese.json",
    "en_mix": "medical_o1_sft_mix.json",
    "zh_mix": "medical_o1_sft_mix_Chinese.json",
}
SFT_COLUMNS = ("Question", "Complex_CoT", "Response")
SAMPLE_DATA_DIR = REPO_ROOT / "data" / "sample"

# The four distills, by the short name the README uses. Unsloth's copies hold the same weights as
# deepseek-ai's; Unsloth swaps in its pre-quantised "-bnb-4bit" repo itself when load_in_4bit=True.
MODELS = {
    "llama-8b": "unsloth/DeepSeek-R1-Distill-Llama-8B",
    "qwen-1.5b": "unsloth/DeepSeek-R1-Distill-Qwen-1.5B",
    "qwen-7b": "unsloth/DeepSeek-R1-Distill-Qwen-7B",
    "qwen-14b": "unsloth/DeepSeek-R1-Distill-Qwen-14B",
}
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
UNSLOTH_MIN_CAPABILITY = (7, 0)

# The fixed question set that 01 (base) and 04 (tuned) both answer, so the two can be put side by side.
QUESTIONS = [
    {"id": "en-stress-incontinence", "lang": "en", "question": (
        "A 61-year-old woman with a long history of involuntary urine loss during activities like coughing "
        "or sneezing but no leakage at night undergoes a gynecological exam and Q-tip test. Based on these "
        "findings, what would cystometry most likely reveal about her residual volume and detrusor contractions?")},
    {"id": "en-chest-pain", "lang": "en", "question": (
        "A 58-year-old man with diabetes has 30 minutes of crushing chest pain and ST elevation in leads "
        "V1-V4. Which artery is most likely occluded, and what is the immediate treatment?")},
    {"id": "en-child-fever-rash", "lang": "en", "question": (
        "A 3-year-old has had fever for 6 days, bilateral non-purulent conjunctivitis, cracked red lips, "
        "a polymorphous rash and swollen hands. What is the diagnosis and which complication must be screened for?")},
    {"id": "zh-diabetes", "lang": "zh", "question": "多饮、多尿、多食伴体重下降的患者，空腹血糖显著升高，可能是什么疾病？"},
    {"id": "zh-hemoptysis", "lang": "zh", "question": "一位60岁长期吸烟的男性，刺激性咳嗽、痰中带血三个月，应首先考虑什么疾病？如何确诊？"},
]


# --------------------------------------------------------------------------------------------------
# Parameters: the defaults live here once; each notebook's `parameters` cell mirrors a subset.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Params:
    work_dir: str = "runs/medical-r1"
    model_name: str = MODELS["llama-8b"]
    backend: str = "auto"
    max_seq_length: int = 2048
    load_in_4bit: bool = True
    dataset_name: str = DATASET_NAME
    data_config: str = "en"
    max_examples: int = 2000
    val_size: int = 100
    template: str = "r1_chat"
    completion_only_loss: bool = True
    seed: int = 3407
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    learning_rate: float = 2e-4
    max_steps: int = 60
    packing: bool = True
    batch_size: int = 2
    grad_accum: int = 2
    warmup_steps: int = 5
    weight_decay: float = 0.01
    optim: str = "adamw_8bit"
    eval_steps: int = 20
    save_steps: int = 20
    report_to: str = "auto"
    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    do_sample: bool = True
    gen_batch_size: int = 32
    save_merged: bool = True
    push_to_hub: bool = False
    hub_repo_id: str = ""
    hub_private: bool = True
    install_requirements: str = "auto"
    precision: str = "auto"
    gpu_memory_cap_gib: float = 0
    resume: bool = True
    early_stopping_patience: int = 0
    eval_data: str = "https://raw.githubusercontent.com/FreedomIntelligence/HuatuoGPT-o1/main/evaluation/data/eval_data.json"
    eval_items: int = 30
    eval_greedy: bool = True
    eval_max_new_tokens: int = 1024
    rouge_items: int = 20
    gguf_quantizations: list = dataclasses.field(default_factory=list)
    judge_model: str = ""
    judge_base_url: str = "https://api.openai.com/v1"

    def __post_init__(self):
        positive = ["max_seq_length", "max_steps", "batch_size", "grad_accum", "lora_r", "lora_alpha",
                    "eval_steps", "save_steps", "max_new_tokens", "gen_batch_size"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.early_stopping_patience and self.save_steps % self.eval_steps:
            raise ValueError(f"early_stopping_patience needs save_steps ({self.save_steps}) to be a multiple of "
                             f"eval_steps ({self.eval_steps}), so the best checkpoint can be restored")
        for name in ("max_examples", "val_size", "warmup_steps", "early_stopping_patience", "eval_items",
                     "rouge_items"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        if self.data_config not in DATA_CONFIG_FILES:
            raise ValueError(f"data_config must be one of {sorted(DATA_CONFIG_FILES)}, got {self.data_config!r}")
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto', 'fp16' or 'bf16', got {self.precision!r}")
        if self.gpu_memory_cap_gib < 0:
            raise ValueError(f"gpu_memory_cap_gib must be >= 0 (0 means no cap), got {self.gpu_memory_cap_gib!r}")
        if self.report_to not in ("auto", "wandb", "none"):
            raise ValueError(f"report_to must be 'auto', 'wandb' or 'none', got {self.report_to!r}")
        check_gguf_quantizations(self.gguf_quantizations, "gguf_quantizations")
        if self.judge_model:
            check_judge_base_url(self.judge_base_url)
        if self.push_to_hub and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.hub_repo_id):
            raise ValueError(f"hub_repo_id must look like 'user/name' when push_to_hub is on, got {self.hub_repo_id!r}")


# --------------------------------------------------------------------------------------------------
# Runtime: where we run, which GPU, which backend
# --------------------------------------------------------------------------------------------------
BACKENDS = ("unsloth", "transformers", "cpu")
PRECISIONS = ("auto", "fp16", "bf16")


@dataclasses.dataclass
class Runtime:
    platform: str  # "kaggle", "colab" or "local"
    cuda: bool
    gpu_name: str | None
    capability: tuple[int, int] | None
    bf16: bool
    torch_supports_gpu: bool  # torch was built with kernels for this GPU's architecture
    unsloth_installed: bool
    bitsandbytes_installed: bool

    def describe(self) -> str:
        gpu = f"{self.gpu_name} (compute capability {self.capability[0]}.{self.capability[1]}, bf16 " \
              f"{'yes' if self.bf16 else 'no'})" if self.cuda else "no GPU"
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
        name = torch.cuda.get_device_name(0)
        capability = tuple(torch.cuda.get_device_capability(0))
        arch = f"sm_{capability[0]}{capability[1]}"
        # torch lists the architectures it has kernels for; Kaggle's current torch has no sm_60 (P100).
        supported = arch in torch.cuda.get_arch_list() or any(
            a.startswith("compute_") and int(a[8:]) <= capability[0] * 10 + capability[1]
            for a in torch.cuda.get_arch_list())
        bf16 = bool(supported and torch.cuda.is_bf16_supported())
    return Runtime(
        platform=detect_platform(), cuda=cuda, gpu_name=name, capability=capability, bf16=bf16,
        torch_supports_gpu=supported,
        unsloth_installed=importlib.util.find_spec("unsloth") is not None,
        bitsandbytes_installed=importlib.util.find_spec("bitsandbytes") is not None,
    )


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
    """"auto" keeps what the GPU supports (bf16 from Ampere on, fp16 on a T4); "fp16" forces T4 behaviour."""
    if precision not in PRECISIONS:
        raise ValueError(f"PRECISION must be 'auto', 'fp16' or 'bf16', got {precision!r}")
    if precision == "bf16" and runtime.cuda and not runtime.bf16:
        raise ValueError(f"{runtime.gpu_name} has no bf16 support: use PRECISION = 'fp16' or 'auto'")
    if precision == "fp16" and runtime.cuda:
        return dataclasses.replace(runtime, bf16=False)
    return runtime


def cap_gpu_memory(gib: float) -> None:
    """Let this process use at most `gib` GiB of GPU memory, so a big GPU shows what fits on a T4."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), 0)


def setup_backend(requested: str = "auto", precision: str = "auto", memory_cap_gib: float = 0) -> tuple[Runtime, str]:
    """Detect the runtime, pick the backend, and say which one and why (one line each)."""
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


def parse_requirements(path=REPO_ROOT / "requirements.txt") -> dict[str, str]:
    """{package: version} from a requirements file of `name==version` lines."""
    pins = {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def missing_requirements(path=REPO_ROOT / "requirements.txt") -> list[str]:
    """Pinned packages that are absent or at another version, as `name==version` specs."""
    from importlib import metadata

    missing = []
    for name, version in parse_requirements(path).items():
        try:
            if metadata.version(name) != version:
                missing.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            missing.append(f"{name}=={version}")
    return missing


def install_requirements(mode: str = "auto", path=REPO_ROOT / "requirements.txt") -> str:
    """Install the pinned GPU stack where it is missing. mode: "auto" installs only on Kaggle or Colab
    (a local machine keeps its own environment), "always", or "never"."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"INSTALL_REQUIREMENTS must be 'auto', 'always' or 'never', got {mode!r}")
    missing = missing_requirements(path)
    if not missing:
        return "all pinned requirements present"
    if mode == "never" or (mode == "auto" and detect_platform() == "local"):
        return f"not installing ({mode}, {detect_platform()}); differs from requirements.txt: {', '.join(missing)}"
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    return f"installed {', '.join(missing)}; restart the kernel if transformers was already imported"


# --------------------------------------------------------------------------------------------------
# Secrets: environment, then Colab userdata, then Kaggle Secrets. Values are never printed.
# --------------------------------------------------------------------------------------------------
SECRET_NAMES = {"HF_TOKEN": "pushing to the Hugging Face Hub (and gated downloads)",
                "WANDB_API_KEY": "logging the training run to Weights & Biases",
                "JUDGE_API_KEY": "the optional LLM judge in 04 (any OpenAI-compatible endpoint)"}


def resolve_secret(name: str, environ=os.environ) -> tuple[str | None, str]:
    """Return (value, where it was found). Looks in the environment, Colab userdata, Kaggle Secrets."""
    if environ.get(name):
        return environ[name], "environment"
    try:
        from google.colab import userdata  # type: ignore

        value = userdata.get(name)
        if value:
            return value, "Colab secrets"
    except Exception:  # not on Colab, or the secret is absent or not shared with this notebook
        pass
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore

        value = UserSecretsClient().get_secret(name)
        if value:
            return value, "Kaggle secrets"
    except Exception:  # not on Kaggle, or the secret is not attached to this notebook
        pass
    return None, "not found"


def load_secrets(environ=os.environ) -> dict[str, str]:
    """Resolve every secret into os.environ (where the libraries read them) and report, without values."""
    report = {}
    for name, purpose in SECRET_NAMES.items():
        value, where = resolve_secret(name, environ)
        if value:
            environ[name] = value
            report[name] = f"found ({where})"
        else:
            report[name] = f"not set: skipping {purpose}"
    return report


def secrets_summary(report: dict) -> str:
    return "\n".join(f"{name}: {status}" for name, status in report.items())


def login_services(environ=os.environ) -> list[str]:
    """Log in to the Hub and W&B where a key exists. Returns what happened, one line each."""
    lines = []
    if environ.get("HF_TOKEN"):
        from huggingface_hub import login

        try:
            login(token=environ["HF_TOKEN"], add_to_git_credential=False)
            lines.append("Hugging Face Hub: logged in")
        except Exception as err:  # offline or a bad token; the message never contains the token
            lines.append(f"Hugging Face Hub: login failed ({type(err).__name__}); pushing will be skipped")
    if environ.get("WANDB_API_KEY"):
        lines.append("Weights & Biases: key present; training will log to W&B")
    return lines


# --------------------------------------------------------------------------------------------------
# Files: every artifact is written to a temporary name and renamed, so nothing is left half-written.
# --------------------------------------------------------------------------------------------------
ARTIFACTS = {
    "runtime": ("runtime.json", "00_setup_secrets"),
    "baseline_answers": ("answers/base.jsonl", "01_baseline_inference"),
    "train_data": ("data/train.jsonl", "02_format_dataset"),
    "val_data": ("data/val.jsonl", "02_format_dataset"),
    "data_stats": ("data/stats.json", "02_format_dataset"),
    "length_histogram": ("data/token_lengths.png", "02_format_dataset"),
    "adapter": ("adapter", "03_train"),
    "train_metrics": ("train_metrics.json", "03_train"),
    "loss_curve": ("loss_curve.png", "03_train"),
    "checkpoints": ("checkpoints", "03_train"),
    "tuned_answers": ("answers/tuned.jsonl", "04_compare"),
    "comparison_html": ("comparison.html", "04_compare"),
    "compare_metrics": ("compare_metrics.json", "04_compare"),
    "verdict": ("verdict.json", "04_compare"),
    "verdict_html": ("verdict.html", "04_compare"),
    "merged": ("merged_16bit", "05_export_push"),
    "gguf": ("gguf", "05_export_push"),
    "export_report": ("export.json", "05_export_push"),
}


def artifact(work_dir, key: str) -> pathlib.Path:
    return pathlib.Path(work_dir) / ARTIFACTS[key][0]


# The earlier notebooks whose files each notebook reads. On Kaggle every notebook runs in its own session,
# so its push folder lists these as kernel_sources and Kaggle mounts their outputs under /kaggle/input.
NOTEBOOK_INPUTS = {
    "00_setup_secrets": [],
    "01_baseline_inference": [],
    "02_format_dataset": [],
    "03_train": ["02_format_dataset"],
    "04_compare": ["01_baseline_inference", "02_format_dataset", "03_train"],
    "05_export_push": ["02_format_dataset", "03_train", "04_compare"],
}
KAGGLE_INPUT = pathlib.Path("/kaggle/input")
KAGGLE_WORKING = pathlib.Path("/kaggle/working")


def copy_from_kaggle_input(work_dir, key: str, input_root=None) -> pathlib.Path | None:
    """Find an earlier notebook's output among the Kaggle notebook outputs attached as inputs (read-only,
    under input_root/<its slug>/...), and copy it into WORK_DIR. None when there is no such copy."""
    work = pathlib.Path(work_dir).as_posix()
    work = work.removeprefix(KAGGLE_WORKING.as_posix()).lstrip("/")  # outputs are mounted without this prefix
    relative = pathlib.PurePosixPath(work) / ARTIFACTS[key][0]
    input_root = pathlib.Path(KAGGLE_INPUT if input_root is None else input_root)
    if not input_root.is_dir():
        return None
    found = sorted(input_root.glob(f"**/{relative}"))
    if not found:
        return None
    target = artifact(work_dir, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if found[0].is_dir():
        save_dir_atomic(target, lambda d: shutil.copytree(found[0], d, dirs_exist_ok=True))
    else:
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(found[0], partial)
        os.replace(partial, target)
    print(f"copied {key} from {found[0]} (a Kaggle notebook output attached as input)")
    return target


def require_artifact(work_dir, key: str) -> pathlib.Path:
    """The path of an earlier notebook's output, or a FileNotFoundError naming the notebook to run. On Kaggle
    the file is first looked for among the attached outputs of the earlier notebooks."""
    path = artifact(work_dir, key)
    if not path.exists() and copy_from_kaggle_input(work_dir, key) is None:
        raise FileNotFoundError(f"{path} is missing: run notebooks/{ARTIFACTS[key][1]}.ipynb first "
                                f"with the same WORK_DIR ({work_dir}).")
    return path


def _atomic_write(path, write) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(path, obj) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n"))


def write_jsonl(path, rows: Iterable[dict]) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_dir_atomic(path, save) -> pathlib.Path:
    """Call save(tmp_dir), then move tmp_dir to path, replacing an older copy only once the new one is whole."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        save(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --------------------------------------------------------------------------------------------------
# Prompt templates. Training, baseline and comparison all call render_prompt, so they cannot drift.
# --------------------------------------------------------------------------------------------------
ALPACA_R1 = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. Before answering, think carefully about the "
    "question and create a step-by-step chain of thoughts to ensure a logical and accurate response.\n\n"
    "### Instruction:\nYou are a medical expert with advanced knowledge in clinical reasoning, diagnostics, "
    "and treatment planning. Please answer the following medical question.\n\n"
    "### Question:\n{question}\n\n### Response:\n<think>\n"
)
ZH_R1 = (
    "以下是描述任务的指令，以及提供进一步上下文的输入。请写出一个适当完成请求的回答。"
    "在回答之前，请仔细思考问题，并创建一个逐步的思维链，以确保回答合乎逻辑且准确。\n\n"
    "### 指令：\n你是一位在临床推理、诊断和治疗计划方面具有专业知识的医学专家。"
    "请一步一步推理下面的问题：\n\n### 问题：\n{question}\n\n### 回答：\n<think>\n"
)
# name -> format string, or None for the model's own chat template. Every prompt ends "<think>\n": the
# model's template opens the thought that way, and the completion starts with the CoT right after it.
TEMPLATES = {"r1_chat": None, "alpaca_r1": ALPACA_R1, "zh_r1": ZH_R1}
THINK_END = "\n</think>\n\n"  # between CoT and response, as R1 writes it


def render_prompt(tokenizer, question: str, template: str = "r1_chat") -> str:
    """The prompt text for one question, ending "<think>\\n", holding the BOS text exactly once.

    r1_chat is `apply_chat_template([user], add_generation_prompt=True)`: the template writes the BOS
    itself, so the text must later be tokenised with add_special_tokens=False (see encode_text), or the
    tokenizer's own add_bos_token puts a second BOS in front.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}: choose one of {sorted(TEMPLATES)}")
    if TEMPLATES[template] is None:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tokenizer.bos_token + TEMPLATES[template].format(question=question)


def render_completion(cot: str, response: str) -> str:
    """What the model learns to write after the prompt: CoT, "\\n</think>\\n\\n", response (eos added as an id).

    We append this ourselves instead of rendering an assistant turn through the chat template, because
    the DeepSeek template keeps only the text after </think> and would silently drop the CoT.
    """
    return cot.strip() + THINK_END + response.strip()


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, question: str, template: str = "r1_chat") -> list[int]:
    ids = encode_text(tokenizer, render_prompt(tokenizer, question, template))
    if ids.count(tokenizer.bos_token_id) != 1 or ids[0] != tokenizer.bos_token_id:
        raise ValueError(f"prompt must start with exactly one BOS, got {ids.count(tokenizer.bos_token_id)}")
    return ids


def encode_example(tokenizer, row: dict, template: str = "r1_chat", completion_only_loss: bool = True) -> dict:
    """Token ids and labels for one training row: prompt ids + completion ids + eos.

    Prompt and completion are tokenised separately and concatenated, so the inference prompt is exactly
    the prefix of the training ids. Labels are -100 on the prompt (unless full-text loss is asked for)
    and equal the ids elsewhere, the final eos included: pad = eos in these tokenizers, and a collator
    that masks pad ids would otherwise hide the eos and the model would never learn to stop.
    """
    prompt_ids = encode_prompt(tokenizer, row["Question"], template)
    completion_ids = encode_text(tokenizer, render_completion(row["Complex_CoT"], row["Response"]))
    completion_ids.append(tokenizer.eos_token_id)
    labels = ([-100] * len(prompt_ids) if completion_only_loss else list(prompt_ids)) + completion_ids
    return {"input_ids": prompt_ids + completion_ids, "labels": labels, "prompt_len": len(prompt_ids)}


# --------------------------------------------------------------------------------------------------
# Training data: load, validate, format, measure, split
# --------------------------------------------------------------------------------------------------
class SchemaError(ValueError):
    pass


def load_sft_rows(dataset_name: str, data_config: str, max_examples: int = 0) -> list[dict]:
    """Rows of medical-o1-reasoning-SFT: from a local file or folder (same schema) or from the Hub."""
    if data_config not in DATA_CONFIG_FILES:
        raise ValueError(f"data_config must be one of {sorted(DATA_CONFIG_FILES)}, got {data_config!r}")
    path = pathlib.Path(dataset_name)
    if path.is_dir():
        path = path / DATA_CONFIG_FILES[data_config]
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: a local dataset folder holds one file per config "
                                    f"({', '.join(DATA_CONFIG_FILES.values())})")
    if path.is_file():
        rows = _read_rows(path)
    elif dataset_name.count("/") == 1 and not dataset_name.startswith((".", "/")):
        import datasets

        split = f"train[:{max_examples}]" if max_examples else "train"
        rows = datasets.load_dataset(dataset_name, data_config, split=split).to_list()
    else:
        raise FileNotFoundError(f"dataset {dataset_name!r} is neither a local file or folder nor a Hub name")
    return rows[:max_examples] if max_examples else rows


def _read_rows(path: pathlib.Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return data
    if path.suffix == ".csv":
        import csv

        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .json, .jsonl or .csv)")


def validate_rows(rows: list[dict]) -> None:
    """Raise SchemaError naming the first bad row and column; the message says what to fix."""
    if not rows:
        raise SchemaError("the dataset has no rows")
    missing = [c for c in SFT_COLUMNS if c not in rows[0]]
    if missing:
        raise SchemaError(f"row 0 has no column {missing[0]!r}; columns found: {sorted(rows[0])}. "
                          f"Rename your columns to {list(SFT_COLUMNS)}.")
    for i, row in enumerate(rows):
        for column in SFT_COLUMNS:
            value = row.get(column)
            if not isinstance(value, str):
                raise SchemaError(f"row {i}, column {column!r}: expected a string, got {type(value).__name__}")
            if not value.strip():
                raise SchemaError(f"row {i}, column {column!r} is empty")


def format_rows(rows, tokenizer, template: str, max_seq_length: int, completion_only_loss: bool = True):
    """Encode every row; drop (never cut) those longer than max_seq_length. Returns (records, n_dropped)."""
    records, dropped = [], 0
    for i, row in enumerate(rows):
        enc = encode_example(tokenizer, row, template, completion_only_loss)
        if len(enc["input_ids"]) > max_seq_length:
            dropped += 1
            continue
        records.append({
            "row": i, "question": row["Question"],
            "prompt": render_prompt(tokenizer, row["Question"], template),
            "completion": render_completion(row["Complex_CoT"], row["Response"]) + tokenizer.eos_token,
            "input_ids": enc["input_ids"], "labels": enc["labels"], "prompt_len": enc["prompt_len"],
        })
    return records, dropped


def token_length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)

    def pct(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {"count": len(s), "mean": round(sum(s) / len(s), 1), "median": pct(50), "p90": pct(90),
            "p99": pct(99), "max": s[-1], "min": s[0]}


def dataset_stats(records: list[dict]) -> dict:
    return {
        "whole example": token_length_stats([len(r["input_ids"]) for r in records]),
        "prompt": token_length_stats([r["prompt_len"] for r in records]),
        "completion": token_length_stats([len(r["input_ids"]) - r["prompt_len"] for r in records]),
    }


def stats_table(stats: dict):
    import pandas as pd

    return pd.DataFrame(stats).T[["count", "mean", "median", "p90", "p99", "max"]]


def _new_figure():
    import matplotlib

    matplotlib.use("Agg")  # headless: papermill, Kaggle's "Save & Run All", CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 3.5))


def _save_figure(fig, path) -> pathlib.Path:
    """Write the PNG under a temporary name and rename it, like every other artifact."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_histogram(lengths: list[int], max_seq_length: int, path) -> pathlib.Path:
    fig, ax = _new_figure()
    ax.hist(lengths, bins=min(50, max(5, len(lengths) // 4)), color="#4c72b0")
    ax.axvline(max_seq_length, color="#c44e52", linestyle="--", label=f"max_seq_length = {max_seq_length}")
    ax.set_xlabel("tokens per example (prompt + CoT + response + eos)")
    ax.set_ylabel("examples")
    ax.legend()
    return _save_figure(fig, path)


def split_train_val(records: list[dict], val_size: int, seed: int):
    """Deterministic split: the same rows go to val for the same seed, whatever the order of the calls."""
    if val_size >= len(records):
        raise ValueError(f"val_size ({val_size}) must be smaller than the number of usable rows ({len(records)})")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:val_size])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def compute_dtype(runtime: Runtime):
    import torch

    if not runtime.cuda:
        return torch.float32
    return torch.bfloat16 if runtime.bf16 else torch.float16


def _explain_missing_model(model_name: str, err: Exception) -> Exception:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        where = "it is not a local folder and not in the Hub cache, and HF_HUB_OFFLINE=1 forbids downloading"
    else:
        where = "it is not a local folder and the Hub could not provide it (name misspelt, gated, or no internet)"
    return OSError(f"could not load model {model_name!r}: {where}. Check MODEL_NAME (for example "
                   f"{MODELS['llama-8b']!r}) or the path. ({type(err).__name__})")


def load_tokenizer(model_name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_name)
    except OSError as err:
        raise _explain_missing_model(model_name, err) from err


def load_model_and_tokenizer(model_name: str, backend: str, runtime: Runtime, max_seq_length: int,
                             load_in_4bit: bool = True):
    """Load the base model for the chosen backend. The tokenizer always comes back with left padding off
    (training pads right) and a pad token set (pad = eos is fine: labels are built before padding)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers and trl; must come before them)
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_name, max_seq_length=max_seq_length, dtype=compute_dtype(runtime),
            load_in_4bit=load_in_4bit)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": compute_dtype(runtime)}
        if backend == "transformers":
            kwargs["attn_implementation"] = "sdpa"
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # one GPU per process
            if load_in_4bit:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=compute_dtype(runtime))
        tokenizer = load_tokenizer(model_name)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_name, **kwargs)
        except torch.OutOfMemoryError as err:
            raise RuntimeError(oom_advice(Params(model_name=model_name, max_seq_length=max_seq_length))) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer


def add_lora(model, backend: str, p: Params):
    """Wrap the model with LoRA adapters on the 7 projections (the seeds' r=16, alpha=16, dropout 0)."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=p.lora_r, target_modules=LORA_TARGET_MODULES, lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout, bias="none", use_gradient_checkpointing="unsloth",
            random_state=p.seed, max_seq_length=p.max_seq_length)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    set_seed(p.seed)  # LoRA's A matrices are drawn at random: the same SEED must give the same adapter

    if backend == "transformers" and getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, bias="none",
                        target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


TINY_CONFIGS = {
    # Same architectures as the distills, shrunk so a CPU trains a few steps in seconds.
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
              "rope_theta": 10000.0, "tie_word_embeddings": False},
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
              "rope_theta": 500000.0, "tie_word_embeddings": False},
}
TOKENIZER_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "tokenizer"


def build_tiny_model(out_dir, arch: str = "qwen2", tokenizer_dir=TOKENIZER_FIXTURE, seed: int = 0) -> str:
    """Save a random-initialised tiny model of the given architecture, with the fixture tokenizer, to out_dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    spec = dict(TINY_CONFIGS[arch])
    config = AutoConfig.for_model(
        spec.pop("model_type"), vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.temperature, model.generation_config.top_p = 0.6, 0.95
    model.generation_config.do_sample = True
    save_dir_atomic(out_dir, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
    return str(out_dir)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def resolve_report_to(report_to: str, work_dir=".", environ=os.environ) -> tuple[str, str]:
    """("wandb" or "none", a sentence saying why). "auto" logs to W&B when WANDB_API_KEY is set;
    "wandb" without a key logs offline under WORK_DIR/wandb, for `wandb sync` later."""
    import importlib.util

    wants = report_to == "wandb" or (report_to == "auto" and environ.get("WANDB_API_KEY"))
    if not wants:
        return "none", "not logging to W&B (REPORT_TO is 'none', or 'auto' without WANDB_API_KEY)"
    if environ.get("WANDB_MODE") == "disabled":
        return "none", "not logging to W&B: WANDB_MODE=disabled"
    if importlib.util.find_spec("wandb") is None:
        return "none", "not logging to W&B: the wandb package is not installed"
    environ.setdefault("WANDB_PROJECT", "medical-r1")
    environ["WANDB_DIR"] = str(pathlib.Path(work_dir).resolve())
    pathlib.Path(work_dir).mkdir(parents=True, exist_ok=True)
    if not environ.get("WANDB_API_KEY"):
        environ["WANDB_MODE"] = "offline"
        return "wandb", f"logging to W&B offline under {work_dir}/wandb (no WANDB_API_KEY); upload it later with `wandb sync`"
    return "wandb", f"logging to W&B project {environ['WANDB_PROJECT']!r}"


def _wandb_run():
    """The W&B run in progress, or None (wandb is only looked up, never imported, here)."""
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb else None


def wandb_run_link() -> str | None:
    """The W&B run's URL, or for an offline run the command that uploads it; None when W&B is off."""
    run = _wandb_run()
    if run is None:
        return None
    return run.url or f"wandb sync {pathlib.Path(run.dir).parent}"


def wandb_run_id() -> str | None:
    """The id of the W&B run in progress, so 04 can log its verdict into the same run."""
    run = _wandb_run()
    return run.id if run is not None else None


def process_rank() -> tuple[int, int]:
    """(rank, number of processes) under torchrun or accelerate launch; (0, 1) in a notebook."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank()[0] == 0


def per_process_grad_accum(grad_accum: int, world_size: int) -> int:
    """Accumulation steps per process that keep the effective batch of one process with GRAD_ACCUM: each of
    the N processes takes its own micro-batches, so N processes need GRAD_ACCUM / N each."""
    if grad_accum % world_size:
        raise ValueError(f"GRAD_ACCUM ({grad_accum}) must be a multiple of the number of processes ({world_size}) "
                         f"to keep the effective batch; use GRAD_ACCUM = {world_size * max(1, grad_accum // world_size)}")
    return grad_accum // world_size


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


def resolve_optimizer(optim: str, backend: str) -> str:
    """8-bit AdamW needs bitsandbytes and a GPU; on CPU the same AdamW runs in 32-bit."""
    return "adamw_torch" if backend == "cpu" and "8bit" in optim else optim


def weight_snapshot(model) -> dict:
    """LoRA tensors copied whole; base tensors as a float64 (sum, sum of squares) fingerprint, so an 8B
    model is not copied into RAM. Compared with weight_changes after training."""
    import torch

    snap = {}
    with torch.no_grad():
        for name, t in model.named_parameters():
            if "lora_" in name:
                snap[name] = t.detach().float().cpu().clone()
            else:
                total = squares = 0.0
                for chunk in t.detach().reshape(-1).split(2**24):  # 128 MB of float64 at a time
                    x = chunk.to(torch.float64)
                    total += x.sum().item()
                    squares += (x * x).sum().item()
                snap[name] = (total, squares)
    return snap


def weight_changes(before: dict, model) -> dict:
    """How many LoRA and base tensors changed since weight_snapshot (training should move only LoRA)."""
    after = weight_snapshot(model)
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    lora_changed = [n for n in lora if not bool((after[n] == before[n]).all())]
    base_changed = [n for n in base if after[n] != before[n]]
    return {"lora_tensors": len(lora), "lora_tensors_changed": len(lora_changed),
            "base_tensors": len(base), "base_tensors_changed": len(base_changed),
            "base_changed_examples": base_changed[:5]}


def records_to_dataset(records: list[dict]):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [r["input_ids"] for r in records],
                                       "labels": [r["labels"] for r in records]})


def make_trainer(model, tokenizer, train_records, val_records, p: Params, backend: str, runtime: Runtime):
    """TRL SFTTrainer on pre-tokenised ids + labels (so TRL adds no BOS, eos or masking of its own)."""
    from trl import SFTConfig, SFTTrainer

    report_to, why = resolve_report_to(p.report_to, p.work_dir)
    print(why)
    world_size = process_rank()[1]
    args = SFTConfig(
        output_dir=str(artifact(p.work_dir, "checkpoints")),
        per_device_train_batch_size=p.batch_size, per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=per_process_grad_accum(p.grad_accum, world_size),
        warmup_steps=p.warmup_steps, max_steps=p.max_steps,
        ddp_find_unused_parameters=False if world_size > 1 else None,  # LoRA: every trainable tensor gets a gradient
        learning_rate=p.learning_rate, weight_decay=p.weight_decay, lr_scheduler_type="linear",
        optim=resolve_optimizer(p.optim, backend), seed=p.seed, data_seed=p.seed,
        fp16=runtime.cuda and not runtime.bf16, bf16=runtime.cuda and runtime.bf16,
        logging_steps=1, logging_nan_inf_filter=False,  # the default hides a NaN loss behind earlier values
        eval_strategy="steps" if val_records else "no", eval_steps=p.eval_steps,
        save_strategy="steps", save_steps=p.save_steps, save_total_limit=2,
        max_length=p.max_seq_length, report_to=report_to,
        # Packing: whole examples laid end to end in rows of up to max_length tokens, with no padding; each
        # example attends only to itself (position ids restart at 0 and the attention is block-diagonal).
        # No example is cut: 02 dropped the longer ones. The "bfd" (best-fit decreasing) order is fixed.
        packing=p.packing, packing_strategy="bfd",
        gradient_checkpointing=backend == "transformers", dataset_num_proc=None,
        use_cpu=backend == "cpu", dataloader_pin_memory=runtime.cuda,
    )
    callbacks = []
    if p.early_stopping_patience and val_records:
        from transformers import EarlyStoppingCallback

        # Stop once val loss has not improved for `patience` evaluations, and keep the best adapter.
        args.load_best_model_at_end, args.metric_for_best_model, args.greater_is_better = True, "eval_loss", False
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience))
    return SFTTrainer(model=model, args=args, processing_class=tokenizer, callbacks=callbacks,
                      train_dataset=records_to_dataset(train_records),
                      eval_dataset=records_to_dataset(val_records) if val_records else None)


def last_checkpoint(work_dir) -> str | None:
    """The newest complete checkpoint under WORK_DIR/checkpoints, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = artifact(work_dir, "checkpoints")
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def stop_on_non_finite_loss():
    """A TrainerCallback that stops at the first NaN or infinite loss, before that step is checkpointed,
    so the last checkpoint on disk is the last good one."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        bad_step = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.bad_step = state.global_step
                control.should_training_stop = True
                control.should_save = False
            return control

    return StopOnNonFiniteLoss()


def oom_advice(p: Params) -> str:
    return (f"CUDA ran out of memory. Lower, in this order: BATCH_SIZE (now {p.batch_size}; 1 with GRAD_ACCUM "
            f"{p.batch_size * p.grad_accum} keeps the effective batch), MAX_SEQ_LENGTH (now {p.max_seq_length}; "
            f"1024 drops about 1.4% of the English rows), or the model size (unsloth/DeepSeek-R1-Distill-Qwen-7B "
            f"or -1.5B). Restart the kernel after an out-of-memory error.")


def train(trainer, p: Params, resume: bool = True):
    """trainer.train(), resuming from the last checkpoint in WORK_DIR when there is one, stopping at a
    non-finite loss, and turning an out-of-memory error into the settings to lower. The GPU's peak-memory
    counter is reset first, so train_metrics reports training's own peak."""
    import torch

    checkpoint = last_checkpoint(p.work_dir) if resume else None
    if checkpoint:
        print(f"resuming from {checkpoint}")
    guard = stop_on_non_finite_loss()
    trainer.add_callback(guard)
    trainer.add_callback(step_clock())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except torch.OutOfMemoryError as err:
        raise RuntimeError(oom_advice(p)) from err
    if guard.bad_step is not None:
        good = last_checkpoint(p.work_dir)
        raise RuntimeError(
            f"the training loss became NaN or infinite at step {guard.bad_step}; training stopped and no adapter "
            f"was saved. Lower LEARNING_RATE (now {p.learning_rate:g}); in fp16 (T4) an overflow can also cause "
            f"this. The last good checkpoint is {good or 'none (no checkpoint was written before that step)'}; "
            f"delete {artifact(p.work_dir, 'checkpoints')} to start afresh.")
    return result


def step_clock():
    """A TrainerCallback keeping the wall-clock seconds from the start of training to the end of each step,
    after the GPU has finished the step, for seconds per step without start-up."""
    import time

    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.start, self.step_end_s = None, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # this runs before the step's loss is read, which would wait for it
            self.step_end_s.append(round(time.perf_counter() - self.start, 4))

    return StepClock()


def loss_history(trainer) -> dict:
    train = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    clocks = [c for c in trainer.callback_handler.callbacks if hasattr(c, "step_end_s")]
    return {"train": train, "eval": evals, "step_end_s": clocks[-1].step_end_s if clocks else []}


def plot_loss_curve(history: dict, path) -> pathlib.Path:
    fig, ax = _new_figure()
    if history["train"]:
        ax.plot(*zip(*history["train"]), label="train loss", color="#4c72b0")
    if history["eval"]:
        ax.plot(*zip(*history["eval"]), "o-", label="val loss", color="#c44e52")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (CoT + response tokens)")
    ax.legend()
    return _save_figure(fig, path)


def summarize_losses(history: dict, window: int = 3) -> dict:
    """First and last train losses, averaged over a few steps so one noisy batch does not decide."""
    losses = [loss for _, loss in history["train"]]
    if not losses:
        raise RuntimeError("training logged no loss; check max_steps and logging_steps")
    w = max(1, min(window, len(losses) // 2))
    return {"first_loss": sum(losses[:w]) / w, "last_loss": sum(losses[-w:]) / w, "steps_logged": len(losses),
            "all_finite": all(math.isfinite(x) for x in losses)}


# --------------------------------------------------------------------------------------------------
# Generation and evaluation
# --------------------------------------------------------------------------------------------------
def split_thinking(text: str) -> tuple[str, str, bool]:
    """(thinking, answer, finished): the text before and after the last </think>; finished is False
    when the model never closed its thought (it ran out of tokens)."""
    if "</think>" not in text:
        return text.strip(), "", False
    thinking, _, answer = text.rpartition("</think>")
    return thinking.strip(), answer.strip(), True


def generate_answers(model, tokenizer, questions: list[dict], template: str, max_new_tokens: int,
                     temperature: float, top_p: float, do_sample: bool, batch_size: int, seed: int,
                     backend: str, min_new_tokens: int = 0) -> list[dict]:
    """Answer each question with the training prompt (left-padded batches, sorted by length).
    min_new_tokens > 0 forbids stopping earlier (benchmarks use it to compare at equal output tokens)."""
    import torch

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    encoded = [encode_prompt(tokenizer, q["question"], template) for q in questions]
    order = sorted(range(len(questions)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    outputs: dict[int, dict] = {}
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
                                 min_new_tokens=min_new_tokens or None, **sampling)
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id) + 1]
            text = tokenizer.decode(new, skip_special_tokens=True)
            thinking, answer, finished = split_thinking(text)
            outputs[i] = {**questions[i], "output": text, "thinking": thinking, "answer": answer,
                          "finished_thinking": finished, "new_tokens": len(new)}
    return [outputs[i] for i in range(len(questions))]


def eval_loss(model, records: list[dict], batch_size: int = 4) -> float:
    """Mean cross-entropy per label token over records (the same tokens the trainer's eval loss uses)."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in batch], device=device)
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch],
                            device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                 shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += (shift_labels != -100).sum().item()
    return total / count


def load_adapter_model(work_dir, backend: str, runtime: Runtime, max_seq_length: int, load_in_4bit: bool):
    """Base model + the adapter that 03 saved (its base model name is read from the adapter config)."""
    adapter_dir = require_artifact(work_dir, "adapter")
    base_name = read_json(adapter_dir / "adapter_config.json")["base_model_name_or_path"]
    if backend == "unsloth":
        model, tokenizer = load_model_and_tokenizer(str(adapter_dir), backend, runtime, max_seq_length,
                                                    load_in_4bit)
        return model, tokenizer, base_name
    from peft import PeftModel

    model, tokenizer = load_model_and_tokenizer(base_name, backend, runtime, max_seq_length, load_in_4bit)
    return PeftModel.from_pretrained(model, str(adapter_dir)), tokenizer, base_name


def comparison_rows(base_answers: list[dict], tuned_answers: list[dict]) -> list[dict]:
    tuned = {a["id"]: a for a in tuned_answers}
    missing = [a["id"] for a in base_answers if a["id"] not in tuned]
    if missing:
        raise ValueError(f"tuned answers are missing questions {missing}: run 04 on the same question set")
    return [{"id": a["id"], "question": a["question"], "base": a["output"], "tuned": tuned[a["id"]]["output"],
             "base_finished": a["finished_thinking"], "tuned_finished": tuned[a["id"]]["finished_thinking"]}
            for a in base_answers]


def comparison_html(rows: list[dict], losses: dict) -> str:
    import html

    def cell(text):
        return f"<td style='white-space:pre-wrap;vertical-align:top'>{html.escape(text)}</td>"

    body = "".join(f"<tr>{cell(r['question'])}{cell(r['base'])}{cell(r['tuned'])}</tr>" for r in rows)
    loss = (f"<p>Validation loss (CoT + response tokens): base {losses['base_val_loss']:.4f}, "
            f"tuned {losses['tuned_val_loss']:.4f}</p>") if losses else ""
    return ("<html><head><meta charset='utf-8'><title>Base vs tuned</title></head><body>"
            f"<h2>Base vs fine-tuned answers</h2>{loss}<table border='1' style='border-collapse:collapse'>"
            f"<tr><th>Question</th><th>Base model</th><th>Fine-tuned</th></tr>{body}</table></body></html>")


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------
PROBE_PROMPTS = ["A 45-year-old man has sudden chest pain.", "患者空腹血糖升高，应考虑什么？"]


def probe_logits(model, tokenizer, template: str = "r1_chat"):
    import torch

    device = model.get_input_embeddings().weight.device
    out = []
    with torch.no_grad():
        for q in PROBE_PROMPTS:
            ids = torch.tensor([encode_prompt(tokenizer, q, template)], device=device)
            out.append(model(input_ids=ids).logits.float().cpu())
    return out


def max_logit_difference(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def merge_dtype(runtime: Runtime):
    """The merged model's format: bfloat16 (the distills' own) for GPU runs, float32 for CPU runs."""
    import torch

    return torch.bfloat16 if runtime.cuda else torch.float32


def merge_base_name(work_dir) -> str:
    """The 16-bit base to merge into: the MODEL_NAME 03 trained from (Unsloth records its 4-bit copy in
    the adapter config, and a merge into dequantised 4-bit weights is not the model that was evaluated)."""
    name = read_json(require_artifact(work_dir, "train_metrics"))["model_name"]
    if name.endswith("bnb-4bit"):
        raise ValueError(f"{name} holds 4-bit weights only: merging needs 16-bit ones. Train from the 16-bit "
                         f"repository (e.g. {MODELS['llama-8b']}); Unsloth still loads it in 4 bits.")
    return name


def load_16bit_with_adapter(base_name: str, adapter_dir, dtype, merge: bool = False):
    """Base model in 16 bits (or float32) with the adapter, through plain transformers + PEFT, in CPU RAM:
    an 8B model needs 16 GB there (Kaggle has 30), and the GPU stays free."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_name, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.merge_and_unload() if merge else model


def _collect_garbage() -> None:
    """Return freed model memory now; callers `del` their own reference first (a `del` inside a helper
    would only drop the helper's copy of the name, and the caller's model would stay in RAM)."""
    import gc

    gc.collect()


def count_parameters(model_name: str) -> int:
    """Parameters of a model, from its config alone (built on the meta device: no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_name))
    return sum(t.numel() for t in model.parameters())


def check_disk_space(folder, needed_bytes: int, disk_usage=shutil.disk_usage) -> None:
    """Refuse, before writing anything, when the folder's disk cannot hold needed_bytes (plus 10%)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = disk_usage(folder).free
    if free < needed_bytes * 1.1:
        raise RuntimeError(
            f"the merged model needs about {needed_bytes / 1e9:.1f} GB but {folder} has {free / 1e9:.1f} GB free "
            f"(Kaggle's /kaggle/working holds 20 GB). Set SAVE_MERGED = False to keep only the adapter "
            f"(it loads on top of the base model), point WORK_DIR at a larger disk (on Kaggle, /tmp is not "
            f"saved but is larger), or free space.")


def save_merged(work_dir, runtime: Runtime) -> pathlib.Path:
    """Merge LoRA into the 16-bit base weights with PEFT on the CPU and save, to a temporary folder first so
    a failed merge leaves nothing behind. The same code serves every backend, needs no GPU memory, and
    merges into the 16-bit weights MODEL_NAME names rather than into the 4-bit copy that trained."""
    import torch

    adapter_dir = require_artifact(work_dir, "adapter")
    base_name = merge_base_name(work_dir)
    bytes_per_parameter = 4 if merge_dtype(runtime) == torch.float32 else 2
    check_disk_space(work_dir, count_parameters(base_name) * bytes_per_parameter)
    model = load_16bit_with_adapter(base_name, adapter_dir, merge_dtype(runtime), merge=True)
    tokenizer = load_tokenizer(str(adapter_dir))
    path = save_dir_atomic(artifact(work_dir, "merged"),
                           lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
    return path  # the merged model is freed on return, before verify_merge loads two more copies in turn


def merge_tolerance(dtype) -> float:
    """Largest |logit difference| allowed, relative to the largest |logit|. A float32 merge is exact up to
    rounding, so the check is strict there (the CPU path the tests run). In bfloat16 it is a coarse guard:
    a correct merge of a random-weight Qwen-1.5B shape (28 layers) differed from base + adapter by 11% of
    the largest logit (gpu/RESULTS.md), because random networks amplify rounding; for an 8-layer one, 2.7%.
    Real weights were not available to calibrate it further."""
    import torch

    return 1e-4 if dtype == torch.float32 else 0.15


def compare_logits(reference: list, candidate: list) -> dict:
    agree = total = 0
    for x, y in zip(reference, candidate):
        agree += (x.argmax(-1) == y.argmax(-1)).sum().item()
        total += x.shape[0] * x.shape[1]
    scale = max(x.abs().max().item() for x in reference)
    diff = max_logit_difference(reference, candidate)
    return {"max_abs_diff": diff, "relative_diff": diff / scale, "argmax_agreement": agree / total}


def verify_merge(work_dir, runtime: Runtime) -> dict:
    """Logits of the saved merged model against base + adapter, in the same dtype on the CPU, on probe prompts."""
    from transformers import AutoModelForCausalLM

    adapter_dir = require_artifact(work_dir, "adapter")
    dtype = merge_dtype(runtime)
    tokenizer = load_tokenizer(str(adapter_dir))
    reference_model = load_16bit_with_adapter(merge_base_name(work_dir), adapter_dir, dtype)
    reference = probe_logits(reference_model, tokenizer)
    del reference_model  # before the merged copy loads: two 8B models do not fit Kaggle's 30 GB
    _collect_garbage()
    merged = AutoModelForCausalLM.from_pretrained(str(artifact(work_dir, "merged")), dtype=dtype)
    check = compare_logits(reference, probe_logits(merged, tokenizer))
    del merged
    _collect_garbage()
    check["tolerance"] = merge_tolerance(dtype)
    check["ok"] = check["relative_diff"] <= check["tolerance"]
    return check


def export_merged(work_dir, runtime: Runtime, save: bool) -> dict:
    """Save the merged 16-bit model and verify it. Raises RuntimeError, and nothing is pushed, when the
    merge does not reproduce base + adapter."""
    if not save:
        return {"merged": None, "verified": None, "summary": "SAVE_MERGED is False: only the adapter is kept"}
    out_dir = save_merged(work_dir, runtime)
    check = verify_merge(work_dir, runtime)
    report = {"merged": str(out_dir), "verified": check["ok"], "check": check,
              "summary": f"merged model written to {out_dir}; max |logit difference| vs base + adapter "
                         f"{check['max_abs_diff']:.2e} ({check['relative_diff']:.1e} of the largest logit, "
                         f"tolerance {check['tolerance']:.2g}); next-token agreement {check['argmax_agreement']:.1%}"}
    if not check["ok"]:
        raise RuntimeError(f"the merged model does not match base + adapter ({report['summary']}); it will "
                           f"not be pushed. Keep using the adapter in {artifact(work_dir, 'adapter')}.")
    return report


GGUF_QUANTIZATIONS = ("q4_k_m", "q8_0", "q5_k_m", "f16")  # those 05 accepts; llama.cpp names


def check_gguf_quantizations(quantizations, name: str) -> None:
    unknown = sorted(set(quantizations) - set(GGUF_QUANTIZATIONS))
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; choose from {list(GGUF_QUANTIZATIONS)}")


def ollama_modelfile(tokenizer, gguf_name: str, template: str = "r1_chat", temperature: float = 0.6,
                     top_p: float = 0.95) -> str:
    """An Ollama Modelfile for a GGUF of the tuned model. Its chat template is cut from render_prompt, so a
    question reaches the model exactly as in training (the GGUF's tokenizer adds the BOS itself)."""
    marker = "\x00QUESTION\x00"
    prompt = render_prompt(tokenizer, marker, template).removeprefix(tokenizer.bos_token)
    before, after = prompt.split(marker)
    turns = ('{{ if .System }}{{ .System }}{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}'
             f'{before}{{{{ .Content }}}}{after}{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}'
             f'{tokenizer.eos_token}{{{{ end }}}}{{{{ end }}}}')
    stops = [tokenizer.eos_token, *[t for t in ("<｜User｜>",) if t in tokenizer.get_vocab()]]
    return "\n".join([f"FROM ./{gguf_name}", f'TEMPLATE """{turns}"""', f"PARAMETER temperature {temperature}",
                      f"PARAMETER top_p {top_p}", *[f'PARAMETER stop "{t}"' for t in stops]]) + "\n"


def export_gguf(work_dir, backend: str, runtime: Runtime, quantizations: list[str], max_seq_length: int = 2048) -> dict:
    """GGUF files (through Unsloth and llama.cpp) and an Ollama Modelfile beside each, in WORK_DIR/gguf.
    Where this cannot run (another backend, or llama.cpp cannot be fetched and built) the report says why
    and nothing is left half-written; the adapter and the merged model are unaffected."""
    if not quantizations:
        return {"files": [], "skipped": "GGUF_QUANTIZATIONS is empty"}
    check_gguf_quantizations(quantizations, "GGUF_QUANTIZATIONS")
    if backend != "unsloth":
        return {"files": [], "skipped": f"GGUF export runs through Unsloth on a GPU; this run's backend is {backend!r}"}
    template = read_json(require_artifact(work_dir, "data_stats"))["template"]
    model, tokenizer, _ = load_adapter_model(work_dir, backend, runtime, max_seq_length, True)
    out_dir = artifact(work_dir, "gguf")

    def save(tmp):
        model.save_pretrained_gguf(tmp, tokenizer, quantization_method=list(quantizations))
        for gguf in pathlib.Path(tmp).glob("*.gguf"):
            (pathlib.Path(tmp) / f"Modelfile.{gguf.stem}").write_text(ollama_modelfile(tokenizer, gguf.name, template))

    try:
        save_dir_atomic(out_dir, save)
    except Exception as err:  # llama.cpp is cloned and compiled on first use: no internet or no compiler
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        return {"files": [], "skipped": f"GGUF export failed, so it was skipped ({type(err).__name__}: {first_line}). "
                                        "It needs internet to fetch llama.cpp and a C++ compiler to build it; "
                                        "the adapter and the merged model are unaffected"}
    return {"files": sorted(str(f) for f in out_dir.iterdir()), "skipped": None}


def model_card(work_dir, hub_repo_id: str = "") -> str:
    """A Hub model card (README.md) from the run's own files: base model, data, training settings, losses,
    and the benchmark verdict when 04 has written one. Holds no secret: it is built from saved metrics."""
    train = read_json(require_artifact(work_dir, "train_metrics"))
    data = read_json(require_artifact(work_dir, "data_stats"))
    settings = {k: train["params"][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "learning_rate",
                                               "max_steps", "batch_size", "grad_accum", "optim", "seed",
                                               "max_seq_length", "completion_only_loss") if k in train["params"]}
    dataset = data["dataset_name"] if data["dataset_name"] == DATASET_NAME else "local data in its schema"
    lines = [
        "---", f"base_model: {train['model_name']}", "library_name: peft", "license: mit",
        f"datasets:\n- {DATASET_NAME}", "tags:\n- medical\n- reasoning\n- deepseek-r1\n- lora\n- unsloth\n- trl", "---",
        f"# {hub_repo_id or 'DeepSeek-R1 medical reasoning LoRA'}", "",
        f"LoRA fine-tune of `{train['model_name']}` on {dataset} (config `{data['data_config']}`, "
        f"{data['train']} training examples, template `{data['template']}`), trained with the medical-r1 notebooks "
        f"(backend: {train['backend']}).", "",
        "## Training", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in settings.items()], "",
        f"Training loss {train['first_loss']:.4f} -> {train['last_loss']:.4f}."
        + (f" Training run: {train['wandb']}" if str(train.get("wandb")).startswith("https://") else ""),
    ]
    if artifact(work_dir, "verdict").exists():
        rows = read_json(artifact(work_dir, "verdict"))["rows"]
        lines += ["", "## Did fine-tuning help?", "", "| benchmark | items | base | tuned | verdict |", "|---|---|---|---|---|",
                  *[f"| {r['benchmark']} | {r['items']} | {100 * r['base_accuracy']:.1f}% | "
                    f"{100 * r['tuned_accuracy']:.1f}% | {r['verdict']} |" for r in rows]]
    else:
        lines += ["", "No benchmark evaluation was run (notebook 04)."]
    lines += ["", "Not medical advice: a research artefact. Check every answer with a clinician."]
    return "\n".join(lines) + "\n"


def write_card(work_dir, card: str, report: dict) -> list[str]:
    """Put the model card beside the adapter and, when there is one, the merged model."""
    folders = [artifact(work_dir, "adapter")] + ([pathlib.Path(report["merged"])] if report.get("merged") else [])
    return [str(write_text(folder / "README.md", card)) for folder in folders]


def hub_upload_plan(p: Params, environ=os.environ) -> list[str]:
    """What 05 will push, or the reason it pushes nothing. Never holds the token itself."""
    if not p.push_to_hub:
        return []
    if not environ.get("HF_TOKEN"):
        raise RuntimeError("push_to_hub is on but HF_TOKEN is not set: add it as a Kaggle or Colab secret "
                           "(or an environment variable) and run 00_setup_secrets again")
    plan = [f"adapter -> {p.hub_repo_id}-lora"]
    if p.save_merged:
        plan.append(f"merged 16-bit model -> {p.hub_repo_id}")
    return plan


def push_to_hub(p: Params, plan: list[str], report: dict) -> list[str]:
    """Push what the plan lists. The token is read by huggingface_hub from the environment, never passed
    around or printed. A failure leaves the local files in place, so the cell can simply be re-run."""
    if not plan:
        return []
    from huggingface_hub import HfApi

    api = HfApi()
    uploads = [(f"{p.hub_repo_id}-lora", artifact(p.work_dir, "adapter"))]
    if p.save_merged and report.get("verified"):
        uploads.append((p.hub_repo_id, pathlib.Path(report["merged"])))
    pushed = []
    for repo_id, folder in uploads:
        try:
            api.create_repo(repo_id, private=p.hub_private, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id)
        except Exception as err:  # network, permissions, quota: the message never holds the token
            raise RuntimeError(f"pushing {folder} to {repo_id} failed ({type(err).__name__}: {err}). The local files "
                               f"are kept; {pushed or 'nothing'} was pushed. Fix the cause (a write token? "
                               f"internet on?) and run this cell again.") from err
        pushed.append(repo_id)
    return pushed


# --------------------------------------------------------------------------------------------------
# Small records and displays the notebooks show or save
# --------------------------------------------------------------------------------------------------
def write_text(path, text: str) -> pathlib.Path:
    return _atomic_write(path, lambda f: f.write(text))


def runtime_record(runtime: Runtime, backend: str, secrets: dict) -> dict:
    """What 00 saves: the runtime and which secrets were found (never their values)."""
    return {**dataclasses.asdict(runtime), "backend": backend,
            "secrets_found": {name: status.startswith("found") for name, status in secrets.items()}}


def answers_table(answers: list[dict]):
    import pandas as pd

    return pd.DataFrame([{"question": a["question"][:80], "answer": a["answer"][:300] or "(no </think>: "
                          "ran out of tokens)", "new tokens": a["new_tokens"]} for a in answers])


def format_record(model_name, dataset_name, data_config, template, max_seq_length, completion_only_loss,
                  rows, dropped, n_train, n_val, stats) -> dict:
    """What 02 saves beside the data, so 03 and 04 use the same tokenizer, template and length."""
    return {"model_name": model_name, "dataset_name": dataset_name, "data_config": data_config,
            "template": template, "max_seq_length": max_seq_length, "completion_only_loss": completion_only_loss,
            "rows": rows, "dropped_over_length": dropped, "train": n_train, "val": n_val, "token_lengths": stats}


def load_formatted_data(work_dir, model_name: str, max_seq_length: int):
    """02's train and val records, after checking they were made for this model and length."""
    record = read_json(require_artifact(work_dir, "data_stats"))
    if record["model_name"] != model_name:
        raise ValueError(f"the data in {work_dir}/data was tokenised for {record['model_name']!r}, not "
                         f"{model_name!r}: run 02_format_dataset with MODEL_NAME = {model_name!r}")
    if record["max_seq_length"] > max_seq_length:
        raise ValueError(f"the data was formatted for max_seq_length {record['max_seq_length']}, longer than "
                         f"{max_seq_length}: use the same MAX_SEQ_LENGTH in 02 and 03")
    return (read_jsonl(require_artifact(work_dir, "train_data")),
            read_jsonl(require_artifact(work_dir, "val_data")))


def describe_training(trainer, train: list, val: list) -> str:
    a = trainer.args
    effective = a.per_device_train_batch_size * a.gradient_accumulation_steps
    precision = "bf16" if a.bf16 else "fp16" if a.fp16 else "fp32"
    optim = getattr(a.optim, "value", a.optim)
    trainable = sum(t.numel() for t in trainer.model.parameters() if t.requires_grad)
    if a.packing:
        rows = len(trainer.train_dataset)
        unit = (f"packed rows of up to {a.max_length} tokens ({len(train)} examples in {rows} rows, "
                f"{len(train) / max(rows, 1):.1f} per row)")
    else:
        unit = "examples"
    return (f"{len(train)} train / {len(val)} val examples; {a.max_steps} steps of {effective} {unit} "
            f"({a.per_device_train_batch_size} x {a.gradient_accumulation_steps} accumulation); {precision}; "
            f"optimizer {optim}; {trainable:,} trainable parameters; logging to {a.report_to or 'nothing'}")


def train_record(p: Params, backend: str, history: dict, changes: dict, trainer_metrics: dict) -> dict:
    return {"backend": backend, "model_name": p.model_name, **summarize_losses(history),
            "eval_losses": history["eval"], "train_losses": history["train"],
            "step_end_s": history.get("step_end_s", []), "weight_changes": changes,
            "train_runtime_s": trainer_metrics.get("train_runtime"), **peak_gpu_memory_gib(),
            "wandb": wandb_run_link(), "wandb_run_id": wandb_run_id(),
            "params": {k: v for k, v in dataclasses.asdict(p).items() if k != "hub_repo_id"}}


def save_training_outputs(work_dir, trainer, model, tokenizer, p: Params, backend: str, before: dict, result) -> dict:
    """03's files (loss curve, adapter, train_metrics.json), written by the first process only: under DDP
    every process holds the same adapter, and one writer leaves no half-written file."""
    history = loss_history(trainer)
    metrics = train_record(p, backend, history, weight_changes(before, model), result.metrics)
    metrics["processes"] = process_rank()[1]
    if is_main_process():
        plot_loss_curve(history, artifact(work_dir, "loss_curve"))
        save_adapter(model, tokenizer, artifact(work_dir, "adapter"))
        write_json(artifact(work_dir, "train_metrics"), metrics)
    return metrics


def train_summary(metrics: dict) -> str:
    c = metrics["weight_changes"]
    wandb = f"; W&B: {metrics['wandb']}" if metrics.get("wandb") else ""
    return (f"train loss {metrics['first_loss']:.4f} -> {metrics['last_loss']:.4f}{wandb}; "
            f"LoRA tensors changed: {c['lora_tensors_changed']}/{c['lora_tensors']}; "
            f"base tensors changed: {c['base_tensors_changed']}/{c['base_tensors']}")


def save_adapter(model, tokenizer, path) -> pathlib.Path:
    return save_dir_atomic(path, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))


def base_vs_tuned_loss(model, val: list[dict]) -> dict:
    """Validation loss with the adapter switched off (the base model) and on (the tuned model)."""
    with model.disable_adapter():
        base = eval_loss(model, val)
    tuned = eval_loss(model, val)
    return {"base_val_loss": base, "tuned_val_loss": tuned,
            "base_val_perplexity": math.exp(base), "tuned_val_perplexity": math.exp(tuned)}


def show_image(path):
    """Display a saved figure (on the first process only: the others wrote none)."""
    from IPython.display import Image, display

    if is_main_process():
        display(Image(filename=str(path)))


def show_html(path):
    from IPython.display import HTML, display

    display(HTML(pathlib.Path(path).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------------
# Benchmarks: did fine-tuning help? Multiple-choice accuracy, base vs tuned, with intervals.
# --------------------------------------------------------------------------------------------------
EVAL_BENCHMARKS = ("MedQA_USLME_test", "MedMCQA_validation", "PubMedQA_test", "MMLU-Pro_Medical_test",
                   "GPQA_Medical_test")


class EvalDataError(ValueError):
    pass


def validate_eval_data(data) -> None:
    """Raise EvalDataError naming the benchmark, item and field of the first problem."""
    if not isinstance(data, dict) or not data:
        raise EvalDataError("the evaluation file must be a JSON object keyed by benchmark name "
                            f"(HuatuoGPT-o1's eval_data.json, e.g. {EVAL_BENCHMARKS[0]!r})")
    for name, items in data.items():
        if not isinstance(items, list) or not items:
            raise EvalDataError(f"benchmark {name!r}: expected a non-empty list of items")
        for i, item in enumerate(items):
            where = f"benchmark {name!r}, item {i}"
            if not isinstance(item, dict):
                raise EvalDataError(f"{where}: expected an object with question, options, answer_idx")
            if not isinstance(item.get("question"), str) or not item["question"].strip():
                raise EvalDataError(f"{where}: 'question' must be a non-empty string")
            options = item.get("options")
            if not isinstance(options, dict) or len(options) < 2 or not all(
                    re.fullmatch(r"[A-Z]", k) and isinstance(v, str) for k, v in options.items()):
                raise EvalDataError(f"{where}: 'options' must map letters A, B, ... to strings")
            if item.get("answer_idx") not in options:
                raise EvalDataError(f"{where}: 'answer_idx' {item.get('answer_idx')!r} is not one of the options "
                                    f"{sorted(options)}")


def load_eval_data(source: str, items_per_benchmark: int, seed: int) -> dict[str, list[dict]]:
    """HuatuoGPT-o1's evaluation set from its public URL or a local file, validated, with the same
    `items_per_benchmark` items per benchmark for a given seed (0 keeps every item)."""
    if source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=60) as response:  # noqa: S310 (a fixed public URL)
            text = response.read().decode("utf-8")
    else:
        text = pathlib.Path(source).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{source} is not valid JSON ({err.msg} at line {err.lineno})") from err
    validate_eval_data(data)
    picked = {}
    for name, items in data.items():
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        keep = sorted(order[:items_per_benchmark]) if items_per_benchmark else order
        picked[name] = [{**items[i], "benchmark": name, "id": f"{name}/{i}"} for i in sorted(keep)]
    return picked


def mc_question(item: dict) -> str:
    """HuatuoGPT-o1's evaluation prompt: the question, then one "X. option" line per option."""
    lines = "\n".join(f"{k}. {v}" for k, v in item["options"].items())
    return f"Please answer the following multiple-choice question:\n{item['question']}\n{lines}"


_ANSWER_IS = re.compile(
    r"(?:[Aa]nswer\s*(?:is|would be|should be)?\s*(?:[Oo]ption\s*)?[:：]?\s*|答案(?:是|为|应为|选)?\s*[:：]?\s*)"
    r"[\(\[（*\s]*([A-J])(?![A-Za-z])")
_MARKED = re.compile(r"\*\*\s*\(?([A-J])\)?\s*(?:\*\*|[.:)])|[\(\[（]([A-J])[\)\]）]")
_LETTER = re.compile(r"(?<![A-Za-z])([A-J])(?![A-Za-z])")


def extract_choice(output: str, options: dict) -> tuple[str | None, str]:
    """(letter, rule that found it). Only the text after the last </think> is read, so letters inside the
    reasoning are never caught; an output without </think> ran out of tokens and counts as no answer.
    Rules, in order: "answer is X" (also 答案是X, 正确答案), a bold or bracketed letter, a standalone
    option letter (an "A" followed by a lower-case word is the article), the option's text, and only
    then the option most similar to the answer."""
    import difflib

    thinking, answer, finished = split_thinking(output)
    if not finished:
        return None, "unfinished"
    if not answer:
        return None, "empty"
    letters = set(options)
    for rule, pattern in (("answer_is", _ANSWER_IS), ("marked_letter", _MARKED)):
        for match in pattern.finditer(answer):
            letter = next(g for g in match.groups() if g)
            if letter in letters:  # upper case only: "the answer is a fracture" names no option
                return letter, rule
    for match in _LETTER.finditer(answer):
        letter = match.group(1)
        is_a_word = letter in "AI" and re.match(r"\s+[a-z']|'", answer[match.end():])  # "A patient", "I think"
        if letter in letters and not is_a_word:
            return letter, "standalone_letter"
    lowered = answer.lower()
    named = [k for k, v in options.items() if v.strip() and v.strip().lower() in lowered]
    if len(named) == 1:
        return named[0], "option_text"
    best = max(options, key=lambda k: difflib.SequenceMatcher(None, lowered, options[k].lower()).ratio())
    return best, "similarity"


def score_answers(items: list[dict], outputs: list[dict]) -> list[dict]:
    scored = []
    for item, out in zip(items, outputs):
        letter, rule = extract_choice(out["output"], item["options"])
        scored.append({"id": item["id"], "benchmark": item["benchmark"], "gold": item["answer_idx"],
                       "pred": letter, "rule": rule, "correct": letter == item["answer_idx"]})
    return scored


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sensible at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_difference(base: list[bool], tuned: list[bool], seed: int = 0,
                                rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of accuracy(tuned) - accuracy(base) over the same items, resampled together."""
    rng = random.Random(seed)
    n = len(base)
    diffs = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(tuned[i] - base[i] for i in idx) / n)
    diffs.sort()
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]


def verdict_rows(base_scored: list[dict], tuned_scored: list[dict], seed: int = 0) -> list[dict]:
    """Per benchmark and overall: accuracy base vs tuned with 95% intervals, and a plain sentence."""
    rows = []
    names = sorted({s["benchmark"] for s in base_scored}) + ["all"]
    for name in names:
        b = [s for s in base_scored if name in ("all", s["benchmark"])]
        t = {s["id"]: s for s in tuned_scored}
        t = [t[s["id"]] for s in b]
        bc, tc = [s["correct"] for s in b], [s["correct"] for s in t]
        n = len(b)
        lo, hi = paired_bootstrap_difference(bc, tc, seed)
        if lo > 0:
            sentence = "fine-tuning helped"
        elif hi < 0:
            sentence = "fine-tuning hurt"
        else:
            sentence = "no detectable change"
        rows.append({
            "benchmark": name, "items": n,
            "base_accuracy": sum(bc) / n, "base_interval": wilson_interval(sum(bc), n),
            "tuned_accuracy": sum(tc) / n, "tuned_interval": wilson_interval(sum(tc), n),
            "difference": (sum(tc) - sum(bc)) / n, "difference_interval": (lo, hi),
            "base_no_answer": sum(s["pred"] is None for s in b), "tuned_no_answer": sum(s["pred"] is None for s in t),
            "verdict": f"{sentence} (difference {100 * (sum(tc) - sum(bc)) / n:+.1f} points, 95% interval "
                       f"{100 * lo:+.1f} to {100 * hi:+.1f}, {n} items)",
        })
    return rows


def verdict_html(rows: list[dict]) -> str:
    import html

    def pct(x):
        return f"{100 * x:.1f}%"

    body = "".join(
        f"<tr><td>{html.escape(r['benchmark'])}</td><td>{r['items']}</td>"
        f"<td>{pct(r['base_accuracy'])} [{pct(r['base_interval'][0])}, {pct(r['base_interval'][1])}]</td>"
        f"<td>{pct(r['tuned_accuracy'])} [{pct(r['tuned_interval'][0])}, {pct(r['tuned_interval'][1])}]</td>"
        f"<td>{r['base_no_answer']} / {r['tuned_no_answer']}</td><td>{html.escape(r['verdict'])}</td></tr>"
        for r in rows)
    return ("<html><head><meta charset='utf-8'><title>Did fine-tuning help?</title></head><body>"
            "<h2>Did fine-tuning help?</h2><table border='1' style='border-collapse:collapse'><tr><th>benchmark</th>"
            "<th>items</th><th>base accuracy [95%]</th><th>tuned accuracy [95%]</th><th>no answer (base / tuned)</th>"
            f"<th>verdict</th></tr>{body}</table></body></html>")


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 on words, or on characters for text without spaces (Chinese)."""
    def units(text):
        return text.split() if " " in text.strip() else list(text.strip())

    a, b = units(candidate), units(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def answer_base_and_tuned(model, tokenizer, questions, template, max_new_tokens, greedy, temperature, top_p,
                          batch_size, seed, backend):
    """The same questions answered with the adapter switched off (the base model), then on."""
    settings = dict(template=template, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    do_sample=not greedy, batch_size=batch_size, seed=seed, backend=backend)
    with model.disable_adapter():
        base = generate_answers(model, tokenizer, questions, **settings)
    return base, generate_answers(model, tokenizer, questions, **settings)


def run_benchmarks(model, tokenizer, eval_data: dict, template: str, max_new_tokens: int, greedy: bool,
                   temperature: float, top_p: float, batch_size: int, seed: int, backend: str):
    """Answer every benchmark item with the adapter off (base) and on (tuned); score both the same way."""
    items = [item for name in sorted(eval_data) for item in eval_data[name]]
    questions = [{"id": item["id"], "question": mc_question(item)} for item in items]
    base, tuned = answer_base_and_tuned(model, tokenizer, questions, template, max_new_tokens, greedy, temperature,
                                        top_p, batch_size, seed, backend)
    return score_answers(items, base), score_answers(items, tuned)


def reference_response(record: dict) -> str:
    """The reference answer of a formatted record: the completion after </think>, without eos."""
    return split_thinking(record["completion"])[1]


def rouge_comparison(model, tokenizer, val: list[dict], n: int, template: str, max_new_tokens: int,
                     greedy: bool, temperature: float, top_p: float, batch_size: int, seed: int, backend: str) -> dict:
    """Mean ROUGE-L of the base and tuned answers (after </think>) against the reference responses of n
    validation examples. An answer that never closed its thought scores 0 and is counted."""
    records = val[:n]
    questions = [{"id": str(r["row"]), "question": r["question"]} for r in records]
    base, tuned = answer_base_and_tuned(model, tokenizer, questions, template, max_new_tokens, greedy, temperature,
                                        top_p, batch_size, seed, backend)
    references = [reference_response(r) for r in records]
    result = {"items": len(records)}
    for name, answers in (("base", base), ("tuned", tuned)):
        scores = [rouge_l(a["answer"], ref) for a, ref in zip(answers, references)]
        result[f"{name}_rouge_l"] = sum(scores) / len(scores) if scores else None
        result[f"{name}_unfinished"] = sum(not a["finished_thinking"] for a in answers)
    result["answers"] = [{"question": r["question"], "reference": ref, "base": b["answer"], "tuned": t["answer"]}
                         for r, ref, b, t in zip(records, references, base, tuned)]
    return result


# --------------------------------------------------------------------------------------------------
# An optional blind LLM judge (any OpenAI-compatible chat endpoint), off by default
# --------------------------------------------------------------------------------------------------
JUDGE_PROMPT = """You are grading two answers to a medical question against a reference answer.
Judge medical correctness first, then completeness and clarity. Ignore length and style otherwise.

Question:
{question}

Reference answer:
{reference}

Answer 1:
{first}

Answer 2:
{second}

Reply with JSON only: {{"better": 1, 2 or 0 for a tie, "reason": "one sentence"}}"""


def parse_judgement(text: str) -> int | None:
    """1, 2 or 0 (tie) from the judge's reply; None when the reply holds no such verdict."""
    match = re.search(r'"better"\s*:\s*"?([012])', text or "")
    return int(match.group(1)) if match else None


def check_judge_base_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"judge_base_url must be an http(s) URL, got {url!r}")


def post_json(url: str, body: dict, headers: dict, timeout: float = 120) -> dict:
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the user's own endpoint)
        return json.loads(response.read().decode("utf-8"))


def judge_answers(pairs: list[dict], model: str, base_url: str, api_key: str, seed: int, post=post_json) -> dict:
    """Ask the judge which of two answers is better, blind: the order is drawn at random per question and
    neither the models' names nor which one was fine-tuned appear in the prompt. Unparseable replies and
    failed requests are counted, never guessed."""
    rng = random.Random(seed)
    decisions = []
    for pair in pairs:
        tuned_first = rng.random() < 0.5
        first, second = (pair["tuned"], pair["base"]) if tuned_first else (pair["base"], pair["tuned"])
        prompt = JUDGE_PROMPT.format(question=pair["question"], reference=pair["reference"],
                                     first=first or "(no answer)", second=second or "(no answer)")
        body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        try:
            reply = post(base_url.rstrip("/") + "/chat/completions", body, {"Authorization": f"Bearer {api_key}"})
            text = reply["choices"][0]["message"]["content"]
        except Exception as err:  # one failed request should not lose the others
            text, error = "", f"{type(err).__name__}"
        else:
            error = None
        better = parse_judgement(text)
        winner = (None if better is None else "tie" if better == 0
                  else "tuned" if (better == 1) == tuned_first else "base")
        decisions.append({"question": pair["question"], "tuned_shown_first": tuned_first, "better": better,
                          "winner": winner, "error": error})
    counts = {w: sum(d["winner"] == w for d in decisions) for w in ("tuned", "base", "tie")}
    decided = counts["tuned"] + counts["base"]
    low, high = wilson_interval(counts["tuned"], decided) if decided else (None, None)
    return {"model": model, "items": len(decisions), "tuned_wins": counts["tuned"], "base_wins": counts["base"],
            "ties": counts["tie"], "no_verdict": sum(d["winner"] is None for d in decisions),
            "tuned_win_rate": counts["tuned"] / decided if decided else None, "tuned_win_interval": [low, high],
            "decisions": decisions}


def run_judge(pairs: list[dict], model: str, base_url: str, seed: int, environ=os.environ, post=post_json) -> dict:
    """The judge when JUDGE_MODEL is set and a JUDGE_API_KEY secret exists; otherwise why it did not run."""
    if not model:
        return {"skipped": "JUDGE_MODEL is empty: the LLM judge is off (the default)"}
    check_judge_base_url(base_url)
    api_key, _ = resolve_secret("JUDGE_API_KEY", environ)
    if not api_key:
        return {"skipped": f"JUDGE_MODEL is {model!r} but no JUDGE_API_KEY secret is set: the judge did not run"}
    return judge_answers(pairs, model, base_url, api_key, seed, post)


def rouge_summary(rouge: dict) -> str:
    if not rouge["items"]:
        return "ROUGE-L: not computed (ROUGE_ITEMS is 0)"
    return (f"ROUGE-L: base {rouge['base_rouge_l']:.3f} -> tuned {rouge['tuned_rouge_l']:.3f} on {rouge['items']} "
            f"answers (unfinished: base {rouge['base_unfinished']}, tuned {rouge['tuned_unfinished']})")


def judge_summary(judge: dict) -> str:
    if "skipped" in judge:
        return judge["skipped"]
    rate = judge["tuned_win_rate"]
    interval = judge["tuned_win_interval"]
    share = (f"the tuned answer won {rate:.0%} of the decided pairs (95% interval {interval[0]:.0%}-{interval[1]:.0%})"
             if rate is not None else "no pair was decided")
    return (f"blind judge {judge['model']}: tuned {judge['tuned_wins']}, base {judge['base_wins']}, ties "
            f"{judge['ties']}, no verdict {judge['no_verdict']} of {judge['items']}; {share}")


def log_comparison_to_wandb(work_dir, report_to: str, verdict: list[dict], losses: dict, rouge: dict, judge: dict,
                            environ=os.environ) -> str | None:
    """Log 04's verdict table and numbers to W&B, into the training run when 03 logged one (same run id),
    offline under WORK_DIR/wandb without a key. Returns the run link, or None when W&B is off."""
    mode, why = resolve_report_to(report_to, work_dir, environ)
    print(why)
    if mode != "wandb":
        return None
    import wandb

    train = artifact(work_dir, "train_metrics")
    run_id = read_json(train).get("wandb_run_id") if train.exists() else None
    run = wandb.init(project=environ["WANDB_PROJECT"], dir=environ["WANDB_DIR"], id=run_id, resume="allow",
                     job_type="compare")
    columns = ["benchmark", "items", "base_accuracy", "tuned_accuracy", "difference", "difference_low",
               "difference_high", "base_no_answer", "tuned_no_answer", "verdict"]
    table = wandb.Table(columns=columns, data=[
        [r["benchmark"], r["items"], r["base_accuracy"], r["tuned_accuracy"], r["difference"],
         r["difference_interval"][0], r["difference_interval"][1], r["base_no_answer"], r["tuned_no_answer"],
         r["verdict"]] for r in verdict])
    numbers = {f"compare/{r['benchmark']}/{k}": r[k] for r in verdict for k in ("base_accuracy", "tuned_accuracy")}
    scalars = {**losses, "base_rouge_l": rouge.get("base_rouge_l"), "tuned_rouge_l": rouge.get("tuned_rouge_l"),
               "judge_tuned_win_rate": judge.get("tuned_win_rate")}
    numbers.update({f"compare/{k}": v for k, v in scalars.items() if isinstance(v, (int, float))})
    run.log({"compare/verdict": table, **numbers})
    run.summary.update(numbers)
    link = wandb_run_link()
    run.finish()
    return link
