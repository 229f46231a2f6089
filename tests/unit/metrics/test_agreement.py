"""Kendall tau between MI and a metric, within prompts, on data with known tau."""

from __future__ import annotations

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.metrics.agreement import (
    bootstrap_mean_interval,
    bootstrap_two_level_interval,
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


def test_two_level_interval_widens_where_replicates_differ():
    # 8 replicates whose means are spread over -1..+1 (a known spread), 100 prompts each with
    # little noise: the replicates, not the prompts, decide how sure the mean is.
    rng = np.random.default_rng(0)
    offsets = np.linspace(-1.0, 1.0, 8)
    groups = [offset + rng.normal(0.0, 0.1, size=100) for offset in offsets]
    two = bootstrap_two_level_interval(groups, seed=1)
    one = bootstrap_mean_interval(np.concatenate(groups), seed=1)
    assert two == bootstrap_two_level_interval(groups, seed=1)  # seeded
    assert two[0] < 0.0 < two[1]  # the true mean of the offsets
    assert (two[1] - two[0]) > 5 * (one[1] - one[0])
    # About +-1.96 standard errors of a mean of 8 replicate means (the bootstrap's ddof=0).
    half_width = 1.96 * offsets.std() / np.sqrt(len(offsets))
    assert (two[1] - two[0]) / 2 == pytest.approx(half_width, rel=0.2)


def test_two_level_interval_without_replicate_spread_is_at_most_sqrt2_wider():
    rng = np.random.default_rng(2)
    groups = [rng.normal(0.3, 1.0, size=200) for _ in range(6)]
    two = bootstrap_two_level_interval(groups, n_boot=4000, seed=0)
    one = bootstrap_mean_interval(np.concatenate(groups), n_boot=4000, seed=0)
    ratio = (two[1] - two[0]) / (one[1] - one[0])
    assert 1.0 < ratio < 1.6  # resampling both levels counts the prompts' noise about twice
    assert two[0] < 0.3 < two[1]


def test_two_level_interval_of_a_ratio_of_paired_columns():
    # Rows (mi, random, oracle): MI is halfway between random and the oracle in every replicate.
    rng = np.random.default_rng(3)
    groups = []
    for shift in (0.0, 0.1, -0.1):
        rand = rng.uniform(0.2, 0.4, size=50) + shift
        groups.append(np.column_stack([rand + 0.1, rand, rand + 0.2]))

    def efficiency(m):
        room = m[2] - m[1]
        return (m[0] - m[1]) / room if room > 0 else float("nan")

    low, high = bootstrap_two_level_interval(groups, statistic=efficiency)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # paired: exact every draw
    # No room to select (oracle = random) in every draw: nan, not an interval of nans.
    flat = [np.column_stack([g[:, 1], g[:, 1], g[:, 1]]) for g in groups]
    assert np.isnan(bootstrap_two_level_interval(flat, statistic=efficiency)).all()


def test_two_level_interval_bad_input_is_one_line():
    assert np.isnan(bootstrap_two_level_interval([])).all()
    for groups, words in [([[1.0], []], "replicate 1 has no rows"),
                          ([[[1.0, 2.0]], [[1.0]]], "rows of shape"),
                          ([[[1.0, 2.0]]], "need a statistic")]:
        with pytest.raises(MituneError, match=words) as err:
            bootstrap_two_level_interval(groups)
        assert "\n" not in str(err.value)
