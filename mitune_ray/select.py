"""Top-k selection by MI, MI as a filter, and how good a selection was against its pool (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# generate.select_by values that need no scorer (any other is a registered selector, e.g.
# ShapesWorld's checker): MI, MI as a filter, a seeded random draw.
BUILTIN_SELECTORS = ("mi", "mi_filter", "random")


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


def filtered_draw(mi: torch.Tensor, draw: torch.Tensor, *, drop: float, keep: int) -> torch.Tensor:
    """`generate.select_by=mi_filter`: MI as a filter, not a picker. A prompt's random draw
    (`draw`, one uniform score per candidate) without its lowest-MI candidates (NaN): the share
    `drop` of all of them (rounded down), the unfinished ones (NaN MI: pruned, the lowest by the
    pruning's own ranking) counted first, never so many that fewer than `keep` remain. The kept
    ones are then the draw's top `keep` among the rest.

    Example:
        >>> filtered_draw(torch.tensor([3.0, 0.0, 2.0, 1.0]), torch.tensor([0.5, 0.9, 0.25, 0.75]),
        ...               drop=0.5, keep=1).tolist()
        [0.5, nan, 0.25, nan]
    """
    finished = int((~mi.isnan()).sum())
    out = torch.where(mi.isnan(), torch.full_like(draw, float("nan"), dtype=torch.float64),
                      draw.double())
    share = math.floor(drop * len(mi) + 1e-9) - (len(mi) - finished)
    n_drop = min(max(share, 0), max(finished - keep, 0))
    if n_drop:
        worst = top_k(mi, finished)[finished - n_drop:]  # best first: the last n_drop
        out[worst] = float("nan")
    return out


def selection_words(select_by: str, keep: int, filter_drop: float) -> str:
    """Which of a prompt's candidates a round keeps, in words (`generate.select_by`, `keep`,
    `filter_drop`).

    Example:
        >>> selection_words("mi_filter", 2, 0.25)
        '2 at random among all but the lowest 25% by MI'
    """
    if select_by == "random":
        return f"{keep} at random"
    if select_by == "mi_filter":
        return f"{keep} at random among all but the lowest {filter_drop:.0%} by MI"
    return f"the best {keep} by {'MI' if select_by == 'mi' else select_by}"


@dataclass(frozen=True)
class PoolCheck:
    """Does selection help? Means over prompts, by `generate.pool_metric`: of the kept candidates
    (`kept`), of all candidates (`pool`: what a random pick keeps on average), and of each
    prompt's best candidate (`best`: what a perfect selector keeps)."""

    kept: float
    pool: float
    best: float
    prompts: int

    def line(self) -> str:
        return (f"kept images correct {self.kept:.0%} vs {self.pool:.0%} for a random candidate "
                f"(a perfect selector: {self.best:.0%}; {self.prompts} prompts)")


def pool_check(rows: list[tuple[list[float], list[int]]]) -> PoolCheck | None:
    """`PoolCheck` from (every candidate's score, kept indices) per prompt; None without scores.

    Example:
        >>> pool_check([([1.0, 0.0], [0]), ([0.0, 0.0, 1.0, 1.0], [1])]).line()
        'kept images correct 50% vs 50% for a random candidate (a perfect selector: 100%; 2 prompts)'
    """
    kept, pool, best = [], [], []
    for scores, chosen in rows:
        values = np.array(scores, dtype=float)
        finished = values[~np.isnan(values)]
        if not len(finished) or not chosen:
            continue
        kept.append(float(np.mean([values[i] for i in chosen])))
        pool.append(float(finished.mean()))
        best.append(float(np.sort(finished)[::-1][:len(chosen)].mean()))
    if not kept:
        return None
    return PoolCheck(float(np.mean(kept)), float(np.mean(pool)), float(np.mean(best)), len(kept))
