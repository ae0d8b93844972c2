"""04 and 01 as they generate now, with Unsloth's CUDA-graph decode step, on the Llama-8B shape: sampled answers
(01's and 04's side-by-side questions), and base then tuned through answer_base_and_tuned (the adapter switched
off and on between graph replays). Each must equal the eager step's output for the same seed.

    python lab/gpu/check_decode_graphs.py --model-dir /tmp/models/llama-8b --out $OUT
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "lab" / "gpu"), str(ROOT / "lab" / "bench")]
import bench_generate  # noqa: E402

from medical_r1 import generation  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    import torch

    model, tok, backend = bench_generate.load_4bit_with_adapter(args.model_dir, max_seq_length=2048, adapter_std=0.02)
    report = {"device": torch.cuda.get_device_name(0)}
    for graphs in (False, True):
        settings = generation.GenerationSettings(max_new_tokens=48, batch_size=5, seed=3407)
        start = time.perf_counter()
        sampled = generation.generate_answers(model, tok, generation.QUESTIONS, "r1_chat", settings, backend,
                                              decode_graphs=graphs)
        base, tuned = generation.answer_base_and_tuned(model, tok, generation.QUESTIONS, "r1_chat",
                                                       settings.replace(do_sample=False), backend, decode_graphs=graphs)
        report["graphs" if graphs else "eager"] = {
            "seconds": time.perf_counter() - start, "sampled": [a["output"] for a in sampled],
            "base": [a["output"] for a in base], "tuned": [a["output"] for a in tuned]}
    eager, graphs = report["eager"], report["graphs"]
    report["sampled_equal"] = eager["sampled"] == graphs["sampled"]
    report["base_equal"] = eager["base"] == graphs["base"]
    report["tuned_equal"] = eager["tuned"] == graphs["tuned"]
    report["base_differs_from_tuned"] = graphs["base"] != graphs["tuned"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_graphs_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print({k: v for k, v in report.items() if k.endswith(("equal", "tuned", "device"))})


if __name__ == "__main__":
    main()
