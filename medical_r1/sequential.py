"""Anytime-valid intervals for paired differences of accuracy: 04 looks after every round and may stop at any of
them, so its interval must hold at every look at once, not at one fixed number of items.

A confidence sequence (Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences";
Waudby-Smith & Ramdas 2023, "Estimating means of bounded random variables by betting") is a sequence of intervals
that all cover the true mean, with chance 1 - alpha, however many times it is looked at and whenever one stops.
This is the predictable-mixture empirical-Bernstein one of Waudby-Smith & Ramdas (their Theorem 2), ported line
by line from the `confseq` library's `predmix_empbern_twosided_cs` (github.com/gostevehoward/confseq, version
0.0.11, src/confseq/predmix.py and betting_strategies.py). confseq is not a dependency: it builds C++ extensions
on install, which Kaggle and Colab would compile for minutes; tests/test_sequential.py holds numbers the library
itself computed and checks this port against them to 1e-9.

A paired difference (the second model right, minus the first model right) lies in [-1, 1]; (1 + d) / 2 lies in
[0, 1], where the confidence sequence is built, and its bounds map back.
"""
from __future__ import annotations

import numpy as np


def _lambdas(x: np.ndarray, alpha: float, truncation: float) -> np.ndarray:
    """confseq's lambda_predmix_eb: bets that shrink like 1/sqrt(t log t), scaled by a regularised running variance
    that only uses the observations before each one (predictable), capped at `truncation`."""
    t = np.arange(1, x.shape[-1] + 1)
    mu_hat = np.minimum((0.5 + np.cumsum(x, axis=-1)) / (t + 1), 1)
    sigma2 = (0.25 + np.cumsum((x - mu_hat) ** 2, axis=-1)) / (t + 1)
    sigma2_before = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), sigma2[..., :-1]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lambdas = np.sqrt(2 * np.log(1 / alpha) / (t * np.log(1 + t) * sigma2_before))
    lambdas[np.isnan(lambdas)] = 0
    return np.minimum(truncation, lambdas)


def lower_sequence(x: np.ndarray, alpha: float, truncation: float = 0.5) -> np.ndarray:
    """confseq's predmix_empbern_lower_cs (without sampling from a finite population): at every t, a lower bound
    on the mean of x[..., :t] in [0, 1] that holds for all t at once with chance 1 - alpha."""
    t = np.arange(1, x.shape[-1] + 1)
    mu_hat = np.cumsum(x, axis=-1) / t
    mu_hat_before = np.concatenate([np.zeros(x.shape[:-1] + (1,)), mu_hat[..., :-1]], axis=-1)
    v = (x - mu_hat_before) ** 2
    lambdas = _lambdas(x, alpha, truncation)
    psi = -np.log(1 - lambdas) - lambdas
    weight = np.cumsum(lambdas, axis=-1)
    margin = (np.log(1 / alpha) + np.cumsum(v * psi, axis=-1)) / weight
    return np.maximum(np.cumsum(lambdas * x, axis=-1) / weight - margin, 0)


def confidence_sequence(x, alpha: float, running_intersection: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """confseq's predmix_empbern_twosided_cs: lower and upper bounds on the mean of x (in [0, 1], along the last
    axis) after each observation, all holding at once with chance 1 - alpha (alpha / 2 each side). The running
    intersection (the tightest bounds so far) is a confidence sequence too, and never widens."""
    x = np.asarray(x, dtype=float)
    lower = lower_sequence(x, alpha / 2)
    upper = 1 - lower_sequence(1 - x, alpha / 2)
    if running_intersection:
        lower, upper = np.maximum.accumulate(lower, axis=-1), np.minimum.accumulate(upper, axis=-1)
    return lower, upper


def paired_differences(before: list[bool], after: list[bool]) -> np.ndarray:
    """after right minus before right, item by item: -1, 0 or 1."""
    return np.asarray(after, dtype=float) - np.asarray(before, dtype=float)


def difference_sequence(differences, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the mean paired difference (in [-1, 1]) after each item, valid at every item at once."""
    lower, upper = confidence_sequence((1 + np.asarray(differences, dtype=float)) / 2, alpha)
    return 2 * lower - 1, 2 * upper - 1


def difference_interval(before: list[bool], after: list[bool], alpha: float) -> tuple[float, float]:
    """The confidence sequence's interval for accuracy(after) - accuracy(before) at the last item so far; (-1, 1)
    before any item. Where it excludes 0 the change is decided, whenever the looking stopped."""
    if not before:
        return -1.0, 1.0
    lower, upper = difference_sequence(paired_differences(before, after), alpha)
    return float(lower[-1]), float(upper[-1])


def largest_open_change(interval: tuple[float, float]) -> float:
    """The largest change, either way, that the interval still allows (a fraction: 1 where it spans every
    difference, as it does for the first few items)."""
    return max(-interval[0], interval[1])


def decided(interval: tuple[float, float]) -> int:
    """+1 where the interval lies above 0 (helped), -1 below (hurt), 0 where it holds 0 (not decided)."""
    return 1 if interval[0] > 0 else -1 if interval[1] < 0 else 0
