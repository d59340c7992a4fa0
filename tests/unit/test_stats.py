import math

import numpy as np
import pytest

from genz_speak.reports.stats import paired_difference, spearman, summarize


def test_summarize_matches_hand_computation() -> None:
    vals = [0.0, 0.5, 1.0, 0.5]
    s = summarize(vals, samples=500, seed=0)
    assert s["mean"] == 0.5
    # population std: sqrt(((.5)^2 + 0 + (.5)^2 + 0) / 4) = sqrt(0.125)
    assert s["std"] == round(math.sqrt(0.125), 4)
    assert s["n"] == 4
    assert 0.0 <= s["ci_low"] <= 0.5 <= s["ci_high"] <= 1.0


def test_summarize_ignores_failed_judgements_and_handles_empty() -> None:
    assert summarize([None, 1.0, 0.0], 100, 0)["n"] == 2
    assert summarize([None], 100, 0) == {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}


def test_interval_of_a_constant_is_the_constant() -> None:
    s = summarize([0.3] * 7, 200, 1)
    assert (s["ci_low"], s["ci_high"]) == (0.3, 0.3)


def test_interval_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small = summarize(list(rng.random(10)), 2000, 0)
    large = summarize(list(rng.random(1000)), 2000, 0)
    assert large["ci_high"] - large["ci_low"] < (small["ci_high"] - small["ci_low"]) / 3


def test_interval_by_hand() -> None:
    # Resampling [0, 1] twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles are exactly 0 and 1.
    s = summarize([0.0, 1.0], 4000, 0)
    assert (s["mean"], s["std"], s["n"], s["ci_low"], s["ci_high"]) == (0.5, 0.5, 2, 0.0, 1.0)


def test_paired_difference_keeps_pairs_together() -> None:
    # Every question improves by exactly 0.2, however different the questions are from each other: a paired
    # interval is the point 0.2, where an unpaired comparison of the two means would be wide.
    base = [0.0, 0.3, 0.5, 0.7, 0.1, 0.6]
    gen = [b + 0.2 for b in base]
    d = paired_difference(gen, base, 2000, 0)
    assert d == {"mean": 0.2, "n": 6, "ci_low": 0.2, "ci_high": 0.2}
    wide = summarize(gen, 2000, 0)
    assert wide["ci_high"] - wide["ci_low"] > 0.2


def test_paired_difference_skips_unscored_pairs_and_brackets_the_mean() -> None:
    d = paired_difference([1.0, None, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 0.0, None], 2000, 0)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.5, abs=1e-4)
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert paired_difference([None], [1.0], 100, 0) == {"mean": None, "n": 0, "ci_low": None, "ci_high": None}


def test_spearman_by_hand() -> None:
    # ranks a: 1 2 3 4 5, ranks b: 2 1 4 3 5 -> d^2 = 1+1+1+1+0 = 4; rho = 1 - 6*4 / (5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == 0.8
    assert spearman([1, 2, None, 4], [1, 2, 3, 4]) == 1.0
    assert spearman([1, 2], [1, 2]) is None
