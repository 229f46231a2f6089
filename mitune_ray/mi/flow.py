"""RFMI: point-wise MI for rectified-flow models (SD3.5).

In the paper's convention (t = 0 noise, t = 1 data)

    I(x; y) = int_0^1 E[ t / (1 - t) * u_t(x_t|y) . (u_t(x_t|y) - u_t(x_t)) ] dt.

Diffusers' SD3 schedulers use sigma = 1 - t (sigma = 1 is noise) and a velocity v = noise - data
(= -u), so the weight is `(1 - sigma) / sigma` and `u.(u_y - u) = v.(v_y - v)`. SD3.5 samples on a
shifted, non-uniform sigma grid, so each step is weighted by its own interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mitune_ray.mi.estimators import LevelTable

REDUCTIONS = ("integral", "mean")


def flow_trajectory_weights(
    sigmas: Sequence[float], *, sigma_min: float = 0.05, reduction: str = "integral"
) -> list[float]:
    """Per-step weights for a flow sampler whose step i evaluates the velocity at `sigmas[i]`.

    `sigmas` has one more entry than there are steps (the final 0 the scheduler appends).
    `reduction="integral"` gives step i the exact integral of `(1 - s) / s` over the sigmas nearer
    to it than to its neighbours (midpoint rule; the first and last kept steps extend to 1 and to
    `sigma_min`): on SD3.5's shifted grid this is within 2% of the exact integral at 28 steps,
    where a left Riemann sum is 19% off. `"mean"` is the reference's plain average over the kept
    steps. Steps with sigma <= sigma_min get weight 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not one of {REDUCTIONS}")
    if not 0.0 < sigma_min < 1.0:
        # The weight (1 - s) / s is not integrable at s = 0: a truncation is part of the estimator.
        raise ValueError(f"sigma_min must be in (0, 1), got {sigma_min}")
    s = [float(x) for x in sigmas]
    kept = [i for i in range(len(s) - 1) if s[i] > sigma_min]
    weights = [0.0] * (len(s) - 1)
    for i in kept:
        if reduction == "mean":
            weights[i] = (1.0 - s[i]) / s[i] / len(kept)
            continue
        upper = 1.0 if i == 0 else 0.5 * (s[i - 1] + s[i])
        lower = sigma_min if i == kept[-1] else 0.5 * (s[i] + s[i + 1])
        weights[i] = math.log(upper / lower) - (upper - lower)
    return weights


def flow_levels(*, sigma_min: float = 0.05, n_levels: int = 1000) -> LevelTable:
    """A midpoint quadrature over sigma in (sigma_min, 1], for the re-noising estimator.

    `levels` are sigmas; the model's timestep is `1000 * sigma`, as in diffusers' SD3 scheduler.
    """
    edges = torch.linspace(sigma_min, 1.0, n_levels + 1, dtype=torch.float64)
    sigma = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1:] - edges[:-1]
    return LevelTable(
        levels=sigma, weights=(1.0 - sigma) / sigma * width, signal=1.0 - sigma, noise=sigma,
        prediction="flow",
    )
