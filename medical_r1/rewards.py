"""Rewards for reinforcement learning with verifiable answers (GRPO, R1's own method), and the training items.

Each reward is a function as TRL's GRPOTrainer calls it: the completions of a batch (the text after the prompt,
which ends "<think>\\n"), the dataset's columns as lists, `completion_ids`; it returns one float per completion.
The answer is read by medical_r1.scorer, as 04 reads it: only after </think>, the committed option.
- correctness: HuatuoGPT-o1's PPO reward, 1 for the right option, 0.1 for a wrong one, 0 for no answer
  (still thinking at the length limit, or naming no single option): answering is worth more than not;
- format: a closed </think> followed by a stated answer;
- length guard: a completion that ran to the length limit without closing its thinking is penalised.
Training items use the HuatuoGPT-o1 evaluation schema (question, options, answer_idx), from a file in that schema
or from a Hub dataset with those columns (the default: MedQA's USMLE 4-option training split), and never include a
question of 04's evaluation file (`without_eval_questions`).
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


def closed_thinking_reward(completions: list[str], **_) -> list[float]:
    """The format reward's first step: 1 for a completion that closed its thinking with </think>, 0 otherwise. What a
    tiny model can learn to do; the learning check trains on it (medical_r1.learning)."""
    return [1.0 if "</think>" in text else 0.0 for text in completions]


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


def load_items(source, limit: int = 0) -> list[dict]:
    """Training items, validated as 04's: from a local JSON file in the HuatuoGPT-o1 evaluation schema
    ({source: [items]}), or else from the training split of the Hub dataset named `source`, whose rows carry
    `question`, `options` (letter -> text) and `answer_idx`; the first `limit` of them (0: all)."""
    from medical_r1.artifacts import read_json
    from medical_r1.benchmarks import validate_eval_data

    path = pathlib.Path(source)
    if path.suffix == ".json" or path.exists():
        data = read_json(path)
    else:
        data = {source: hub_items(source)}
    validate_eval_data(data)
    items = [{**item, "source": name} for name, items in data.items() for item in items]
    return items[:limit] if limit else items


def hub_items(name: str) -> list[dict]:
    """The training split of a Hub dataset, reduced to the columns 07 uses."""
    import datasets

    try:
        rows = datasets.load_dataset(name, split="train")
    except Exception as err:  # noqa: BLE001 (offline, a wrong name, no such split: one sentence names the fix)
        raise ValueError(f"could not load the training items {name!r} from the Hugging Face Hub "
                         f"({type(err).__name__}: {str(err)[:200]}): turn the notebook's internet on, or set "
                         "TRAIN_ITEMS to a local JSON file in 04's schema (data/sample/grpo_train.json)") from err
    missing = {"question", "options", "answer_idx"} - set(rows.column_names)
    if missing:
        raise ValueError(f"{name} has no column(s) {sorted(missing)}: 07 needs question, options (letter -> text) and "
                         "answer_idx, as in 04's evaluation file")
    return [{"question": r["question"], "options": r["options"], "answer_idx": r["answer_idx"]} for r in rows]


def without_eval_questions(train_items: list[dict], eval_data: dict) -> list[dict]:
    """The training items minus any whose question is also in the evaluation file (compared without case,
    punctuation or spacing): training on 04's test items would make its verdict meaningless. Says how many went."""
    evaluated = {normalise_question(item["question"]) for items in eval_data.values() for item in items}
    kept = [item for item in train_items if normalise_question(item["question"]) not in evaluated]
    dropped = len(train_items) - len(kept)
    if not kept:
        raise ValueError("every training item's question is in 04's evaluation file: 07 needs other questions "
                         "(TRAIN_ITEMS)")
    print(f"{len(kept)} training items; {dropped} left out because their question is in 04's evaluation file"
          if dropped else f"{len(kept)} training items, none of them in 04's evaluation file")
    return kept


def grpo_rows(items: list[dict], tokenizer, template: str) -> list[dict]:
    """GRPOTrainer's dataset: the prompt rendered by the training template (as 03 and 04 render it), and the
    columns the rewards read."""
    from medical_r1.benchmarks import mc_question
    from src_helpers import render_prompt

    return [{"prompt": render_prompt(tokenizer, mc_question(item), template), "answer_idx": item["answer_idx"],
             "options": json.dumps(item["options"], ensure_ascii=False)} for item in items]
