"""Why does the output head take 13.7 ms of each 54.8 ms decode step at batch 32 (bench/profile_decode.py, Llama-8B
shape, H100)? Reading its 1.05 GB of weights once would take about 0.35 ms. Times the head's matrix product on
a [32, 1, 4096] batch of hidden states: as a bare torch product on fresh tensors, in the forms cuBLAS may treat
differently, and on the 4-bit model as Unsloth loads it (its lm_head, as Unsloth's decode step calls it).

    python bench/probe_lm_head.py --model-dir /tmp/models/llama-8b --out $OUT
Writes probe_lm_head.json.
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def cuda_ms(fn, repeats=50):
    """Median milliseconds of fn() on the GPU, by CUDA events, after a warm-up."""
    import torch

    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def forms(weight, hidden):
    """The head's product in several forms, each giving the same [32, vocab] logits."""
    import torch.nn.functional as F

    flat = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    return {
        "F.linear(h [B,1,H])": lambda: F.linear(hidden, weight),
        "F.linear(h [B,H])": lambda: F.linear(flat, weight),
        "h @ W.T": lambda: flat @ weight.t(),
        "(W @ h.T).T": lambda: (weight @ flat.t()).t(),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    report = {"device": torch.cuda.get_device_name(0), "batch": args.batch, "fresh": {}, "unsloth": {}}
    weight = torch.randn(128256, 4096, dtype=torch.bfloat16, device="cuda") * 0.02
    hidden = torch.randn(args.batch, 1, 4096, dtype=torch.bfloat16, device="cuda")
    report["weight_read_once_ms"] = weight.numel() * 2 / 3.0e12 * 1000
    for name, fn in forms(weight, hidden).items():
        report["fresh"][name] = cuda_ms(fn)
    del weight
    import bench_generate
    from unsloth import FastLanguageModel

    model, tok, _ = bench_generate.load_4bit_with_adapter(args.model_dir, adapter_std=0.02)
    FastLanguageModel.for_inference(model)
    head = model.get_output_embeddings()
    w = head.weight
    report["unsloth_head"] = {"type": type(head).__name__, "dtype": str(w.dtype), "shape": list(w.shape),
                              "stride": list(w.stride()), "contiguous": w.is_contiguous()}
    report["unsloth"]["head(h [B,1,H])"] = cuda_ms(lambda: head(hidden))
    for name, fn in forms(w, hidden).items():
        report["unsloth"][name] = cuda_ms(fn)
    print(json.dumps(report, indent=1))
    (args.out / "probe_lm_head.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
