"""Top-k selection and the pool check (kept vs random vs perfect selection)."""

import math

import pytest
import torch

from mitune_ray.select import PoolCheck, filtered_draw, pool_check, selection_words, top_k


def test_top_k_orders_best_first_and_never_picks_nan():
    assert top_k(torch.tensor([0.3, float("nan"), 0.9, 0.3]), 3) == [2, 0, 3]
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(torch.tensor([1.0]), 0)


def test_pool_check_compares_kept_with_the_pool_mean_and_the_best_possible():
    nan = float("nan")
    check = pool_check([
        ([1.0, 0.0, 0.0, 0.0], [0]),  # kept the one correct candidate
        ([0.0, 1.0, nan, 1.0], [0]),  # kept a wrong one; the pruned candidate does not count
        ([0.0, 0.0], [1]),  # nothing correct to keep
        ([1.0, 1.0], []),  # nothing kept: left out
    ])
    assert check == PoolCheck(kept=1 / 3, pool=(0.25 + 2 / 3 + 0.0) / 3, best=2 / 3, prompts=3)
    assert "kept images correct 33% vs 31% for a random candidate" in check.line()
    # keep = 2: the best possible is the mean of the two best candidates.
    assert pool_check([([1.0, 0.0, 1.0, 0.0], [1, 3])]).best == 1.0
    assert pool_check([([0.0, 1.0, 0.0], [0, 2])]).best == 0.5
    assert pool_check([]) is None and pool_check([([nan, nan], [0])]) is None
    assert all(math.isfinite(v) for v in (check.kept, check.pool, check.best))


def test_the_filter_drops_the_lowest_mi_share_and_keeps_the_draw_elsewhere():
    mi = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.0, 6.0, 7.0])
    draw = torch.arange(8, dtype=torch.float64) / 10
    out = filtered_draw(mi, draw, drop=0.25, keep=2)  # 0.25 x 8: the two lowest MI (0.0, 1.0)
    assert [i for i in range(8) if math.isnan(out[i])] == [1, 5]
    assert all(out[i] == draw[i] for i in range(8) if i not in (1, 5))
    # Rounded down (0.3 x 8 = 2.4: two), also where the product is a hair under an integer.
    assert [i for i, v in enumerate(filtered_draw(mi, draw, drop=0.3, keep=1)) if math.isnan(v)] \
        == [1, 5]
    hundred = filtered_draw(torch.arange(100.0), torch.zeros(100), drop=0.29, keep=1)
    assert int(hundred.isnan().sum()) == 29  # 0.29 x 100 = 28.999... in floats
    # Ties in MI drop the higher index first (top_k's order, reversed).
    tied = filtered_draw(torch.tensor([1.0, 1.0, 2.0]), torch.zeros(3), drop=0.5, keep=1)
    assert math.isnan(tied[1]) and not math.isnan(tied[0])


def test_pruned_candidates_count_towards_the_dropped_share():
    nan = float("nan")
    mi = torch.tensor([5.0, nan, 3.0, nan, 4.0, 0.0, 6.0, 7.0])  # two pruned of eight
    draw = torch.full((8,), 0.5, dtype=torch.float64)
    # drop 0.5 of 8 = 4: the two pruned and the two lowest finished (MI 0.0 and 3.0).
    out = filtered_draw(mi, draw, drop=0.5, keep=2)
    assert [i for i in range(8) if math.isnan(out[i])] == [1, 2, 3, 5]
    # drop 0.25 of 8 = 2: the pruned ones are that share already; no finished one is dropped.
    out = filtered_draw(mi, draw, drop=0.25, keep=2)
    assert [i for i in range(8) if math.isnan(out[i])] == [1, 3]


def test_the_filter_never_leaves_fewer_than_keep_and_drop_zero_is_random():
    mi = torch.tensor([3.0, 1.0, 2.0, 0.0])
    draw = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    # 0.9 x 4 = 3 would leave one of the two to keep: only two are dropped.
    out = filtered_draw(mi, draw, drop=0.9, keep=2)
    assert top_k(out, 2) == [0, 2]
    assert [math.isnan(v) for v in out.tolist()] == [False, True, False, True]
    assert filtered_draw(mi, draw, drop=0.0, keep=1).tolist() == draw.tolist()
    # The kept ones follow the draw among the survivors, not the MI.
    assert top_k(filtered_draw(mi, torch.tensor([0.1, 0.2, 0.9, 0.8], dtype=torch.float64),
                               drop=0.5, keep=1), 1) == [2]


def test_each_selection_in_words():
    assert selection_words("mi", 2, 0.25) == "the best 2 by MI"
    assert selection_words("random", 1, 0.25) == "1 at random"
    assert selection_words("checker", 2, 0.25) == "the best 2 by checker"
    assert selection_words("mi_filter", 2, 0.5) == "2 at random among all but the lowest 50% by MI"
