"""GPU check: run the notebooks' own path (02 format, 03 train, 04 compare, 05 export) with the real
Unsloth backend, 4-bit, on random models of the real DeepSeek-R1-Distill shapes and real-schema data
(.gpu_ref/data, 198 rows whose token lengths match DATASETS.md). Writes gpu_check.json and prints a table.

On the GPU machine (see lab/gpu/README.md for the whole command):
    python lab/gpu/check_series.py --out $OUT
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "lab" / "gpu")]
import real_shapes  # noqa: E402
import run_series  # noqa: E402

from medical_r1 import artifacts  # noqa: E402
from medical_r1 import data as data_mod  # noqa: E402

# (name, shape, backend, precision, memory cap GiB, notebooks). fp16 is T4 mode; 15 GiB is a T4's memory.
CHECKS = [
    ("qwen-1.5b-bf16-series", "qwen-1.5b", "auto", "bf16", 0, ["01", "02", "03", "04", "05"]),
    ("qwen-1.5b-fp16", "qwen-1.5b", "auto", "fp16", 0, ["02", "03"]),
    ("llama-8b-bf16", "llama-8b", "auto", "bf16", 0, ["01", "02", "03", "04"]),
    ("llama-8b-fp16-t4-15gib", "llama-8b", "auto", "fp16", 15, ["02", "03"]),
    ("qwen-1.5b-transformers-bnb", "qwen-1.5b", "transformers", "bf16", 0, ["02", "03"]),
]


def check_parameters(model_dir, backend, precision, cap, steps):
    return {
        "BACKEND": backend,
        "MODEL_NAME": str(model_dir), "DATASET_NAME": str(real_shapes.REF / "data" / "medical_o1_sft.json"),
        "DATA_CONFIG": "en", "MAX_EXAMPLES": 0, "VAL_SIZE": 16, "MAX_STEPS": steps, "EVAL_STEPS": steps // 2,
        "SAVE_STEPS": steps // 2, "REPORT_TO": "none", "PRECISION": precision, "GPU_MEMORY_CAP_GIB": cap,
        "MAX_NEW_TOKENS": 64, "INSTALL_REQUIREMENTS": "never",
        "EVAL_DATA": str(data_mod.SAMPLE_DATA_DIR / "eval_data.json"), "EVAL_ITEMS": 6, "EVAL_MAX_NEW_TOKENS": 128,
        "ROUGE_ITEMS": 8,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "gpu_check")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", nargs="*", help="names from CHECKS")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, models = {}, {}
    for name, shape, backend, precision, cap, notebooks in CHECKS:
        if args.only and name not in args.only:
            continue
        if shape not in models:
            start = time.time()
            models[shape] = pathlib.Path("/tmp/models") / shape
            n = real_shapes.build_model(shape, models[shape])
            print(f"built {shape}: {n / 1e9:.2f}B parameters in {time.time() - start:.0f} s", flush=True)
        work = pathlib.Path("/tmp/gpu_check") / name
        recipe = {"offline": True, "parameters": check_parameters(models[shape], backend, precision, cap, args.steps)}
        record = {"shape": shape, "backend": backend, "precision": precision, "memory_cap_gib": cap, "notebooks": notebooks}
        try:
            record["timings_s"] = run_series.run(recipe, work, only=notebooks)
            record["ok"] = True
        except Exception as err:  # record the failure and go on to the next check
            record["ok"], record["error"] = False, f"{type(err).__name__}: {str(err)[-1500:]}"
        for key in ("data_stats", "train_metrics", "compare_metrics", "export_report"):
            if artifacts.artifact(work, key).exists():
                record[key] = artifacts.read_json(artifacts.artifact(work, key))
        results[name] = record
        artifacts.write_json(args.out / "gpu_check.json", results)
    import torch
    import transformers
    import trl
    import unsloth

    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "unsloth": unsloth.__version__}
    artifacts.write_json(args.out / "gpu_check.json", {"meta": meta, "checks": results})
    print(json.dumps(meta))
    print("| check | ok | loss first -> last | val loss | peak reserved GiB | train s | notes |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        m = r.get("train_metrics", {})
        ev = m.get("eval_losses") or [[0, float("nan")]]
        c = r.get("compare_metrics", {})
        e = r.get("export_report", {})
        notes = []
        if c:
            notes.append(f"val base {c['base_val_loss']:.3f} -> tuned {c['tuned_val_loss']:.3f}")
        if e:
            notes.append(f"merge verified {e.get('verified')}")
        if not r["ok"]:
            notes.append(r["error"][:200])
        print(f"| {name} | {r['ok']} | {m.get('first_loss', float('nan')):.3f} -> {m.get('last_loss', float('nan')):.3f} "
              f"| {ev[-1][1]:.3f} | {m.get('peak_reserved_gib')} | {m.get('train_runtime_s')} | {'; '.join(notes)} |")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
