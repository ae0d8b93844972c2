#!/usr/bin/env bash
# Everything lab/BENCHMARKS.md reports, in one go on the GPU machine (install line: lab/BENCHMARKS.md):
#   bash lab/bench/gpu_all.sh RESULTS_DIR
# Builds the random Llama-8B-shape model once, then the training benchmark, the generation benchmark, and
# the Qwen-1.5B notebook series 01-05 (the merge check of 05 included). Writes RESULTS_DIR/done at the end.
set -u
out=${1:?results folder}
mkdir -p "$out"
python3 -c "import sys; sys.path[:0] = ['gpu', '.']; import real_shapes; print(real_shapes.build_model('llama-8b', '/tmp/models/llama-8b'))"
python3 lab/bench/bench_train.py --model-dir /tmp/models/llama-8b --shape llama-8b --out "$out"
python3 lab/bench/bench_generate.py --model-dir /tmp/models/llama-8b --shape llama-8b --out "$out"
python3 lab/gpu/check_series.py --out "$out" --only qwen-1.5b-bf16-series
touch "$out/done"
