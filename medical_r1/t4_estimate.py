"""What a T4 would take: one documented model behind every T4 time the notebooks and docs give (03's minutes of
training, 04's items per minute, 07's seconds a step). No T4 was ever lent to this project: these are estimates,
made from a T4's published rates and from what the project measured on bigger GPUs (lab/BENCHMARKS.md).

The model, in three parts:
- **Training is compute-bound.** A step of a frozen 4-bit base with LoRA costs 4 x N FLOPs per token (forward 2N,
  backward to the inputs 2N; N the weights of every matmul, as lab/bench/bench_train.py counts them). On an H200
  the project's trainer with checkpointing on (a T4's choice) reached TRAIN_MFU of the GPU's measured matmul rate;
  the estimate takes the same share of a T4's matmul rate (T4_FP16_PEAK x T4_MATMUL_EFFICIENCY).
- **Decoding is memory-bound.** Each decode step reads the 4-bit weights, and at a batch above 1 Unsloth
  dequantises each of them to fp16 (written, then read by the matmul: 4 more bytes a weight; the H100 profile in
  lab/BENCHMARKS_LOG.md shows the 224 dequantisations a step), plus the 16-bit output head and the KV cache of
  every answer. Divided by the T4's 320 GB/s at the share of it a real kernel reaches (BANDWIDTH_EFFICIENCY, from
  that same profile), or the step's matmuls at the T4's rate, whichever is longer.
- **Plus a per-step overhead** the bandwidth does not explain: what the H200, answering as a T4 does, took per
  decode step beyond its own bandwidth floor (at batch 4 in 07's rollouts, at batch 32 in 04's generation; a
  straight line between the two). A T4 does not shorten it; Kaggle's slower CPUs may lengthen it.

tests/test_t4_estimate.py checks the arithmetic, that the calibration reproduces the measurements it was taken
from, and that 03's and 07's texts give what these functions print.
"""
import dataclasses

# The T4's published rates.
T4_BANDWIDTH = 320e9  # bytes/s, GDDR6
T4_FP16_PEAK = 65e12  # FLOP/s, fp16 tensor cores
# Assumed, not measured here: the share of its fp16 peak a T4 reaches in a large dense matmul (its 70 W cap
# holds it well under the peak).
T4_MATMUL_EFFICIENCY = 0.6

# The bigger GPUs the calibration comes from.
H100_BANDWIDTH = 3.35e12
H200_BANDWIDTH = 4.8e12
H200_MATMUL = 797.8e12  # measured dense bf16 8192^3 in the training benchmark (2026-11-30)

# Measured (lab/BENCHMARKS.md, lab/BENCHMARKS_LOG.md), at the lab's Llama-8B shape (Qwen vocabulary):
TRAIN_MFU = 0.270  # 03's trainer, checkpointing on, share of the measured matmul rate (a_project, H200)
TRAIN_STEP_TOKENS_MEASURED = 7_497  # its real tokens a step: 7,098 tokens/s x 21.125 s / 20 steps
PACKED_FILL = TRAIN_STEP_TOKENS_MEASURED / (2 * 2 * 2048)  # packed rows are this full (2 x 2 rows of 2,048)
MEAN_EXAMPLE_TOKENS = 683  # the real-length rows' mean, for training without packing
NF4_DEQUANT_MS_H100 = 5.9  # NF4 dequantisation per decode step at batch 32 (H100 profile, 2026-11-22)
# Decode steps of 4-bit + LoRA with 04's speed-ups on an H200 answering as a T4: (batch, tokens/s), answers of
# 1,024 tokens. Batch 4: 07's rollouts (grpo_bench.json); batch 32: 04's generation (generate_t4_mode_batch32).
DECODE_MEASURED_H200 = ((4, 223.4), (32, 1527.6))
MEASURED_NEW_TOKENS = 1024
PROMPT_TOKENS = 200  # assumed length of an evaluation or GRPO prompt (a question and its options, templated)

NF4_BYTES = 0.5 + 1 / 64  # 4 bits a weight and the blocks' scales (double-quantised)
DEQUANTISED_BYTES = 4  # written as fp16 by the dequantisation, read by the matmul
HEAD_BYTES = 2  # the output head stays 16-bit


@dataclasses.dataclass(frozen=True)
class Shape:
    """The widths that decide the cost: from a model's config.json."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0

    @property
    def quantized_params(self) -> int:
        """The weights of the 7 projections of every layer (4-bit)."""
        head_dim = self.head_dim or self.hidden // self.heads
        kv = self.kv_heads * head_dim
        h = self.hidden
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * self.intermediate)

    @property
    def head_params(self) -> int:
        return self.hidden * self.vocab

    @property
    def matmul_params(self) -> int:
        return self.quantized_params + self.head_params

    @property
    def kv_bytes_per_token(self) -> int:
        """fp16 keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_heads * (self.head_dim or self.hidden // self.heads) * 2


# The four distills (their config.json), and the lab's Llama-8B shape the calibration was measured on.
SHAPES = {
    "llama-8b": Shape(4096, 14336, 32, 32, 8, 128256, 128),
    "qwen-1.5b": Shape(1536, 8960, 28, 12, 2, 151936),
    "qwen-7b": Shape(3584, 18944, 28, 28, 4, 152064),
    "qwen-14b": Shape(5120, 13824, 48, 40, 8, 152064),
}
LAB_LLAMA_8B = dataclasses.replace(SHAPES["llama-8b"], vocab=151936)
NAMES = {"llama-8b": "Llama-8B", "qwen-1.5b": "Qwen-1.5B", "qwen-7b": "Qwen-7B", "qwen-14b": "Qwen-14B"}


@dataclasses.dataclass(frozen=True)
class Gpu:
    bandwidth: float  # bytes/s
    matmul: float  # FLOP/s a large dense matmul reaches


T4 = Gpu(T4_BANDWIDTH, T4_FP16_PEAK * T4_MATMUL_EFFICIENCY)
H200 = Gpu(H200_BANDWIDTH, H200_MATMUL)


def shape_for(model_name: str) -> Shape | None:
    """The shape of one of the four distills, by its name (Hub id or folder); None for any other model."""
    lowered = str(model_name).lower()
    return next((SHAPES[key] for key, name in NAMES.items() if f"distill-{name.lower()}" in lowered), None)


# ---- decoding --------------------------------------------------------------------------------------------------

# The share of its bandwidth a real kernel reaches: the H100's NF4 dequantisation per step at batch 32 read the
# 4-bit weights and wrote them as fp16 in NF4_DEQUANT_MS_H100.
BANDWIDTH_EFFICIENCY = (LAB_LLAMA_8B.quantized_params * (NF4_BYTES + 2) / (NF4_DEQUANT_MS_H100 / 1000)
                        / H100_BANDWIDTH)


def decode_step_bytes(shape: Shape, batch: int, context_tokens: float) -> float:
    """What one decode step reads and writes: the 4-bit weights (and their fp16 copies above batch 1), the
    16-bit head, the KV cache of `batch` answers `context_tokens` long."""
    per_weight = NF4_BYTES + (DEQUANTISED_BYTES if batch > 1 else 0)
    return (shape.quantized_params * per_weight + shape.head_params * HEAD_BYTES
            + batch * context_tokens * shape.kv_bytes_per_token)


def decode_step_floor_s(shape: Shape, batch: int, context_tokens: float, gpu: Gpu) -> float:
    """The GPU's own time for a decode step: its bytes at the bandwidth a kernel reaches, or its matmuls,
    whichever is longer."""
    return max(decode_step_bytes(shape, batch, context_tokens) / (gpu.bandwidth * BANDWIDTH_EFFICIENCY),
               2 * shape.matmul_params * batch / gpu.matmul)


def measured_overheads() -> list:
    """(batch, seconds) per decode step beyond the H200's floor, from DECODE_MEASURED_H200."""
    context = PROMPT_TOKENS + MEASURED_NEW_TOKENS / 2
    return [(batch, batch / rate - decode_step_floor_s(LAB_LLAMA_8B, batch, context, H200))
            for batch, rate in DECODE_MEASURED_H200]


def step_overhead_s(batch: int) -> float:
    """The per-step overhead at `batch`: the straight line through the measured points (held at its ends)."""
    (b0, o0), (b1, o1) = measured_overheads()
    batch = min(max(batch, b0), b1)
    return o0 + (o1 - o0) * (batch - b0) / (b1 - b0)


def answer_seconds(shape: Shape, batch: int, new_tokens: int, prompt_tokens: int = PROMPT_TOKENS,
                   gpu: Gpu = T4) -> float:
    """Seconds to write `batch` answers of `new_tokens` together: the prompt's pass (compute-bound) and the
    decode steps at their mean context. Answers that stop early (EOS) take less; random weights never do."""
    prefill = 2 * shape.matmul_params * batch * prompt_tokens / gpu.matmul
    step = decode_step_floor_s(shape, batch, prompt_tokens + new_tokens / 2, gpu) + step_overhead_s(batch)
    return prefill + new_tokens * step


def generation_tokens_per_s(model_name: str, batch: int = 32, new_tokens: int = 1024,
                            prompt_tokens: int = PROMPT_TOKENS) -> float | None:
    """New tokens a second a T4 writes at `batch`; None for a model that is not one of the four distills."""
    shape = shape_for(model_name)
    return None if shape is None else batch * new_tokens / answer_seconds(shape, batch, new_tokens, prompt_tokens)


def eval_items_per_minute(model_name: str, batch: int = 32, new_tokens: int = 1024,
                          prompt_tokens: int = PROMPT_TOKENS) -> float | None:
    """04: answers a T4 writes a minute (one model, answers of up to `new_tokens`, `batch` at a time), every
    answer running to its limit; None for a model that is not one of the four distills."""
    shape = shape_for(model_name)
    return None if shape is None else 60 * batch / answer_seconds(shape, batch, new_tokens, prompt_tokens)


# ---- training --------------------------------------------------------------------------------------------------

def train_step_seconds(shape: Shape, tokens: float, gpu: Gpu = T4) -> float:
    """An optimizer step over `tokens` real tokens at 4 x N FLOPs a token and the measured MFU."""
    return 4 * shape.matmul_params * tokens / (gpu.matmul * TRAIN_MFU)


def step_tokens(batch_size: int, grad_accum: int, max_seq_length: int, packing: bool = True) -> float:
    """Real tokens an optimizer step trains on: packed rows as full as measured, else mean-length examples."""
    if packing:
        return batch_size * grad_accum * max_seq_length * PACKED_FILL
    return batch_size * grad_accum * MEAN_EXAMPLE_TOKENS


def training_minutes(model_name: str, steps: int, batch_size: int, grad_accum: int, max_seq_length: int,
                     packing: bool = True) -> float | None:
    """03: minutes of training on one T4 (checkpointing on, as "auto" chooses there); validation and saving not
    counted. None for a model that is not one of the four distills."""
    shape = shape_for(model_name)
    if shape is None:
        return None
    return steps * train_step_seconds(shape, step_tokens(batch_size, grad_accum, max_seq_length, packing)) / 60


def grpo_step_seconds(model_name: str, batch: int, num_generations: int, max_completion_length: int,
                      grad_accum: int = 1, prompt_tokens: int = PROMPT_TOKENS) -> float | None:
    """07: seconds an optimizer step takes on one T4: per device step the `batch` answers written together to
    their limit, then trained on (prompt and answer). None for a model that is not one of the four distills."""
    shape = shape_for(model_name)
    if shape is None:
        return None
    if batch % num_generations:
        raise ValueError(f"GRPO_BATCH_SIZE ({batch}) must be a multiple of NUM_GENERATIONS ({num_generations})")
    rollout = answer_seconds(shape, batch, max_completion_length, prompt_tokens)
    train = train_step_seconds(shape, batch * (prompt_tokens + max_completion_length))
    return grad_accum * (rollout + train)


# ---- what the notebooks print ----------------------------------------------------------------------------------

def about(x: float) -> str:
    """Two significant figures, as an estimate deserves."""
    return f"{float(f'{x:.2g}'):,.0f}" if x >= 10 else f"{x:.1g}"


def describe_training(model_name: str, steps: int, batch_size: int, grad_accum: int, max_seq_length: int,
                      packing: bool = True) -> str:
    minutes = training_minutes(model_name, steps, batch_size, grad_accum, max_seq_length, packing)
    if minutes is None:
        return f"T4 estimate: none for {model_name} (only for the four DeepSeek-R1 distills)"
    return (f"T4 estimate (medical_r1/t4_estimate.py, not measured on a T4): about {about(minutes)} minutes of "
            f"training for {steps} steps on one T4, {about(minutes * 60 / steps)} s a step")


def describe_grpo(model_name: str, batch: int, num_generations: int, max_completion_length: int, steps: int,
                  grad_accum: int = 1) -> str:
    seconds = grpo_step_seconds(model_name, batch, num_generations, max_completion_length, grad_accum)
    if seconds is None:
        return f"T4 estimate: none for {model_name} (only for the four DeepSeek-R1 distills)"
    return (f"T4 estimate (medical_r1/t4_estimate.py, not measured on a T4): about {about(seconds)} s a step on one "
            f"T4 with every answer running to {max_completion_length} tokens, {about(steps * seconds / 3600)} "
            f"hours for {steps} steps")


def describe_evaluation(model_name: str, batch: int = 32, new_tokens: int = 1024, minutes: float | None = None,
                        models: int = 2) -> str:
    """04's line: answers a T4 writes a minute, and with `minutes` (EVAL_MINUTES) how many items per model the
    benchmark rounds would reach for `models` models compared (every answer running to its limit)."""
    rate = eval_items_per_minute(model_name, batch, new_tokens)
    if rate is None:
        return f"T4 estimate: none for {model_name} (only for the four DeepSeek-R1 distills)"
    said = (f"T4 estimate (medical_r1/t4_estimate.py, not measured on a T4): about {about(rate)} answers a minute "
            f"at batch {batch}, every answer running to {new_tokens} tokens")
    if minutes is None:
        return said
    return f"{said}; EVAL_MINUTES = {minutes:g} would hold about {about(minutes * rate / models)} items per model " \
           f"for {models} models"
