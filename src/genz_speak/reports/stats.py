"""Summary statistics for the evaluation: per-group means with bootstrap intervals, and the paired
difference between two models' scores on the same questions (`scipy.stats.bootstrap`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _interval(data: tuple[np.ndarray, ...], statistic: Any, samples: int, seed: int, paired: bool) -> tuple:
    from scipy.stats import bootstrap

    if len(data[0]) < 2 or all(np.ptp(d) == 0 for d in data):  # nothing to resample: the point itself
        value = float(statistic(*data, axis=-1))
        return value, value
    # Percentile intervals: BCa breaks down on the near-constant samples small groups often give.
    res = bootstrap(
        data,
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=samples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def summarize(values: list[float | None], samples: int, seed: int) -> dict[str, Any]:
    """mean ± std (population), n and a 95% bootstrap interval of the mean; None values (failed
    judgements) are left out."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}
    low, high = _interval((arr,), _mean, samples, seed, paired=False)
    return {
        "mean": round(float(arr.mean()), 4),
        "std": round(float(arr.std()), 4),
        "n": int(arr.size),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
    }


def paired_difference(
    a: list[float | None], b: list[float | None], samples: int, seed: int
) -> dict[str, Any]:
    """The mean of a - b over the positions where both are scored, with a 95% paired bootstrap interval
    (questions resampled together, so each question's difference stays intact)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return {"mean": None, "n": 0, "ci_low": None, "ci_high": None}
    x, y = (np.asarray(v, dtype=float) for v in zip(*pairs, strict=True))
    low, high = _interval((x, y), _mean_difference, samples, seed, paired=True)
    return {
        "mean": round(float((x - y).mean()), 4),
        "n": len(pairs),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
    }


def spearman(a: list[float | None], b: list[float | None]) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if np.isnan(rho) else round(float(rho), 4)
