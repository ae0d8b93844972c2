"""The series' parameters and names, defined once: every notebook's `parameters` cell mirrors `Params`
(a test checks they agree), and `Params.__post_init__` names the field of any bad value.
"""
from __future__ import annotations

import dataclasses
import re

from src_helpers import TEMPLATES

DATASET_NAME = "FreedomIntelligence/medical-o1-reasoning-SFT"


# Hub config -> file name in the dataset repo; a local folder in the same layout works offline.
DATA_CONFIG_FILES = {
    "en": "medical_o1_sft.json",
    "zh": "medical_o1_sft_Chinese.json",
    "en_mix": "medical_o1_sft_mix.json",
    "zh_mix": "medical_o1_sft_mix_Chinese.json",
}


# The four distills, by their short names. Unsloth's copies hold the same weights as
# deepseek-ai's; Unsloth swaps in its pre-quantised "-bnb-4bit" repo itself when load_in_4bit=True.
MODELS = {
    "llama-8b": "unsloth/DeepSeek-R1-Distill-Llama-8B",
    "qwen-1.5b": "unsloth/DeepSeek-R1-Distill-Qwen-1.5B",
    "qwen-7b": "unsloth/DeepSeek-R1-Distill-Qwen-7B",
    "qwen-14b": "unsloth/DeepSeek-R1-Distill-Qwen-14B",
}


LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


BACKENDS = ("unsloth", "transformers", "cpu")


PRECISIONS = ("auto", "fp16", "bf16")


GGUF_QUANTIZATIONS = ("q4_k_m", "q8_0", "q5_k_m", "f16")  # those 05 accepts; llama.cpp names


def check_gguf_quantizations(quantizations, name: str) -> None:
    unknown = sorted(set(quantizations) - set(GGUF_QUANTIZATIONS))
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; choose from {list(GGUF_QUANTIZATIONS)}")


def check_precision(precision, name: str) -> None:
    """The one check of a PRECISION setting (Params, the run manifest and setup_backend all use it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be 'auto', 'fp16' or 'bf16', got {precision!r}")


def check_share(share, name: str) -> None:
    if share != "auto" and not isinstance(share, bool):
        raise ValueError(f"{name} must be 'auto', True or False, got {share!r}")


def check_num_gpus(num_gpus, name: str) -> None:
    if num_gpus != "auto" and (isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1):
        raise ValueError(f"{name} must be 'auto' or a whole number of GPUs (1 or more), got {num_gpus!r}")


def check_judge_base_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"judge_base_url must be an http(s) URL, got {url!r}")


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
    gen_batch_size: int = 0
    gradient_checkpointing: str = "auto"
    save_merged: bool = True
    push_to_hub: bool = False
    hub_repo_id: str = ""
    hub_private: bool = True
    install_requirements: str = "auto"
    precision: str = "auto"
    gpu_memory_cap_gib: float = 0
    num_gpus: str | int = "auto"
    resume: bool = True
    early_stopping_patience: int = 0
    eval_data: str = "https://raw.githubusercontent.com/FreedomIntelligence/HuatuoGPT-o1/main/evaluation/data/eval_data.json"
    eval_minutes: float = 60
    eval_items: int = 0
    eval_decide: str = "headline"
    eval_greedy: bool = True
    eval_max_new_tokens: int = 1024
    eval_similarity: bool = False
    eval_model_reader: float = 0.5
    rouge_items: int = 10
    gguf_quantizations: list = dataclasses.field(default_factory=list)
    judge_model: str = ""
    judge_base_url: str = "https://api.openai.com/v1"
    chat_model: str = "adapter"
    share: str | bool = "auto"
    chat_show_api: bool = False  # 06: list the chat's API page ("Use via API"); the API asks for CHAT_PASSWORD too
    start_from: str = "adapter"
    # 07's training items: MedQA (Jin et al. 2021; USMLE questions, 4 options), its training split of 10,178 items
    # (04's MedQA items are from the test split), in the columns 04 reads; the dataset card's license: CC BY 4.0.
    train_items: str = "GBaker/MedQA-USMLE-4-options"
    grpo_items: int = 0
    num_generations: int = 4
    max_completion_length: int = 1024
    grpo_temperature: float = 0.9
    grpo_learning_rate: float = 5e-6
    grpo_max_steps: int = 100
    grpo_batch_size: int = 4
    grpo_grad_accum: int = 1
    grpo_save_steps: int = 20
    vllm_gpu_memory: float = 0.6

    def __post_init__(self):
        positive = ["max_seq_length", "max_steps", "batch_size", "grad_accum", "lora_r", "lora_alpha",
                    "eval_steps", "save_steps", "max_new_tokens", "max_completion_length", "grpo_max_steps",
                    "grpo_batch_size", "grpo_grad_accum", "grpo_save_steps"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.early_stopping_patience and self.save_steps % self.eval_steps:
            raise ValueError(f"early_stopping_patience needs save_steps ({self.save_steps}) to be a multiple of "
                             f"eval_steps ({self.eval_steps}), so the best checkpoint can be restored")
        for name in ("max_examples", "val_size", "warmup_steps", "early_stopping_patience", "eval_items",
                     "rouge_items", "gen_batch_size", "grpo_items"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("learning_rate", "grpo_learning_rate", "grpo_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if isinstance(self.eval_minutes, bool) or not isinstance(self.eval_minutes, (int, float)) or \
                self.eval_minutes <= 0:
            raise ValueError(f"eval_minutes must be a positive number of minutes, got {self.eval_minutes!r}")
        if self.eval_decide not in ("headline", "every"):
            raise ValueError(f"eval_decide must be 'headline' or 'every', got {self.eval_decide!r}")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise ValueError(f"gradient_checkpointing must be 'auto', 'on' or 'off', got {self.gradient_checkpointing!r}")
        if not 0 < self.vllm_gpu_memory < 1:
            raise ValueError(f"vllm_gpu_memory must be a share of the GPU's memory in (0, 1), got {self.vllm_gpu_memory!r}")
        if self.start_from not in ("adapter", "base"):
            raise ValueError(f"start_from must be 'adapter' or 'base', got {self.start_from!r}")
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise ValueError(f"num_generations must be an integer >= 2 (GRPO compares answers), got {self.num_generations!r}")
        if self.grpo_batch_size % self.num_generations:
            raise ValueError(f"grpo_batch_size ({self.grpo_batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations})")
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
        check_precision(self.precision, "precision")
        if isinstance(self.eval_model_reader, bool) or not 0 <= self.eval_model_reader <= 1:
            raise ValueError(f"eval_model_reader must be a probability in [0, 1] (0 turns the model reader off), "
                             f"got {self.eval_model_reader!r}")
        if self.gpu_memory_cap_gib < 0:
            raise ValueError(f"gpu_memory_cap_gib must be >= 0 (0 means no cap), got {self.gpu_memory_cap_gib!r}")
        if self.chat_model not in ("adapter", "merged"):
            raise ValueError(f"chat_model must be 'adapter' or 'merged', got {self.chat_model!r}")
        check_share(self.share, "share")
        if not isinstance(self.chat_show_api, bool):
            raise ValueError(f"chat_show_api must be True or False, got {self.chat_show_api!r}")
        check_num_gpus(self.num_gpus, "num_gpus")
        if self.report_to not in ("auto", "wandb", "none"):
            raise ValueError(f"report_to must be 'auto', 'wandb' or 'none', got {self.report_to!r}")
        check_gguf_quantizations(self.gguf_quantizations, "gguf_quantizations")
        if self.judge_model:
            check_judge_base_url(self.judge_base_url)
        if self.push_to_hub and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.hub_repo_id):
            raise ValueError(f"hub_repo_id must look like 'user/name' when push_to_hub is on, got {self.hub_repo_id!r}")
