"""Agreement between MI and a metric: Kendall tau within prompts, averaged over prompts.

MI-TUNE's claim is about ranking: among the candidates of one prompt, does MI order them as a
metric (HPS, BLIP-VQA) does? So tau is computed within each prompt (scipy's tau-b, which handles
ties) and averaged over prompts; the paper reports 0.68 with HPS and 0.40 with BLIP-VQA. A prompt
whose MI or metric is constant over its candidates has no ranking (tau undefined): it is skipped
and counted. The 95% interval is a percentile bootstrap over prompts (seeded), since prompts,
not candidates, are the independent units. Where prompts are nested in replicates (runs with their
own seeds), `bootstrap_two_level_interval` resamples replicates, then prompts within each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

from mitune_ray.errors import MituneError


@dataclass(frozen=True)
class Agreement:
    """Mean within-prompt Kendall tau and its bootstrap interval."""

    tau: float  # mean over the prompts that have a tau (nan when none has)
    low: float  # bootstrap percentile interval of the mean
    high: float
    n_prompts: int  # prompts that contributed a tau
    n_skipped: int  # prompts skipped: constant MI or metric, or a single candidate
    per_prompt: dict[Hashable, float]  # tau of each contributing prompt


def kendall_within_prompts(
    mi: Sequence[float], metric: Sequence[float], prompt_ids: Sequence[Hashable]
) -> tuple[dict[Hashable, float], int]:
    """Kendall tau-b of (MI, metric) over the candidates of each prompt.

    Returns ({prompt id: tau} for prompts with a defined tau, number of prompts skipped).

    Example:
        >>> kendall_within_prompts([1, 2, 3, 1, 2], [1, 2, 3, 5, 5], ["a", "a", "a", "b", "b"])
        ({'a': 1.0}, 1)
    """
    from scipy.stats import kendalltau

    x, y = np.asarray(mi, dtype=float), np.asarray(metric, dtype=float)
    ids = list(prompt_ids)
    if not len(x) == len(y) == len(ids):
        raise MituneError(
            f"agreement got {len(x)} MI values, {len(y)} metric values and {len(ids)} prompt ids: "
            "pass one of each per candidate"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise MituneError(
            "agreement got a non-finite MI or metric value: drop or re-score those candidates "
            "before computing Kendall tau"
        )
    groups: dict[Hashable, list[int]] = {}
    for i, prompt in enumerate(ids):
        groups.setdefault(prompt, []).append(i)
    taus: dict[Hashable, float] = {}
    skipped = 0
    for prompt, rows in groups.items():
        xs, ys = x[rows], y[rows]
        if len(rows) < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
            skipped += 1
            continue
        taus[prompt] = float(kendalltau(xs, ys, variant="b").statistic)
    return taus, skipped


def bootstrap_mean_interval(
    values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement).

    Example:
        >>> bootstrap_mean_interval([0.5, 0.5, 0.5])
        (0.5, 0.5)
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    if not 0 < level < 1:
        raise MituneError(f"bootstrap level {level} is not in (0, 1): pass e.g. 0.95")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_two_level_interval(
    groups: Sequence[Sequence],
    *,
    statistic: Callable[[np.ndarray], float] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of a mean over replicates of prompts.

    `groups` holds one array per replicate with one row per prompt: a value (e.g. a paired
    per-prompt difference) or a vector of paired values (e.g. several arms' per-prompt rates,
    kept together so that contrasts stay paired). The estimate is `statistic` of the mean over
    replicates of each replicate's mean row (every replicate weighs the same); without a
    statistic, that mean itself (scalar rows). Each bootstrap draw resamples the replicates
    with replacement, then the prompts of every drawn replicate with replacement (a replicate
    drawn twice is resampled twice, independently). Draws whose statistic is not finite (a
    ratio with no room left) are dropped; with fewer than half of them finite, (nan, nan).

    Where replicates differ, the interval widens with their spread, which a bootstrap over the
    pooled prompts ignores. Where they do not, it is conservative: its variance is about
    (between-replicate + 2 x within-replicate / prompts) / replicates, so up to sqrt(2) wider
    than the one-level interval.

    Example:
        >>> bootstrap_two_level_interval([[0.5, 0.5], [0.5, 0.5, 0.5]])
        (0.5, 0.5)
    """
    if not 0 < level < 1:
        raise MituneError(f"bootstrap level {level} is not in (0, 1): pass e.g. 0.95")
    data = [np.asarray(g, dtype=float) for g in groups]
    if not data:
        return float("nan"), float("nan")
    for i, g in enumerate(data):
        if len(g) == 0:
            raise MituneError(f"two-level bootstrap: replicate {i} has no rows; pass only "
                              "replicates with at least one prompt")
        if g.shape[1:] != data[0].shape[1:]:
            raise MituneError(f"two-level bootstrap: replicate {i} has rows of shape {g.shape[1:]}, "
                              f"replicate 0 {data[0].shape[1:]}; pass the same paired values "
                              "for every prompt")
    if statistic is None and data[0].ndim > 1:
        raise MituneError(f"two-level bootstrap: rows of {data[0].shape[1]} paired values need a "
                          "statistic that makes one number of them (e.g. a contrast)")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(n_boot, len(data)))
    total = np.zeros((n_boot, *data[0].shape[1:]))
    for slot in range(len(data)):
        for g, rows in enumerate(data):
            drawn = picks[:, slot] == g
            count = int(drawn.sum())
            if count:
                total[drawn] += rows[rng.integers(0, len(rows), size=(count, len(rows)))].mean(axis=1)
    means = total / len(data)
    values = means if statistic is None else np.array([statistic(m) for m in means], dtype=float)
    values = values[np.isfinite(values)]
    if values.size < n_boot / 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def kendall_agreement(
    mi: Sequence[float],
    metric: Sequence[float],
    prompt_ids: Sequence[Hashable],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Agreement:
    """Mean within-prompt Kendall tau between MI and a metric, with a bootstrap interval.

    Args:
        mi, metric: one value per candidate.
        prompt_ids: the prompt (any hashable id) each candidate belongs to.
        n_boot, level, seed: the bootstrap over prompts.

    Example:
        >>> a = kendall_agreement([1, 2, 3, 3, 2, 1], [10, 20, 30, 1, 2, 3], [0, 0, 0, 1, 1, 1])
        >>> a.tau, a.n_prompts, a.n_skipped
        (0.0, 2, 0)
    """
    taus, skipped = kendall_within_prompts(mi, metric, prompt_ids)
    values = list(taus.values())
    low, high = bootstrap_mean_interval(values, n_boot=n_boot, level=level, seed=seed)
    tau = float(np.mean(values)) if values else float("nan")
    return Agreement(tau, low, high, len(values), skipped, taus)
