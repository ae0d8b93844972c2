#!/usr/bin/env bash
# The open GPU measurements in one go on a 2-GPU machine (install line: BENCHMARKS.md), each GPU on its own work:
#   bash bench/gpu_x2.sh RESULTS_DIR
# GPU 0: the training benchmark's checkpointing and shape rows (BENCHMARKS.md, issue #24), alone on its GPU.
# GPU 1: 00, 02 and 03 in T4 mode with the defaults (03 must still fit 15 GiB in fp16), the GRPO benchmark
# (04's generate_answers against the trainer's rollouts), then 05 and 06 in T4 mode.
# Logs go to RESULTS_DIR/gpu0.log and gpu1.log; RESULTS_DIR/done0 and done1 mark each GPU's end.
set -u
out=${1:?results folder}
mkdir -p "$out"
python3 -c "import sys; sys.path[:0] = ['gpu', '.']; import real_shapes; print(real_shapes.build_model('llama-8b', '/tmp/models/llama-8b'))"
(
  export CUDA_VISIBLE_DEVICES=0
  python3 bench/bench_train.py --model-dir /tmp/models/llama-8b --shape llama-8b --out "$out/train" --warmup 6 \
    --measure 20 --only a_project a_project_auto a_project_bucketed_512 a_project_bucketed_full r_raw_loop \
    r_raw_loop_repeated r_raw_loop_no_checkpointing
  touch "$out/done0"
) > "$out/gpu0.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  python3 gpu/check_t4.py --out "$out/t4" --only 00 02 03
  python3 bench/bench_grpo.py --out "$out/grpo" --steps 3
  python3 gpu/check_t4.py --out "$out/t4" --only 05 06
  touch "$out/done1"
) > "$out/gpu1.log" 2>&1 &
wait
