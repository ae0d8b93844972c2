"""The anytime-valid intervals 04 stops on (medical_r1.sequential): the port against confseq's own numbers, and a
simulation of 04's stopping rule on paired binary answers (docs/evaluation.md quotes the figures it prints)."""
import json
import pathlib

import numpy as np
import pytest

from medical_r1 import sequential
from medical_r1.benchmarks import row_alphas

REFERENCE = json.loads((pathlib.Path(__file__).parent / "fixtures" / "confseq_predmix.json").read_text())


@pytest.mark.parametrize("case", REFERENCE["paired"], ids=lambda c: f"alpha={c['alpha']}")
def test_the_port_gives_confseqs_numbers_for_paired_differences(case):
    x = (1 + np.array(case["d"], dtype=float)) / 2
    lower, upper = sequential.confidence_sequence(x, case["alpha"])
    assert np.allclose(lower, case["lower"], atol=1e-9) and np.allclose(upper, case["upper"], atol=1e-9)
    lo, hi = sequential.difference_interval([d < 0 for d in case["d"]], [d > 0 for d in case["d"]], case["alpha"])
    assert (lo, hi) == pytest.approx((2 * case["lower"][-1] - 1, 2 * case["upper"][-1] - 1), abs=1e-9)


def test_the_port_gives_confseqs_numbers_without_the_running_intersection():
    case = REFERENCE["uniform"]
    lower, upper = sequential.confidence_sequence(np.array(case["x"]), case["alpha"], running_intersection=False)
    assert np.allclose(lower, case["lower"], atol=1e-9) and np.allclose(upper, case["upper"], atol=1e-9)
    # the reference is not trivially wide: it narrows from [0, 1] to well inside it
    assert case["upper"][-1] - case["lower"][-1] < 0.6


# The simulation: five benchmarks interleaved item by item (04's order), a look after every round of 32 items (a T4's
# batch), rows at 04's alphas. Paired answers: the models answer 30% of items differently; a true change of delta
# moves delta of them from "only the first right" to "only the second right".
ROUND, BENCHMARKS, DISAGREE = 32, 5, 0.3
# The T4 rate 04's default budget rests on (docs/evaluation.md): 150 items answered by both models in 60 minutes.
ITEMS_PER_MINUTE = 150 / 60


def paired_runs(runs: int, items: int, delta: float, seed: int) -> np.ndarray:
    draw = np.random.default_rng(seed).uniform(size=(runs, items))
    only_second, only_first = (DISAGREE + delta) / 2, (DISAGREE - delta) / 2
    return np.where(draw < only_second, 1.0, np.where(draw < only_second + only_first, -1.0, 0.0))


def looks(items: int) -> np.ndarray:
    return np.arange(ROUND, items + 1, ROUND) - 1  # the index of the last item of each round


def anytime_claims(d: np.ndarray, headline_alpha: float, row_alpha: float) -> np.ndarray:
    """Per run: at some look, did the headline or any benchmark row's confidence sequence exclude 0?"""
    lo, hi = sequential.difference_sequence(d, headline_alpha)
    claimed = ((lo > 0) | (hi < 0))[:, looks(d.shape[1])].any(axis=1)
    for b in range(BENCHMARKS):
        rows = d[:, b::BENCHMARKS]
        lo, hi = sequential.difference_sequence(rows, row_alpha)
        seen = np.unique((looks(d.shape[1]) - b) // BENCHMARKS)  # this benchmark's items at each look
        seen = seen[seen >= 0]
        claimed |= ((lo > 0) | (hi < 0))[:, seen].any(axis=1)
    return claimed


def fixed_n_claims(d: np.ndarray, headline_alpha: float, row_alpha: float) -> np.ndarray:
    """The same looks, each read as if it were the only one: a paired z-test (McNemar's, normal form) per row."""
    from statistics import NormalDist

    def claims(rows, alpha, at):
        z = NormalDist().inv_cdf(1 - alpha / 2)
        n_diff = np.cumsum(rows != 0, axis=1)[:, at]
        total = np.cumsum(rows, axis=1)[:, at]
        return (np.abs(total) > z * np.sqrt(np.maximum(n_diff, 1))).any(axis=1)

    claimed = claims(d, headline_alpha, looks(d.shape[1]))
    for b in range(BENCHMARKS):
        seen = np.unique((looks(d.shape[1]) - b) // BENCHMARKS)
        claimed |= claims(d[:, b::BENCHMARKS], row_alpha, seen[seen >= 0])
    return claimed


def test_with_no_true_change_looking_after_every_round_claims_a_change_rarely():
    """2,000 runs of 1,600 items (50 rounds, about 11 hours on a T4): any row claiming a change at any look."""
    alphas = row_alphas(BENCHMARKS, 0.05)
    d = paired_runs(2000, 1600, 0.0, seed=1)
    anytime = anytime_claims(d, alphas["all"], alphas["benchmark"]).mean()
    fixed = fixed_n_claims(d, alphas["all"], alphas["benchmark"]).mean()
    print(f"\nno true change, 2000 runs, 50 looks: anytime-valid {100 * anytime:.1f}%, "
          f"fixed-n tests {100 * fixed:.1f}%")
    assert anytime <= 0.05
    assert fixed > 2 * 0.05  # the same looks read as fixed-n tests claim far more often


@pytest.mark.parametrize("delta", [0.20, 0.10, 0.05])
def test_with_a_true_change_the_headline_is_decided_and_how_soon(delta):
    """The items (per model) until the headline is decided, and the minutes at the T4 rate, against today's 150."""
    items = 6400
    d = paired_runs(400, items, delta, seed=2)
    lo, hi = sequential.difference_sequence(d, row_alphas(BENCHMARKS, 0.05)["all"])
    at = looks(items)
    decided = (lo > 0)[:, at]
    assert not (hi < 0)[:, at].any()  # never the wrong way
    first = np.where(decided.any(axis=1), at[decided.argmax(axis=1)] + 1, np.inf)
    median = float(np.median(first))
    print(f"\ntrue change {100 * delta:.0f} points: median {median:.0f} items until decided "
          f"({median / ITEMS_PER_MINUTE:.0f} minutes on a T4), decided within 150 items in "
          f"{100 * np.mean(first <= 150):.0f}% of runs")
    assert np.isfinite(median)
    assert median <= {0.20: 400, 0.10: 1200, 0.05: 4800}[delta]
