"""Top-k selection by MI (pure)."""

from __future__ import annotations

import torch


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, best first; ties go to the lower index; NaN never wins.

    Example:
        >>> top_k(torch.tensor([0.1, 0.9, float("nan"), 0.9]), 2)
        [1, 3]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    values = torch.nan_to_num(scores.double().cpu(), nan=float("-inf"))
    order = torch.sort(-values, stable=True).indices
    return [int(i) for i in order[:k]]
