"""Loading models. On a GPU with Unsloth the notebooks call Unsloth's own FastLanguageModel; elsewhere
`language_model_loader` returns a stand-in with the same three calls built on transformers + PEFT
(+ bitsandbytes 4-bit on an older GPU, float32 on the CPU for the tests and the demo).
"""
from __future__ import annotations

import os
from typing import Any

from medical_r1 import REPO_ROOT
from medical_r1.artifacts import read_json, require_artifact, save_pretrained_atomic
from medical_r1.params import LORA_TARGET_MODULES, MODELS, Params
from medical_r1.runtime import Runtime, compute_dtype
from medical_r1.training import oom_advice


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


def base_model_name(model_name: str) -> str:
    """The model itself, or the base model an adapter folder (adapter_config.json) was trained on."""
    import pathlib

    adapter_config = pathlib.Path(model_name) / "adapter_config.json"
    return read_json(adapter_config)["base_model_name_or_path"] if adapter_config.exists() else model_name


def base_model_type(model_name: str) -> str:
    """The config's model_type ("llama", "qwen2") of a model, or of the base model an adapter folder names."""
    from transformers import AutoConfig

    base = base_model_name(model_name)
    try:
        return AutoConfig.from_pretrained(base).model_type
    except OSError as err:
        raise _explain_missing_model(base, err) from err


class PlainLanguageModel:
    """Unsloth's three FastLanguageModel calls, built on plain transformers + PEFT, for where Unsloth cannot
    run: bitsandbytes 4-bit on a GPU older than compute capability 7.0 or without Unsloth ("transformers"),
    float32 with no quantisation on the CPU ("cpu": the tests and the demo). The notebooks' cells are the
    same on every backend; `language_model_loader` says which class they got."""

    def __init__(self, backend: str):
        if backend not in ("transformers", "cpu"):
            raise ValueError(f"PlainLanguageModel serves the 'transformers' and 'cpu' backends, not {backend!r}")
        self.backend = backend

    def from_pretrained(self, model_name: str, max_seq_length: int = 2048, dtype=None, load_in_4bit: bool = True,
                        **_unsloth_only):
        """(model, tokenizer). A folder holding an adapter (adapter_config.json) loads its base model with the
        adapter on top, as Unsloth does. The tokenizer gets a pad token (pad = eos is fine: labels are built
        before padding)."""
        import torch
        from transformers import AutoModelForCausalLM

        base_name = base_model_name(model_name)
        kwargs: dict[str, Any] = {"dtype": dtype or (torch.float32 if self.backend == "cpu" else torch.bfloat16)}
        if self.backend == "transformers":
            kwargs["attn_implementation"] = "sdpa"
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # one GPU per process
            if load_in_4bit:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=kwargs["dtype"])
        tokenizer = load_tokenizer(model_name)
        try:
            model = AutoModelForCausalLM.from_pretrained(base_name, **kwargs)
        except OSError as err:
            raise _explain_missing_model(base_name, err) from err
        except torch.OutOfMemoryError as err:
            raise RuntimeError(oom_advice(Params(model_name=base_name, max_seq_length=max_seq_length))) from err
        if base_name != model_name:  # an adapter folder
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, model_name, is_trainable=True)  # as Unsloth loads one
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def get_peft_model(self, model, r: int = 16, target_modules=LORA_TARGET_MODULES, lora_alpha: int = 16,
                       lora_dropout: float = 0.0, bias: str = "none", use_gradient_checkpointing=True,
                       random_state: int = 3407, **_unsloth_only):
        """LoRA adapters through PEFT, seeded (LoRA's A matrices are random: the same seed gives the same
        adapter). A 4-bit model is prepared for training first (norms in float32, gradient checkpointing). A model
        that already has an adapter (07 on 03's) keeps it and trains it, as Unsloth's get_peft_model does."""
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
        from transformers import set_seed

        if isinstance(model, PeftModel):
            print("the model already has LoRA adapters: training those")
            return model

        set_seed(random_state)
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(use_gradient_checkpointing),
                gradient_checkpointing_kwargs={"use_reentrant": False})
        config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias=bias,
                            target_modules=list(target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, config)

    @staticmethod
    def for_inference(model):
        model.eval()
        return model


def language_model_loader(backend: str):
    """The class whose from_pretrained / get_peft_model / for_inference the notebooks call: Unsloth's
    FastLanguageModel for the "unsloth" backend, else the PlainLanguageModel stand-in (and it says so)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers and trl; must come before them)
        from unsloth import FastLanguageModel

        return FastLanguageModel
    print(f"backend {backend!r}: FastLanguageModel below is a transformers + PEFT stand-in with Unsloth's calls")
    return PlainLanguageModel(backend)


def load_model_and_tokenizer(model_name: str, backend: str, runtime: Runtime, max_seq_length: int,
                             load_in_4bit: bool = True, **unsloth_options):
    """The base model (or adapter folder) for the chosen backend, as 01, 03 and 04 load it. unsloth_options go to
    Unsloth's from_pretrained (offload_embedding, for the benchmarks); the plain backends ignore them."""
    return language_model_loader(backend).from_pretrained(
        model_name=model_name, max_seq_length=max_seq_length, dtype=compute_dtype(runtime), load_in_4bit=load_in_4bit,
        **unsloth_options)


def add_lora(model, backend: str, p: Params):
    """LoRA on the 7 projections with Params' settings, as 03 adds it (checkpointing chosen as 03 chooses it)."""
    from medical_r1.training import choose_gradient_checkpointing

    checkpointing, _ = choose_gradient_checkpointing(p.gradient_checkpointing, model, backend, p.batch_size,
                                                     p.max_seq_length)
    return language_model_loader(backend).get_peft_model(
        model, r=p.lora_r, target_modules=LORA_TARGET_MODULES, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
        bias="none", use_gradient_checkpointing=checkpointing, random_state=p.seed, max_seq_length=p.max_seq_length)


def load_adapter_model(work_dir, backend: str, runtime: Runtime, max_seq_length: int, load_in_4bit: bool):
    """Base model + the adapter that 03 saved; the base model's name is read from the adapter config."""
    adapter_dir = require_artifact(work_dir, "adapter")
    base_name = base_model_name(str(adapter_dir))
    model, tokenizer = load_model_and_tokenizer(str(adapter_dir), backend, runtime, max_seq_length, load_in_4bit)
    return model, tokenizer, base_name


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
    # Like the real models, the embedding has rows past the tokenizer's ids: a tokenizer loaded from a qwen2
    # folder adds <|endoftext|> after them, and llama.cpp's converter refuses ids beyond the embedding.
    vocab_size = (len(tokenizer) // 64 + 1) * 64
    config = AutoConfig.for_model(
        spec.pop("model_type"), vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.temperature, model.generation_config.top_p = 0.6, 0.95
    model.generation_config.do_sample = True
    save_pretrained_atomic(out_dir, model, tokenizer)
    return str(out_dir)


def build_merged_tiny_model(out_dir, arch: str = "llama", seed: int = 0) -> str:
    """A tiny model merged with a random (non-zero) LoRA adapter and saved in bfloat16, as 05 saves the merged
    model on a GPU: what the GGUF checks convert."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        base_dir = build_tiny_model(os.path.join(tmp, "base"), arch, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed + 1)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGET_MODULES, init_lora_weights=False)
    model = get_peft_model(model, lora).merge_and_unload().to(torch.bfloat16)
    with torch.no_grad():  # a sharper head: peaked next-token distributions, like a trained model's, show a mismatch
        model.lm_head.weight.mul_(30)
    save_pretrained_atomic(out_dir, model, tokenizer)
    return str(out_dir)
