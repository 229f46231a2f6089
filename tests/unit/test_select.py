"""Top-k selection and the pool check (kept vs random vs perfect selection)."""

import math

import pytest
import torch

from mitune_ray.select import PoolCheck, pool_check, top_k


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
