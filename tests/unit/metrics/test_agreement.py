"""Kendall tau between MI and a metric, within prompts, on data with known tau."""

from __future__ import annotations

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.metrics.agreement import (
    bootstrap_mean_interval,
    kendall_agreement,
    kendall_within_prompts,
)


def test_concordant_and_reversed_rankings():
    mi = [1, 2, 3, 4, 10, 20, 30, 40]
    ids = ["p"] * 4 + ["q"] * 4
    same = kendall_agreement(mi, [5, 6, 7, 8, 0.1, 0.2, 0.3, 0.4], ids)
    assert (same.tau, same.low, same.high, same.n_prompts, same.n_skipped) == (1.0, 1.0, 1.0, 2, 0)
    reversed_ = kendall_agreement(mi, [8, 7, 6, 5, 4, 3, 2, 1], ids)
    assert reversed_.tau == -1.0 and reversed_.per_prompt == {"p": -1.0, "q": -1.0}


def test_hand_computed_tau_b():
    # 4 candidates, no ties, 6 pairs; tau = (concordant - discordant) / 6.
    taus, skipped = kendall_within_prompts([1, 2, 3, 4], [1, 3, 2, 0.5], [0, 0, 0, 0])
    assert skipped == 0
    # pairs: (1,2)+ (1,3)+ (1,4)- (2,3)- (2,4)- (3,4)-  -> 2 concordant, 4 discordant
    assert taus[0] == pytest.approx((2 - 4) / 6)
    # A tie in the metric: tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = (2 - 0) / sqrt(3 * 2).
    taus, _ = kendall_within_prompts([1, 2, 3], [1, 2, 2], ["x"] * 3)
    assert taus["x"] == pytest.approx(2 / np.sqrt(6))


def test_mean_is_over_prompts_and_constant_prompts_are_skipped():
    mi = [1, 2, 3, 1, 2, 3, 5, 5, 5, 1, 2, 3, 7]
    metric = [1, 2, 3, 3, 2, 1, 1, 2, 3, 4, 4, 4, 1]
    ids = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3 + ["e"]
    result = kendall_agreement(mi, metric, ids)
    # a: +1, b: -1; c has constant MI, d a constant metric, e a single candidate: skipped.
    assert result.per_prompt == {"a": 1.0, "b": -1.0}
    assert (result.tau, result.n_prompts, result.n_skipped) == (0.0, 2, 3)
    assert -1.0 <= result.low <= 0.0 <= result.high <= 1.0


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(1)
    values = rng.uniform(-0.2, 0.9, size=200)
    low, high = bootstrap_mean_interval(values, seed=3)
    assert (low, high) == bootstrap_mean_interval(values, seed=3)
    assert low < values.mean() < high
    # The percentile interval of a mean is about +-1.96 standard errors wide.
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert np.isnan(bootstrap_mean_interval([])).all()


def test_no_prompt_with_a_ranking_gives_nan():
    result = kendall_agreement([1, 1], [2, 3], [0, 0])
    assert np.isnan(result.tau) and result.n_prompts == 0 and result.n_skipped == 1


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(MituneError, match="3 MI values, 2 metric values"):
        kendall_agreement([1, 2, 3], [1, 2], [0, 0, 0])
    with pytest.raises(MituneError, match="non-finite"):
        kendall_agreement([1, float("nan")], [1, 2], [0, 0])
    with pytest.raises(MituneError, match="level"):
        bootstrap_mean_interval([1.0, 2.0], level=95)
