"""GPU check of Unsloth's own exports on a trained adapter (after check_series' 02 and 03):
save_pretrained_merged(save_method="merged_16bit") checked with 05's verify_merge footing (the merged model
against the 16-bit base + adapter, on 05's probe prompts), beside 05's PEFT merge; and save_pretrained_gguf,
which needs llama.cpp, to see what it does where nothing can be downloaded.

    python lab/gpu/check_series.py --out $OUT --only qwen-1.5b-fp16   # 02 and 03 into /tmp/gpu_check/qwen-1.5b-fp16
    python lab/gpu/unsloth_export_check.py --work /tmp/gpu_check/qwen-1.5b-fp16 --out $OUT
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import dataclasses  # noqa: E402

from medical_r1 import artifacts  # noqa: E402
from medical_r1 import export as export_mod  # noqa: E402
from medical_r1 import models as models_mod  # noqa: E402
from medical_r1 import runtime as rt_mod  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--stage", choices=["unsloth", "compare", "gguf"], required=True,
                        help="one process each: once Unsloth has patched transformers, a plain model cannot run")
    args = parser.parse_args()
    if args.stage == "compare":
        return compare(args)
    runtime, backend = rt_mod.setup_backend("unsloth", "bf16")
    model, tokenizer, base_name = models_mod.load_adapter_model(args.work, backend, runtime, 2048, True)
    path = args.out / "unsloth_export_check.json"
    report = artifacts.read_json(path) if path.exists() else {"base": base_name}
    if args.stage == "unsloth":
        start = time.time()
        try:
            model.save_pretrained_merged(str(args.work / "merged_unsloth"), tokenizer, save_method="merged_16bit")
            report["unsloth_merge_s"] = round(time.time() - start, 1)
        except Exception as err:
            report["unsloth_merge_error"] = f"{type(err).__name__}: {str(err)[:500]}"
        artifacts.write_json(path, report)
        return
    start = time.time()  # llama.cpp is fetched over the network, which may hang here
    try:
        model.save_pretrained_gguf(str(args.work / "gguf_try"), tokenizer, quantization_method=["q4_k_m"])
        report["gguf"] = sorted(p.name for p in (args.work / "gguf_try").glob("*.gguf"))
    except Exception as err:
        report["gguf_error"] = f"{type(err).__name__}: {str(err)[:800]}"
    report["gguf_s"] = round(time.time() - start, 1)
    artifacts.write_json(path, report)
    print(json.dumps({k: v for k, v in report.items() if k.startswith("gguf")}, indent=1))


def compare(args):
    import torch

    runtime, _ = rt_mod.setup_backend("cpu", "auto")
    path = args.out / "unsloth_export_check.json"
    report = artifacts.read_json(path)
    base_name = report["base"]
    tokenizer = models_mod.load_tokenizer(str(artifacts.artifact(args.work, "adapter")))
    unsloth_dir = args.work / "merged_unsloth"
    dtype = torch.bfloat16
    reference_model = export_mod.load_16bit_with_adapter(base_name, artifacts.artifact(args.work, "adapter"), dtype)
    reference = export_mod.probe_logits(reference_model, tokenizer)
    del reference_model
    if unsloth_dir.exists():
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(str(unsloth_dir), dtype=dtype)
        report["unsloth_vs_base_plus_adapter"] = export_mod.compare_logits(reference, export_mod.probe_logits(merged, tokenizer))
        del merged
    peft_dir = export_mod.save_merged(args.work, dataclasses.replace(runtime, cuda=True))  # bf16, as on a GPU run
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(peft_dir), dtype=dtype)
    report["peft_vs_base_plus_adapter"] = export_mod.compare_logits(reference, export_mod.probe_logits(merged, tokenizer))
    report["tolerance"] = export_mod.merge_tolerance(dtype)
    artifacts.write_json(path, report)
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
