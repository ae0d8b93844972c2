"""Rewards for reinforcement learning with verifiable answers (GRPO, R1's own method), and the training items.

Each reward is a function as TRL's GRPOTrainer calls it: the completions of a batch (the text after the prompt,
which ends "<think>\\n"), the dataset's columns as lists, `completion_ids`; it returns one float per completion.
The answer is read by medical_r1.scorer, as 04 reads it: only after </think>, the committed option.
- correctness: HuatuoGPT-o1's PPO reward, 1 for the right option, 0.1 for a wrong one, 0 for no answer
  (still thinking at the length limit, or naming no single option): answering is worth more than not;
- format: a closed </think> followed by a stated answer;
- length guard: a completion that ran to the length limit without closing its thinking is penalised.
Training items use the HuatuoGPT-o1 evaluation schema (question, options, answer_idx) and may never share a
question with 04's evaluation file (`check_no_overlap`).
"""
from __future__ import annotations

import json
import pathlib
import re

from medical_r1.scorer import extract_choice

CORRECT, WRONG, NO_ANSWER = 1.0, 0.1, 0.0  # HuatuoGPT-o1's RL stage
FORMAT_BONUS = 0.2
RUNAWAY_PENALTY = -0.5


def _options(value) -> dict:
    return json.loads(value) if isinstance(value, str) else value  # a JSON column keeps A-D and A-J items apart


def correctness_reward(completions: list[str], answer_idx: list[str], options: list, **_) -> list[float]:
    rewards = []
    for text, gold, opts in zip(completions, answer_idx, options):
        letter, _ = extract_choice(text, _options(opts))
        rewards.append(NO_ANSWER if letter is None else CORRECT if letter == gold else WRONG)
    return rewards


def format_reward(completions: list[str], options: list, **_) -> list[float]:
    return [FORMAT_BONUS if extract_choice(text, _options(opts))[0] is not None else 0.0
            for text, opts in zip(completions, options)]


def length_guard(max_completion_length: int):
    """The length guard for a given limit: RUNAWAY_PENALTY for a completion that used every token it was allowed
    and never closed its thinking, 0 otherwise."""
    def length_guard_reward(completions: list[str], completion_ids: list[list[int]], **_) -> list[float]:
        return [RUNAWAY_PENALTY if len(ids) >= max_completion_length and "</think>" not in text else 0.0
                for text, ids in zip(completions, completion_ids)]
    return length_guard_reward


def normalise_question(text: str) -> str:
    """Question text compared without case, punctuation or spacing, so a copy with other whitespace still matches."""
    return re.sub(r"[\W_]+", "", text.lower())


def load_items(path, limit: int = 0) -> list[dict]:
    """Training items from a file in the HuatuoGPT-o1 evaluation schema ({source: [items]}), validated as 04's;
    the first `limit` of them (0: all)."""
    from medical_r1.artifacts import read_json
    from medical_r1.benchmarks import validate_eval_data

    data = read_json(pathlib.Path(path))
    validate_eval_data(data)
    items = [{**item, "source": name} for name, items in data.items() for item in items]
    return items[:limit] if limit else items


def check_no_overlap(train_items: list[dict], eval_data: dict) -> None:
    """Refuse training items whose question is also in the evaluation file: training on 04's test items would make
    its verdict meaningless. Raises ValueError naming the first few shared questions."""
    evaluated = {normalise_question(item["question"]) for items in eval_data.values() for item in items}
    shared = [item["question"] for item in train_items if normalise_question(item["question"]) in evaluated]
    if shared:
        raise ValueError(f"{len(shared)} training item(s) are also in the evaluation file, e.g. {shared[0][:120]!r}: "
                         "remove them from the training items (07 must never train on 04's questions)")


def grpo_rows(items: list[dict], tokenizer, template: str) -> list[dict]:
    """GRPOTrainer's dataset: the prompt rendered by the training template (as 03 and 04 render it), and the
    columns the rewards read."""
    from medical_r1.benchmarks import mc_question
    from src_helpers import render_prompt

    return [{"prompt": render_prompt(tokenizer, mc_question(item), template), "answer_idx": item["answer_idx"],
             "options": json.dumps(item["options"], ensure_ascii=False)} for item in items]
