"""MI-TUNE's estimator for discrete-time (DDPM) diffusion models: SD-2.1, SD-XL.

    I(z, p) = sum_t kappa_t / T * E || eps(z_t, p, t) - eps(z_t, null, t) ||^2
    kappa_t = beta_t * T / (2 * alpha_t * (1 - abar_t))

`kappa_t / T` is, to first order, half the step in log-SNR between t-1 and t, so the sum is the
I-MMSE integral `1/2 * int E||eps_y - eps||^2 dlog(snr)` (MINDE; Kong et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mitune_ray.mi.estimators import LevelTable

KAPPA_VARIANTS = ("paper", "reference")
REDUCTIONS = ("integral", "mean")


def kappa(alphas_cumprod: torch.Tensor, *, variant: str = "paper") -> torch.Tensor:
    """`kappa_t` for t = 0..T-1 of a DDPM schedule, in float64.

    `variant="paper"` is the paper's formula; `"reference"` drops `alpha_t` from the denominator as
    the reference code does (within about 1.2% for SD's scaled-linear schedule).

    Example:
        >>> abar = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)
        >>> kappa(abar)[0].item()  # beta_0 * 1000 / (2 * alpha_0 * beta_0) = 500 / alpha_0
        500.050005...
    """
    if variant not in KAPPA_VARIANTS:
        raise ValueError(f"kappa variant {variant!r} is not one of {KAPPA_VARIANTS}")
    abar = alphas_cumprod.to(torch.float64)
    alpha = abar / torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1.0 - alpha
    out = beta * len(abar) / (2.0 * (1.0 - abar))
    return out / alpha if variant == "paper" else out


def _eps_scale(alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    # A v-prediction model's eps difference is sqrt(abar_t) times its v difference (eps is linear
    # in v given z_t), so its squared norm is scaled by abar_t.
    if prediction_type == "epsilon":
        return torch.ones_like(alphas_cumprod, dtype=torch.float64)
    if prediction_type == "v_prediction":
        return alphas_cumprod.to(torch.float64)
    raise ValueError(f"prediction_type {prediction_type!r} has no MI estimator (epsilon, v_prediction)")


def ddpm_trajectory_weights(
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    t_min: int = 50,
    kappa_variant: str = "paper",
    reduction: str = "integral",
    prediction_type: str = "epsilon",
) -> list[float]:
    """Per-step weights for accumulating MI along a sampler's grid of `timesteps` (descending).

    With `reduction="integral"` step i stands for the training timesteps nearer to it than to its
    neighbours on the grid (midpoint rule; the first and last kept steps extend to T-1 and t_min+1),
    weighted by the sum of `kappa_t / T` over them: the weighted sum approximates the sum over all
    t > t_min, an estimate in nats. `reduction="mean"` is the reference's plain average of
    `kappa_t ||diff||^2` over the kept steps; on a uniform grid it differs from the integral by a
    constant factor, so it ranks candidates identically. Steps with t <= t_min get weight 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not one of {REDUCTIONS}")
    ts = [int(t) for t in timesteps]
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts[:5]}...")
    n_train = len(alphas_cumprod)
    k = kappa(alphas_cumprod, variant=kappa_variant) * _eps_scale(alphas_cumprod, prediction_type)
    kept = [i for i, t in enumerate(ts) if t > t_min]
    weights = [0.0] * len(ts)
    for i in kept:
        if reduction == "mean":
            weights[i] = float(k[ts[i]]) / len(kept)
            continue
        upper = n_train - 1 if i == 0 else (ts[i - 1] + ts[i]) // 2
        lower = t_min + 1 if i == kept[-1] else (ts[i] + ts[i + 1]) // 2 + 1
        weights[i] = float(k[lower : upper + 1].sum()) / n_train
    return weights


def ddpm_levels(
    alphas_cumprod: torch.Tensor,
    *,
    t_min: int = 50,
    kappa_variant: str = "paper",
    prediction_type: str = "epsilon",
) -> LevelTable:
    """The quadrature over all training timesteps t > t_min, for the re-noising estimator."""
    n_train = len(alphas_cumprod)
    k = kappa(alphas_cumprod, variant=kappa_variant) * _eps_scale(alphas_cumprod, prediction_type)
    t = torch.arange(t_min + 1, n_train)
    abar = alphas_cumprod.to(torch.float64)[t]
    return LevelTable(
        levels=t.to(torch.float64),
        weights=k[t] / n_train,
        signal=abar.sqrt(),
        noise=(1.0 - abar).sqrt(),
        prediction=prediction_type,
    )
