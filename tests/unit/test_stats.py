import math

import numpy as np
import pytest

from genz_speak.judges.offline import fluency
from genz_speak.reports.stats import bootstrap_ci, spearman, summarize


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


def test_bootstrap_of_a_constant_is_the_constant() -> None:
    assert bootstrap_ci(np.array([0.3] * 7), 200, 1) == pytest.approx((0.3, 0.3))


def test_bootstrap_interval_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.random(10), 2000, 0)
    large = bootstrap_ci(rng.random(1000), 2000, 0)
    assert large[1] - large[0] < (small[1] - small[0]) / 3


def test_spearman_by_hand() -> None:
    # ranks a: 1 2 3 4 5, ranks b: 2 1 4 3 5 -> d^2 = 1+1+1+1+0 = 4; rho = 1 - 6*4 / (5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == 0.8
    assert spearman([1, 2, None, 4], [1, 2, 3, 4]) == 1.0
    assert spearman([1, 2], [1, 2]) is None


def test_fluency_mapping() -> None:
    assert fluency(1.0, 1000.0) == 1.0
    assert fluency(1000.0, 1000.0) == 0.0
    assert fluency(10.0, 1000.0) == pytest.approx(2 / 3)
    assert fluency(1e9, 1000.0) == 0.0


def test_bootstrap_interval_by_hand() -> None:
    # Resampling [0, 1] twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles are exactly 0 and 1.
    assert bootstrap_ci(np.array([0.0, 1.0]), 4000, 0) == (0.0, 1.0)
    s = summarize([0.0, 1.0], 4000, 0)
    assert (s["mean"], s["std"], s["n"], s["ci_low"], s["ci_high"]) == (0.5, 0.5, 2, 0.0, 1.0)
