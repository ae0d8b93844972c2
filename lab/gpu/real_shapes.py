"""Random-initialised models of the real DeepSeek-R1-Distill shapes, with a tokenizer rebuilt from the real
Qwen2.5 BPE files and DeepSeek's special tokens and chat template, for GPU checks where nothing can be
downloaded. Speed and memory do not depend on the weights' values.

The reference files come from ../shared/reference, copied into the ignored folder .gpu_ref/ so they
travel to the GPU machine:  python lab/gpu/real_shapes.py --copy-reference
"""
import argparse
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
REF = ROOT / ".gpu_ref"
SHARED = ROOT.parent / "shared" / "reference"
CONFIGS = {
    "qwen-1.5b": "DeepSeek-R1-Distill-Qwen-1.5B/config.derived_oumi-ai_MiniMath-R1-1.5B.json",
    "qwen-7b": "DeepSeek-R1-Distill-Qwen-7B/config.derived_mlfoundations-dev_OpenThoughts3.json",
    "qwen-14b": "DeepSeek-R1-Distill-Qwen-14B/config.derived_RealSafe_RealSafe-R1-14B.json",
    "llama-8b": "DeepSeek-R1-Distill-Llama-8B/config.derived_Virende_Solphie-1S.json",
}
# The distills' added tokens, in id order after Qwen2.5's 151,643 BPE tokens (151643 = eos ... 151649 = </think>).
DEEPSEEK_ADDED = ["<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<|EOT|>",
                  "<think>", "</think>"]


# Qwen2's pre-tokenisation pattern (from its tokenizer.json).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def copy_reference():
    (REF / "models").mkdir(parents=True, exist_ok=True)
    for rel in CONFIGS.values():
        (REF / "models" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "models" / rel, REF / "models" / rel)
    shutil.copy(SHARED / "models/DeepSeek-R1-Distill-Qwen-7B/tokenizer_config.json", REF / "tokenizer_config.json")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED / "tokenizers/qwen2.5" / name, REF / name)
    (REF / "data").mkdir(exist_ok=True)
    rows = json.loads((SHARED / "data/huatuogpt_o1_demo_data.json").read_text())
    keep = [{k: r[k] for k in ("Question", "Complex_CoT", "Response")} for r in rows]
    (REF / "data" / "medical_o1_sft.json").write_text(json.dumps(keep, ensure_ascii=False))
    shutil.copy(SHARED / "DATASETS.md", REF / "DATASETS.md")
    print(f"copied reference files to {REF} ({len(keep)} real-schema rows)")


def build_tokenizer(out_dir):
    """The DeepSeek-R1-Distill-Qwen tokenizer as far as the public files allow: Qwen2.5 BPE, the distills'
    special tokens at their real ids, pad = eos, a BOS added on encode, and DeepSeek's chat template."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    config = json.loads((REF / "tokenizer_config.json").read_text())
    backend = Tokenizer(models.BPE.from_file(str(REF / "vocab.json"), str(REF / "merges.txt")))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in DEEPSEEK_ADDED])
    bos = DEEPSEEK_ADDED[3]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=DEEPSEEK_ADDED[0],
                                  pad_token=DEEPSEEK_ADDED[0], model_max_length=16384)
    tok.chat_template = config["chat_template"]
    assert tok.convert_tokens_to_ids(DEEPSEEK_ADDED) == list(range(151643, 151650)), "special token ids drifted"
    tok.save_pretrained(str(out_dir))
    return tok


def build_model(shape: str, out_dir, layers: int = 0):
    """Save a random model of the real shape (bf16) with the rebuilt tokenizer. The Llama-8B shape gets the
    Qwen vocabulary (151,936 rows instead of 128,256: +0.2B parameters in embedding and head), since the
    Llama-3 tokenizer files are not available here; that makes its figures slightly pessimistic.
    layers > 0 keeps the widths and stacks only that many layers (numerical checks: a deep random network
    amplifies rounding differences until they say nothing about a change's correctness)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tokenizer(out_dir)
    raw = json.loads((REF / "models" / CONFIGS[shape]).read_text())
    for key in ("_name_or_path", "architectures", "transformers_version", "unsloth_version", "torch_dtype"):
        raw.pop(key, None)
    raw.update(vocab_size=max(raw["vocab_size"], 151936), bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if layers:
        raw["num_hidden_layers"] = layers
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out_dir))
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def build_model_in_child(shape: str, out_dir) -> None:
    """build_model in a child process, so that the caller holds no GPU memory afterwards (in T4 mode the
    notebooks' processes must find the GPU as empty as a T4 is: what another process holds counts)."""
    import subprocess

    here = str(pathlib.Path(__file__).resolve().parent)  # lab/gpu, where this module lives
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import real_shapes; "
                    f"real_shapes.build_model({shape!r}, {str(out_dir)!r})"], check=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--copy-reference", action="store_true")
    parser.add_argument("--tokenizer", type=pathlib.Path, help="build only the tokenizer into this folder")
    args = parser.parse_args()
    if args.copy_reference:
        copy_reference()
    if args.tokenizer:
        build_tokenizer(args.tokenizer)
    sys.exit(0)
