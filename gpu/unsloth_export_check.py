"""GPU check of Unsloth's own exports on a trained adapter (after check_series' 02 and 03):
save_pretrained_merged(save_method="merged_16bit") checked with 05's verify_merge footing (the merged model
against the 16-bit base + adapter, on 05's probe prompts), beside 05's PEFT merge; and save_pretrained_gguf,
which needs llama.cpp, to see what it does where nothing can be downloaded.

    python gpu/check_series.py --out $OUT --only qwen-1.5b-fp16   # 02 and 03 into /tmp/gpu_check/qwen-1.5b-fp16
    python gpu/unsloth_export_check.py --work /tmp/gpu_check/qwen-1.5b-fp16 --out $OUT
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import src_helpers as sh  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--stage", choices=["unsloth", "compare", "gguf"], required=True,
                        help="one process each: once Unsloth has patched transformers, a plain model cannot run")
    args = parser.parse_args()
    if args.stage == "compare":
        return compare(args)
    runtime, backend = sh.setup_backend("unsloth", "bf16")
    model, tokenizer, base_name = sh.load_adapter_model(args.work, backend, runtime, 2048, True)
    path = args.out / "unsloth_export_check.json"
    report = sh.read_json(path) if path.exists() else {"base": base_name}
    if args.stage == "unsloth":
        start = time.time()
        try:
            model.save_pretrained_merged(str(args.work / "merged_unsloth"), tokenizer, save_method="merged_16bit")
            report["unsloth_merge_s"] = round(time.time() - start, 1)
        except Exception as err:
            report["unsloth_merge_error"] = f"{type(err).__name__}: {str(err)[:500]}"
        sh.write_json(path, report)
        return
    start = time.time()  # llama.cpp is fetched over the network, which may hang here
    try:
        model.save_pretrained_gguf(str(args.work / "gguf_try"), tokenizer, quantization_method=["q4_k_m"])
        report["gguf"] = sorted(p.name for p in (args.work / "gguf_try").glob("*.gguf"))
    except Exception as err:
        report["gguf_error"] = f"{type(err).__name__}: {str(err)[:800]}"
    report["gguf_s"] = round(time.time() - start, 1)
    sh.write_json(path, report)
    print(json.dumps({k: v for k, v in report.items() if k.startswith("gguf")}, indent=1))


def compare(args):
    import torch

    runtime, _ = sh.setup_backend("cpu", "auto")
    path = args.out / "unsloth_export_check.json"
    report = sh.read_json(path)
    base_name = report["base"]
    tokenizer = sh.load_tokenizer(str(sh.artifact(args.work, "adapter")))
    unsloth_dir = args.work / "merged_unsloth"
    dtype = torch.bfloat16
    reference_model = sh.load_16bit_with_adapter(base_name, sh.artifact(args.work, "adapter"), dtype)
    reference = sh.probe_logits(reference_model, tokenizer)
    del reference_model
    if unsloth_dir.exists():
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(str(unsloth_dir), dtype=dtype)
        report["unsloth_vs_base_plus_adapter"] = sh.compare_logits(reference, sh.probe_logits(merged, tokenizer))
        del merged
    peft_dir = sh.save_merged(args.work, sh.dataclasses.replace(runtime, cuda=True))  # bf16, as on a GPU run
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(peft_dir), dtype=dtype)
    report["peft_vs_base_plus_adapter"] = sh.compare_logits(reference, sh.probe_logits(merged, tokenizer))
    report["tolerance"] = sh.merge_tolerance(dtype)
    sh.write_json(path, report)
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
