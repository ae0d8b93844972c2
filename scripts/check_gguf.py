"""Is the GGUF the model we trained? The offline check of the GGUF path, on the CPU.

llama.cpp's converter, taken from the source of the pinned llama-cpp-python (requirements-gguf.txt), turns a
merged 16-bit model into f16 and q8_0 GGUFs; llama-cpp-python, built from that same source, loads each one.
For a few training prompts, the next-token distribution of each GGUF is compared with the merged model's
(transformers, float32 on the 16-bit weights), and the Modelfile's template, rendered as Ollama renders it and
tokenized by llama.cpp, must give the training prompt's tokens; a greedy generation then runs from it.

    pip install -r requirements-gguf.txt      # compiles llama.cpp (about 20 minutes on 2 cores)
    python scripts/check_gguf.py --out lab/bench/results/gguf_check_cpu.json          # tiny merged models
    python scripts/check_gguf.py --merged WORK_DIR/merged --template r1_chat      # a merged model of your own

With ../shared/reference present, the real DeepSeek-R1-Distill-Qwen tokenizer (rebuilt by lab/gpu/real_shapes.py)
is converted too, to show the converter recognises its pre-tokenizer with no override and that llama.cpp
tokenizes a training prompt as transformers does. Exits 1 when a tolerance is missed.
"""
import argparse
import itertools
import json
import pathlib
import platform
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu")]
import src_helpers as sh  # noqa: E402
from medical_r1 import gguf, models  # noqa: E402
from medical_r1.export import PROBE_PROMPTS  # noqa: E402

# Tolerances on the next-token distribution, GGUF against the merged model: KL(merged || GGUF) in nats and
# the largest probability difference; the top token must agree. f16 holds bf16 weights exactly, so only
# llama.cpp's own arithmetic differs; q8_0 rounds weights to 8 bits per block of 32, and llama.cpp's CPU
# dot product rounds the activations to 8 bits too (a first guess of 0.02 for max_prob_diff measured 0.027).
TOLERANCE = {"f16": {"kl": 1e-4, "max_prob_diff": 1e-3}, "q8_0": {"kl": 1e-2, "max_prob_diff": 5e-2}}
QUESTIONS = [*PROBE_PROMPTS, "What is the first-line treatment for uncomplicated hypertension?"]


def softmax(logits):
    z = np.exp(logits - logits.max())
    return z / z.sum()


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    p, q = softmax(reference), softmax(candidate)
    return {"kl": float(np.sum(p * (np.log(p) - np.log(q)))), "max_prob_diff": float(np.abs(p - q).max()),
            "max_logit_diff": float(np.abs(reference - candidate).max()), "logit_std": float(reference.std()),
            "top1_equal": bool(reference.argmax() == candidate.argmax()), "top1_prob": float(p.max())}


def check_model(merged_dir, template: str, converter_dir, out_dir, pre_tokenizer) -> dict:
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    prompts = [sh.encode_prompt(tokenizer, q, template) for q in QUESTIONS]
    with torch.no_grad():
        reference = [model(input_ids=torch.tensor([ids])).logits[0, -1].numpy() for ids in prompts]
        greedy_reference = model.generate(torch.tensor([prompts[0]]), max_new_tokens=16, do_sample=False)[0, len(prompts[0]):]
    report = {"merged": str(merged_dir), "template": template, "pre_tokenizer_override": pre_tokenizer, "files": {}}
    for outtype in ("f16", "q8_0"):
        path = gguf.convert_to_gguf(merged_dir, pathlib.Path(out_dir) / f"model-{outtype}.gguf", outtype,
                                    converter_dir, pre_tokenizer)
        modelfile = gguf.ollama_modelfile(tokenizer, path.name, template)
        llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, seed=0)
        rows = []
        for ids, ref in zip(prompts, reference):
            llm.reset()
            llm.eval(ids)
            rows.append(compare(ref, np.asarray(llm.scores[len(ids) - 1][:ref.shape[0]], dtype=np.float64)))
        text = gguf.render_modelfile_template(modelfile, [{"Role": "user", "Content": QUESTIONS[0]}])
        ollama_ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        llm.reset()
        generated = list(itertools.islice(llm.generate(ollama_ids, temp=0.0, top_k=1), 16)) if ollama_ids == prompts[0] else []
        worst = {key: max(r[key] for r in rows) for key in ("kl", "max_prob_diff", "max_logit_diff")}
        report["files"][outtype] = {
            "bytes": path.stat().st_size, "prompts": rows, "worst": worst,
            "tolerance": TOLERANCE[outtype], "top1_equal": all(r["top1_equal"] for r in rows),
            "within_tolerance": all(worst[k] <= v for k, v in TOLERANCE[outtype].items()),
            "modelfile_prompt_equals_training_prompt": ollama_ids == prompts[0],
            "prompt_tokens": len(ollama_ids),
            "greedy_16_tokens_equal_transformers": generated == greedy_reference.tolist(),
            "greedy_text": llm.detokenize(generated).decode(errors="replace")}
        del llm
    return report


def check_real_tokenizer(converter_dir, out_dir) -> dict:
    """Convert the vocabulary of the rebuilt DeepSeek-R1-Distill-Qwen tokenizer with no pre-tokenizer override
    and compare llama.cpp's tokens for training prompts with transformers'."""
    import shutil

    import real_shapes
    from llama_cpp import Llama

    if not real_shapes.REF.exists():
        real_shapes.copy_reference()
    folder = pathlib.Path(out_dir) / "qwen-tokenizer"
    tokenizer = real_shapes.build_tokenizer(folder)
    shutil.copy(real_shapes.REF / "models" / real_shapes.CONFIGS["qwen-1.5b"], folder / "config.json")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Qwen2ForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    try:
        path = gguf.convert_to_gguf(folder, pathlib.Path(out_dir) / "qwen-vocab.gguf", "f16", converter_dir,
                                    vocab_only=True)
    except RuntimeError as err:
        return {"converted": False, "error": str(err)}
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    same = []
    for template in sorted(sh.TEMPLATES):
        for q in QUESTIONS:
            ids = sh.encode_prompt(tokenizer, q, template)
            text = sh.render_prompt(tokenizer, q, template)
            same.append(llm.tokenize(text.encode(), add_bos=False, special=True) == ids)
    sys.path.insert(0, str(converter_dir / "gguf-py"))
    from gguf import GGUFReader

    return {"converted": True, "pre_tokenizer": GGUFReader(path).fields["tokenizer.ggml.pre"].contents(),
            "prompts_tokenized_as_transformers": f"{sum(same)}/{len(same)}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merged", help="a merged 16-bit model folder (default: tiny merged Llama and Qwen2)")
    parser.add_argument("--template", default="r1_chat", choices=sorted(sh.TEMPLATES))
    parser.add_argument("--sdist", help="llama-cpp-python's .tar.gz, if pip cannot download it")
    parser.add_argument("--out", help="write the report here as JSON")
    args = parser.parse_args()
    import llama_cpp
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        converter_dir = gguf.fetch_converter(tmp / "llama-cpp", args.sdist)
        report = {"device": f"CPU ({platform.machine()})", "llama_cpp_python": llama_cpp.__version__,
                  "converter": f"convert_hf_to_gguf.py from llama-cpp-python {gguf.llama_cpp_version()} sdist",
                  "transformers": transformers.__version__, "models": []}
        if args.merged:
            report["models"].append(check_model(args.merged, args.template, converter_dir, tmp, None))
        else:
            # The fixture tokenizer is unknown to the converter's hash list, so its pre-tokenizer is named: GPT-2's
            # byte-level split, which transformers replaces by Qwen2's (digits one by one) in a qwen2 folder.
            for arch, pre_tokenizer in (("llama", "gpt-2"), ("qwen2", "qwen2")):
                merged = models.build_merged_tiny_model(tmp / f"merged-{arch}", arch)
                (tmp / arch).mkdir()
                report["models"].append(check_model(merged, args.template, converter_dir, tmp / arch, pre_tokenizer))
            if (ROOT.parent / "shared" / "reference").exists() or (ROOT / ".gpu_ref").exists():
                report["real_qwen_tokenizer"] = check_real_tokenizer(converter_dir, tmp)
    ok = all(f["within_tolerance"] and f["top1_equal"] and f["modelfile_prompt_equals_training_prompt"]
             for m in report["models"] for f in m["files"].values())
    report["passed"] = ok
    print(json.dumps(report, indent=1, ensure_ascii=False))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
