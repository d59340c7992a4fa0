"""Summary statistics for the Base / Base model / Gen / Train comparison."""

from __future__ import annotations

from typing import Any

import numpy as np


def bootstrap_ci(values: np.ndarray, samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(samples, len(values)), replace=True).mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def summarize(values: list[float], samples: int, seed: int) -> dict[str, Any]:
    """mean ± std (population, as numpy's default), n and a 95% bootstrap interval, rounded for metrics."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}
    low, high = bootstrap_ci(arr, samples, seed)
    return {
        "mean": round(float(arr.mean()), 4),
        "std": round(float(arr.std()), 4),
        "n": int(arr.size),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
    }


def spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if np.isnan(rho) else round(float(rho), 4)
