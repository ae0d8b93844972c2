"""Answers from the model with the training prompt (batched, left-padded), validation loss, and the
side-by-side table of base and tuned answers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys

from src_helpers import encode_prompt, split_thinking

# The fixed question set that 01 (base) and 04 (tuned) both answer, so the two can be put side by side.
QUESTIONS = [
    {"id": "en-stress-incontinence", "lang": "en", "question": (
        "A 61-year-old woman with a long history of involuntary urine loss during activities like coughing "
        "or sneezing but no leakage at night undergoes a gynecological exam and Q-tip test. Based on these "
        "findings, what would cystometry most likely reveal about her residual volume and detrusor contractions?")},
    {"id": "en-chest-pain", "lang": "en", "question": (
        "A 58-year-old man with diabetes has 30 minutes of crushing chest pain and ST elevation in leads "
        "V1-V4. Which artery is most likely occluded, and what is the immediate treatment?")},
    {"id": "en-child-fever-rash", "lang": "en", "question": (
        "A 3-year-old has had fever for 6 days, bilateral non-purulent conjunctivitis, cracked red lips, "
        "a polymorphous rash and swollen hands. What is the diagnosis and which complication must be screened for?")},
    {"id": "zh-diabetes", "lang": "zh", "question": "多饮、多尿、多食伴体重下降的患者，空腹血糖显著升高，可能是什么疾病？"},
    {"id": "zh-hemoptysis", "lang": "zh", "question": "一位60岁长期吸烟的男性，刺激性咳嗽、痰中带血三个月，应首先考虑什么疾病？如何确诊？"},
]


@contextlib.contextmanager
def environment(variables: dict):
    """These environment variables set for the block, the previous values back afterwards."""
    previous = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def standard_layout(hidden):
    """The same values in the standard row-major layout (a view where the rows allow it, else a copy).
    [batch, 1, hidden] states whose rows do not lie one after another in memory (a view of [1, batch, hidden],
    a [:, -1:] slice of the prompt's states, or what Unsloth's decode step passes to the output head) make
    torch's linear run as a batched product with the weight broadcast to every row (aten::matmul folds only
    rows laid out one after another), so the head's weights are read once per row instead of once."""
    return hidden.reshape(-1, hidden.shape[-1]).contiguous().view(hidden.shape)


@contextlib.contextmanager
def head_reads_weights_once(model, active: bool = True):
    """For the block, the output head gets its input in the standard layout (see standard_layout). Traced on an
    H100 at the Llama-8B shape, batch 32: the head took 13.7 ms of each 55 ms graph decode step as that batched
    product (its input: rows 14,336 elements apart, the MLP's scratch buffer); with this, the graph step at
    batch 32 went from 616 to 823 tokens/s, the eager step at batch 128 from 812 to 1,260 (lab/BENCHMARKS.md).
    active=False leaves the head as it is (the benchmarks' old path)."""
    if not active:
        yield
        return
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (standard_layout(args[0]), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def grouped_query_decode_attention(attn, queries, kv_len: int, keep_mask, fused: bool = True):
    """softmax(Q K^T / sqrt(d)) V for one new token per row over the first kv_len rows of an Unsloth attention
    module's decode cache (paged_attention_K / _V, laid out [length, batch, kv_heads, head_dim]), without
    repeating K and V for each query head. Each KV head's query heads become the rows of one query, so one
    fused attention call reads the cache once. Unsloth's own core (torch SDPA with enable_gqa and a mask) ran,
    by the kernels in its profile, as SDPA's math path: K and V copied per query group and upcast to float32 at
    every layer and step, most of the decode step at batch 128 on an H100 (lab/BENCHMARKS.md).
    queries [batch, heads, 1, head_dim]; keep_mask: None or a bool keep mask [batch, 1, 1, kv_len] (a 2-D
    padding mask or an additive 4-D mask are converted as Unsloth does). Returns [batch, heads, 1, head_dim].
    fused=False computes what SDPA's math path computes (float32, both factors scaled by the square root of the
    scale), op for op, on the grouped queries instead of the repeated K and V."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    keys = attn.paged_attention_K[:kv_len].permute(1, 2, 0, 3)
    values = attn.paged_attention_V[:kv_len].permute(1, 2, 0, 3)
    batch, kv_heads, _, head_dim = keys.shape
    heads = queries.shape[1]
    grouped = queries.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    if keep_mask is not None and keep_mask.dim() == 2:
        keep_mask = keep_mask[:, None, None, :].bool()
    elif keep_mask is not None and keep_mask.dtype.is_floating_point:
        keep_mask = keep_mask.eq(0)
    if not fused:
        root_scale = (1 / math.sqrt(head_dim)) ** 0.5
        scores = (grouped.float() * root_scale) @ (keys.float() * root_scale).transpose(-1, -2)
        if keep_mask is not None:
            scores = scores.masked_fill(~keep_mask, float("-inf"))
        return (scores.softmax(-1) @ values.float()).to(queries.dtype).reshape(batch, heads, 1, head_dim)
    # The memory-efficient kernel: fused, float32 inside, any mask and cache strides, no per-shape setup. Left to
    # choose, torch took cuDNN's kernel on an H100, which builds a plan for every new cache length: slower than
    # Unsloth's core at batch 32 (lab/BENCHMARKS.md). Math is the CPU's fallback (tests).
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=keep_mask)
    return out.reshape(batch, heads, 1, head_dim)


# The Unsloth releases whose private `unsloth.models.llama._decode_attention_core` (its signature and what it returns)
# grouped_decode_attention was written against and checked on a GPU; another release keeps Unsloth's own core.
UNSLOTH_CORE_TESTED = ("2026.10.9",)
_SAID = set()


def unsloth_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("unsloth")
    except metadata.PackageNotFoundError:
        return None


def replaces_unsloth_core() -> bool:
    """Whether the installed Unsloth is one the grouped attention core was tested on; says once when it is not."""
    version = unsloth_version()
    if version in UNSLOTH_CORE_TESTED:
        return True
    if version not in _SAID:
        _SAID.add(version)
        print(f"decode attention: Unsloth {version}'s own core (the grouped core was tested on Unsloth "
              f"{', '.join(UNSLOTH_CORE_TESTED)} only; answers are the same, a little slower at large batches)")
    return False


@contextlib.contextmanager
def grouped_decode_attention(active: bool = True, fused: bool = True):
    """For the block, the attention of Unsloth's CUDA-graph decode step (which runs between the captured
    segments, Llama family) is grouped_query_decode_attention. Batch 1 and sliding windows keep Unsloth's core.
    Same values up to rounding, not bit for bit: on an H100, teacher-forced logits within 0.9% of the largest
    logit for 2 layers of the Llama-8B widths, 5% for the 32-layer random-weight model, where an exact float32
    copy of Unsloth's computation differs as much (lab/bench/bench_generate.py, lab/BENCHMARKS.md). Does nothing where
    Unsloth is not loaded (CPU)."""
    llama = sys.modules.get("unsloth.models.llama")
    original = getattr(llama, "_decode_attention_core", None)
    if not active or original is None or not replaces_unsloth_core():
        yield
        return

    def core(attn, queries, kv_len, keep_mask, batch, *args):
        window = getattr(attn.config, "sliding_window", None)
        if batch == 1 or (window is not None and kv_len > window):
            return original(attn, queries, kv_len, keep_mask, batch, *args)
        return grouped_query_decode_attention(attn, queries, kv_len, keep_mask, fused), None, None

    llama._decode_attention_core = core
    try:
        yield
    finally:
        llama._decode_attention_core = original


@contextlib.contextmanager
def decode_speedups(model, backend: str, graphs: bool = True, relayout: bool = True, grouped: bool = True,
                    fused: bool = True):
    """For the block, generate's three speed-ups, each switchable (all off: 04's path before them, for the
    benchmarks). Unsloth's decode step replayed as CUDA graphs (bit for bit its eager step; Unsloth reads the
    switch at each generate call), the head reading its weights once, and the grouped attention core, which
    only the graph step calls (fused=False: its float32 math variant). Together 3.2x-4.4x the old path at
    batch 32 on an H100 for the Llama-8B default (lab/BENCHMARKS.md). Unsloth keeps the eager step, and its own
    core, for Qwen2; the head fix applies there too."""
    switch = {"UNSLOTH_DECODE_CUDA_GRAPHS": "1" if graphs else "0"} if backend == "unsloth" else {}
    with environment(switch), head_reads_weights_once(model, relayout), grouped_decode_attention(grouped and graphs,
                                                                                                 fused):
        yield


# GEN_BATCH_SIZE = 0 takes the largest of these that the GPU's free memory holds, never less than the last:
# batch 32 at 1,024 new tokens fits a T4 (15 GiB cap: 12.93-13.07 GiB peak at the Llama-8B shape); on an H100
# batch 128 generates 2.2x the tokens per second of batch 32 (lab/BENCHMARKS.md).
AUTO_BATCH_SIZES = (128, 64, 32)


def batch_memory_per_row(config, prompt_tokens: int, max_new_tokens: int) -> int:
    """Bytes one more row of a generation batch may take at its peak, on the safe side: its KV cache at full
    length (16-bit) plus the prompt's logits at the prefill (16-bit and a float32 copy, with room for one
    more). Measured at the Llama-8B shape on an H100, a row took 85-170 MiB at 256 new tokens; for 04's prompts
    (about 114 tokens) this counts 178 MiB (lab/BENCHMARKS.md)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
    return kv_per_token * (prompt_tokens + max_new_tokens) + prompt_tokens * config.vocab_size * 8


def auto_batch_size(model, prompt_tokens: int, max_new_tokens: int) -> tuple[int, str]:
    """(batch, why): the largest of AUTO_BATCH_SIZES whose rows fit in the GPU memory left, by
    batch_memory_per_row, keeping a tenth spare; 32 without a GPU."""
    import torch

    floor = AUTO_BATCH_SIZES[-1]
    if not torch.cuda.is_available():
        return floor, f"batch {floor} (no GPU)"
    from medical_r1.runtime import agree_on_smallest, free_gpu_bytes, process_rank

    per_row = batch_memory_per_row(model.config, prompt_tokens, max_new_tokens)
    free = free_gpu_bytes()
    rows = int(0.9 * free // per_row)
    own = next((b for b in AUTO_BATCH_SIZES if b <= rows), floor)
    batch = agree_on_smallest(own)  # every process writes the batches one process would: one size for all
    processes = process_rank()[1]
    agreed = "" if processes == 1 else (f"; the smallest of the {processes} processes' choices (this one's GPU "
                                        f"alone: {own})" if batch != own else f"; agreed by the {processes} processes")
    return batch, (f"batch {batch}: {free / 2**30:.1f} GiB free holds about {rows} answers of up to "
                   f"{prompt_tokens + max_new_tokens} tokens ({per_row / 2**20:.0f} MiB each, counted on the safe "
                   f"side); GEN_BATCH_SIZE = 0 takes the largest of {', '.join(map(str, AUTO_BATCH_SIZES))} "
                   f"that fits, and never less than {floor}{agreed}")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated, as one value: what the parameters cells call MAX_NEW_TOKENS (or
    EVAL_MAX_NEW_TOKENS), DO_SAMPLE (or not EVAL_GREEDY), TEMPERATURE, TOP_P, GEN_BATCH_SIZE and SEED. 01 and 04
    build it once and pass it to every function that answers; `replace` changes one field."""
    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    batch_size: int = 0  # 0: the most this GPU holds, chosen once (choose_batch_size) or by the call
    seed: int = 3407

    def replace(self, **changes) -> GenerationSettings:
        return dataclasses.replace(self, **changes)


def choose_batch_size(model, tokenizer, questions: list[dict], template: str, settings: GenerationSettings
                      ) -> GenerationSettings:
    """The settings with GEN_BATCH_SIZE = 0 resolved once, for the longest of `questions` (every prompt the notebook
    will send) at settings.max_new_tokens, and the choice printed; a batch size already set is kept."""
    if settings.batch_size:
        return settings
    return _with_batch_size(model, max(len(encode_prompt(tokenizer, q["question"], template)) for q in questions),
                            settings)


def _with_batch_size(model, longest_prompt: int, settings: GenerationSettings) -> GenerationSettings:
    """settings with batch_size 0 resolved for prompts of up to longest_prompt tokens, the choice printed."""
    if settings.batch_size:
        return settings
    batch_size, why = auto_batch_size(model, longest_prompt, settings.max_new_tokens)
    print(f"generation {why}")
    return settings.replace(batch_size=batch_size)


def generate_answers(model, tokenizer, questions: list[dict], template: str, settings: GenerationSettings,
                     backend: str, min_new_tokens: int = 0, decode_graphs: bool = True, head_relayout: bool = True,
                     grouped_attention: bool = True, fused_attention: bool = True, **generate_kwargs) -> list[dict]:
    """Answer each question with the training prompt (left-padded batches, sorted by length), as `settings` say.
    A batch size of 0 is chosen here from the GPU's free memory (choose_batch_size) and printed. In several
    processes (one per GPU: gpu_processes, torchrun) each writes every N-th batch and all get every answer back, in
    order: the batches, and each batch's seed, are those of one process, so the answers are the same.
    min_new_tokens > 0 forbids stopping earlier (benchmarks use it to compare at equal output tokens);
    decode_graphs, head_relayout, grouped_attention and fused_attention switch its speed-ups (decode_speedups);
    generate_kwargs go to model.generate (a cache implementation, for instance)."""
    import torch

    from medical_r1.runtime import gather_from_processes, process_rank

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    encoded = [encode_prompt(tokenizer, q["question"], template) for q in questions]
    order = sorted(range(len(questions)), key=lambda i: len(encoded[i]))
    batch_size = _with_batch_size(model, max(map(len, encoded)), settings).batch_size  # prompts encoded once
    max_new_tokens, do_sample = settings.max_new_tokens, settings.do_sample
    pad_id = tokenizer.pad_token_id
    device = input_device(model)
    outputs: dict[int, dict] = {}
    rank, processes = process_rank()
    for number, start in enumerate(range(0, len(order), batch_size)):
        if number % processes != rank:
            continue
        torch.manual_seed(settings.seed + number)  # the batch's own seed: the same answers in any process
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if do_sample else {}
        with torch.no_grad(), decode_speedups(model, backend, decode_graphs, head_relayout, grouped_attention,
                                              fused_attention):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
                                 min_new_tokens=min_new_tokens or None, **sampling, **generate_kwargs)
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id) + 1]
            text = tokenizer.decode(new, skip_special_tokens=True)
            thinking, answer, finished = split_thinking(text)
            outputs[i] = {**questions[i], "output": text, "thinking": thinking, "answer": answer,
                          "finished_thinking": finished, "new_tokens": len(new)}
    outputs = gather_from_processes(outputs)
    return [outputs[i] for i in range(len(questions))]


def input_device(model):
    """The device a model's inputs go to: its decoder's (transformers' `model.device`). Not its first parameter's:
    where Unsloth judges the GPU's memory short it loads an adapter with the input embeddings moved to CPU RAM
    ("Offloading embeddings to RAM") and pins `model.device` to the decoder's; the first parameter is then on the
    CPU (seen in T4 mode, lab/gpu/RESULTS.md, where 04's validation loss stopped on a CPU/GPU mismatch)."""
    return model.device


def eval_loss(model, records: list[dict], batch_size: int = 4) -> float:
    """Mean cross-entropy per label token over records (the same tokens the trainer's eval loss uses)."""
    import torch

    device = input_device(model)
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in batch], device=device)
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch],
                            device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        # Only the positions that predict a label, upcast a row at a time. Upcasting the batch's logits whole, with
        # the shifted copy and the log-softmax, held about seven times their 16-bit size: about 6 GB for 4 rows
        # of 800 tokens at the 8B's vocabulary (counted, not measured), next to the model on a 15 GB T4.
        for row in range(len(batch)):
            targets = labels[row, 1:]
            keep = targets != -100
            total += torch.nn.functional.cross_entropy(logits[row, :-1][keep].float(), targets[keep],
                                                       reduction="sum").item()
            count += int(keep.sum())
    return total / count


def base_vs_tuned_loss(model, val: list[dict]) -> dict:
    """Validation loss with the adapter switched off (the base model) and on (the tuned model)."""
    with model.disable_adapter():
        base = eval_loss(model, val)
    tuned = eval_loss(model, val)
    return {"base_val_loss": base, "tuned_val_loss": tuned,
            "base_val_perplexity": math.exp(base), "tuned_val_perplexity": math.exp(tuned)}


def answer_base_and_tuned(model, tokenizer, questions, template: str, settings: GenerationSettings, backend: str,
                          decode_graphs: bool = True):
    """The same questions answered with the adapter switched off (the base model), then on."""
    with model.disable_adapter():
        base = generate_answers(model, tokenizer, questions, template, settings, backend, decode_graphs=decode_graphs)
    return base, generate_answers(model, tokenizer, questions, template, settings, backend, decode_graphs=decode_graphs)


def comparison_rows(base_answers: list[dict], tuned_answers: list[dict]) -> list[dict]:
    tuned = {a["id"]: a for a in tuned_answers}
    missing = [a["id"] for a in base_answers if a["id"] not in tuned]
    if missing:
        raise ValueError(f"tuned answers are missing questions {missing}: run 04 on the same question set")
    return [{"id": a["id"], "question": a["question"], "base": a["output"], "tuned": tuned[a["id"]]["output"],
             "base_finished": a["finished_thinking"], "tuned_finished": tuned[a["id"]]["finished_thinking"]}
            for a in base_answers]


def comparison_html(rows: list[dict], losses: dict) -> str:
    """Base and tuned answers side by side, each one's thinking folded above its answer (as the chat shows it)."""
    import html

    from medical_r1.display import html_page, table_html, thinking_fold_html

    body = [[("text", html.escape(r["question"])), ("text", thinking_fold_html(r["base"])),
             ("text", thinking_fold_html(r["tuned"]))] for r in rows]
    loss = (f"<p>Validation loss (CoT + response tokens): base {losses['base_val_loss']:.4f}, tuned "
            f"{losses['tuned_val_loss']:.4f} nats per token</p>") if losses else ""
    return html_page("Base vs tuned", f"<h2>Base vs fine-tuned answers</h2>{loss}<p>Each answer's thinking is "
                                      "folded: click its summary to read it.</p>"
                     + table_html(["Question", "Base model", "Fine-tuned"], body))
