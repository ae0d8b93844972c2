"""An optional blind LLM judge (any OpenAI-compatible chat endpoint), off by default.
"""
from __future__ import annotations

import json
import os
import random
import re

from medical_r1.benchmarks import wilson_interval
from medical_r1.credentials import resolve_secret
from medical_r1.params import check_judge_base_url
from medical_r1.runtime import is_main_process

JUDGE_PROMPT = """You are grading two answers to a medical question against a reference answer.
Judge medical correctness first, then completeness and clarity. Ignore length and style otherwise.

Question:
{question}

Reference answer:
{reference}

Answer 1:
{first}

Answer 2:
{second}

Reply with JSON only: {{"better": 1, 2 or 0 for a tie, "reason": "one sentence"}}"""


def parse_judgement(text: str) -> int | None:
    """1, 2 or 0 (tie) from the judge's reply; None when the reply holds no such verdict."""
    match = re.search(r'"better"\s*:\s*"?([012])', text or "")
    return int(match.group(1)) if match else None


def post_json(url: str, body: dict, headers: dict, timeout: float = 120) -> dict:
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the user's own endpoint)
        return json.loads(response.read().decode("utf-8"))


def judge_answers(pairs: list[dict], model: str, base_url: str, api_key: str, seed: int, post=post_json) -> dict:
    """Ask the judge which of two answers is better, blind: the order is drawn at random per question and
    neither the models' names nor which one was fine-tuned appear in the prompt. Unparseable replies and
    failed requests are counted, never guessed."""
    rng = random.Random(seed)
    decisions = []
    for pair in pairs:
        tuned_first = rng.random() < 0.5
        first, second = (pair["tuned"], pair["base"]) if tuned_first else (pair["base"], pair["tuned"])
        prompt = JUDGE_PROMPT.format(question=pair["question"], reference=pair["reference"],
                                     first=first or "(no answer)", second=second or "(no answer)")
        body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        try:
            reply = post(base_url.rstrip("/") + "/chat/completions", body, {"Authorization": f"Bearer {api_key}"})
            text = reply["choices"][0]["message"]["content"]
        except Exception as err:  # one failed request should not lose the others
            text, error = "", f"{type(err).__name__}"
        else:
            error = None
        better = parse_judgement(text)
        winner = (None if better is None else "tie" if better == 0
                  else "tuned" if (better == 1) == tuned_first else "base")
        decisions.append({"question": pair["question"], "tuned_shown_first": tuned_first, "better": better,
                          "winner": winner, "error": error})
    counts = {w: sum(d["winner"] == w for d in decisions) for w in ("tuned", "base", "tie")}
    decided = counts["tuned"] + counts["base"]
    low, high = wilson_interval(counts["tuned"], decided) if decided else (None, None)
    return {"model": model, "items": len(decisions), "tuned_wins": counts["tuned"], "base_wins": counts["base"],
            "ties": counts["tie"], "no_verdict": sum(d["winner"] is None for d in decisions),
            "tuned_win_rate": counts["tuned"] / decided if decided else None, "tuned_win_interval": [low, high],
            "decisions": decisions}


def run_judge(pairs: list[dict], model: str, base_url: str, seed: int, environ=os.environ, post=post_json) -> dict:
    """The judge when JUDGE_MODEL is set and a JUDGE_API_KEY secret exists; otherwise why it did not run."""
    if not model:
        return {"skipped": "JUDGE_MODEL is empty: the LLM judge is off (the default)"}
    if not is_main_process():  # one process asks (and pays); it alone writes what the judge said
        return {"skipped": "the judge runs in the first process only"}
    check_judge_base_url(base_url)
    api_key, _ = resolve_secret("JUDGE_API_KEY", environ)
    if not api_key:
        return {"skipped": f"JUDGE_MODEL is {model!r} but no JUDGE_API_KEY secret is set: the judge did not run"}
    return judge_answers(pairs, model, base_url, api_key, seed, post)


def judge_summary(judge: dict) -> str:
    if "skipped" in judge:
        return judge["skipped"]
    rate = judge["tuned_win_rate"]
    interval = judge["tuned_win_interval"]
    share = (f"the tuned answer won {rate:.0%} of the decided pairs (95% interval {interval[0]:.0%}-{interval[1]:.0%})"
             if rate is not None else "no pair was decided")
    return (f"blind judge {judge['model']}: tuned {judge['tuned_wins']}, base {judge['base_wins']}, ties "
            f"{judge['ties']}, no verdict {judge['no_verdict']} of {judge['items']}; {share}")
