"""Which generation path can make 04 four times faster? A probe of candidate paths at the Llama-8B shape, greedy,
equal output tokens, each family in its own process (importing Unsloth patches transformers for the whole
process): Unsloth's inference path eager (04 today) and with its CUDA-graph decode step
(UNSLOTH_DECODE_CUDA_GRAPHS=1); plain transformers + PEFT on the bitsandbytes 4-bit model with SDPA attention,
dynamic or static cache (compiled); and the same in bfloat16 (no 4-bit: the ceiling where memory allows).

    python bench/probe_generate_paths.py --model-dir /tmp/models/llama-8b --out $OUT
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gpu"), str(ROOT / "bench")]

FAMILIES = {
    "unsloth": [("unsloth_eager", 32, {}), ("unsloth_graphs", 32, {"graphs": True}),
                ("unsloth_graphs", 64, {"graphs": True}), ("unsloth_eager", 64, {})],
    "hf_bnb": [("hf_bnb_dynamic", 32, {}), ("hf_bnb_static_compiled", 32, {"static": True}),
               ("hf_bnb_dynamic", 64, {})],
    "hf_bf16": [("hf_bf16_dynamic", 32, {}), ("hf_bf16_static_compiled", 32, {"static": True})],
}


def run_family(family: str, model_dir: str, new_tokens: int, out: pathlib.Path):
    import bench_generate
    import torch

    from medical_r1 import params

    results = {}
    if family == "unsloth":
        model, tok, backend = bench_generate.load_4bit_with_adapter(model_dir, max_seq_length=2048)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        backend = "transformers"
        kwargs = {"dtype": torch.bfloat16, "attn_implementation": "sdpa", "device_map": {"": 0}}
        if family == "hf_bnb":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=params.LORA_TARGET_MODULES))
        model.eval()
    for name, batch, opts in FAMILIES[family]:
        key = f"{name}_{batch}"
        try:
            extra = {"cache_implementation": "static"} if opts.get("static") else {}
            results[key] = bench_generate.timed_generation(
                model, tok, bench_generate.eval_questions(batch), batch, new_tokens, backend,
                path="new" if opts.get("graphs") else "relayout_only", **extra)
        except Exception as err:  # noqa: BLE001 (a probe: record what failed and go on)
            traceback.print_exc()
            results[key] = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
        print(key, results[key], flush=True)
    (out / f"paths_{family}.json").write_text(json.dumps(results, indent=1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--family", help="run one family in this process (internal)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.family:
        return run_family(args.family, args.model_dir, args.new_tokens, args.out)
    report = {}
    for family in FAMILIES:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--model-dir", args.model_dir, "--out", str(args.out),
                               "--new-tokens", str(args.new_tokens), "--family", family], check=False,
                              env=os.environ)
        path = args.out / f"paths_{family}.json"
        report[family] = json.loads(path.read_text()) if path.exists() else {"error": f"exit {done.returncode}"}
        report[family]["process_seconds"] = time.perf_counter() - started
    import torch

    report["device"] = torch.cuda.get_device_name(0)
    (args.out / "probe_generate_paths.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
