"""The two estimators, generic over the noise-level quadrature: along a trajectory, and re-noising."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

SAMPLINGS = ("uniform", "importance")


def eps_term(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """`||cond - uncond||^2` per sample, summed over all latent elements, in float32."""
    return (cond.float() - uncond.float()).square().flatten(1).sum(1)


def standard_eps_term(cond: torch.Tensor, uncond: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """`||eps - uncond||^2 - ||eps - cond||^2` per sample: the re-noising draw's own noise `eps`
    makes it the point-wise estimate of `log p(z|p) - log p(z)` (the "standard" estimator of Kong
    et al., ICLR 2024). The paper's `||cond - uncond||^2` (the "orthogonal" one) equals it only in
    expectation over images drawn for the prompt; point-wise it also rewards an image the prompt's
    prediction *disagrees* with, and it is never negative."""
    e = eps.float()
    return ((e - uncond.float()).square() - (e - cond.float()).square()).flatten(1).sum(1)


def velocity_term(
    cond: torch.Tensor, uncond: torch.Tensor, *, guidance: float | None = None
) -> torch.Tensor:
    """RFMI's `u . (u - u_uncond)` per sample, with u the conditional velocity (the paper) or, given
    `guidance`, the guided one `u_uncond + guidance * (u_cond - u_uncond)` (the reference code)."""
    cond, uncond = cond.float(), uncond.float()
    u = cond if guidance is None else uncond + guidance * (cond - uncond)
    return (u * (u - uncond)).flatten(1).sum(1)


Term = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TargetTerm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TrajectoryMI:
    """Accumulates point-wise MI from the CFG pair a sampler computes at each step, on the device.

    `weights[i]` (host floats, fixed before sampling) weights step i; a zero weight skips the step.
    Nothing here reads a device value, so accumulation never syncs the host. The standard error
    treats consecutive kept steps as pairs of strata with one draw each (the collapsed-strata
    variance estimator): conservative, and 0 only when paired terms agree.

    Example:
        >>> acc = TrajectoryMI([0.5, 0.5], eps_term, batch=2, device="cpu")
        >>> for i in range(2):
        ...     acc.update(i, torch.ones(2, 4), torch.zeros(2, 4))
        >>> acc.mi.tolist()
        [4.0, 4.0]
    """

    def __init__(self, weights: Sequence[float], term: Term, *, batch: int, device) -> None:
        self.weights = [float(w) for w in weights]
        self.term = term
        self.mi = torch.zeros(batch, dtype=torch.float32, device=device)
        self._var = torch.zeros_like(self.mi)
        self._pending: torch.Tensor | None = None

    def update(self, step: int, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        w = self.weights[step]
        if w == 0.0:
            return
        contribution = w * self.term(cond, uncond)
        self.mi += contribution
        if self._pending is None:
            self._pending = contribution
        else:
            self._var += (self._pending - contribution).square()
            self._pending = None

    @property
    def stderr(self) -> torch.Tensor:
        return self._var.sqrt()

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows `index` (after pruning candidates mid-trajectory)."""
        self.mi, self._var = self.mi[index], self._var[index]
        if self._pending is not None:
            self._pending = self._pending[index]


@dataclass(frozen=True)
class LevelTable:
    """A quadrature over noise levels: `sum_j weights[j] * term(level_j)` approximates the MI.

    `signal` and `noise` give the forward process `x_level = signal * x_0 + noise * eps`.
    """

    levels: torch.Tensor
    weights: torch.Tensor
    signal: torch.Tensor
    noise: torch.Tensor

    @property
    def total_weight(self) -> float:
        return float(self.weights.sum())


@dataclass(frozen=True)
class RenoiseDraws:
    """K shared draws (common random numbers for all candidates of one prompt)."""

    index: torch.Tensor  # (K,) rows of the level table
    eps: torch.Tensor  # (K, *latent_shape)
    scale: torch.Tensor  # (K,) weight / proposal probability of each draw


def draw_levels(
    table: LevelTable,
    k: int,
    latent_shape: Sequence[int],
    *,
    generator: torch.Generator,
    sampling: str = "uniform",
) -> RenoiseDraws:
    """Draw K (level, noise) pairs. `"uniform"` picks levels uniformly; `"importance"` picks them in
    proportion to their weight (uniform in log-SNR for MI-TUNE's kappa), which bounds each draw's
    weight where kappa blows up at small t. Uniform is the default: on the Gaussian ground truth of
    the tests its per-draw standard deviation is lower (2.1 vs 2.9 nats discrete, 2.8 vs 4.6 flow).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"renoise sampling {sampling!r} is not one of {SAMPLINGS}")
    if k < 1:
        raise ValueError(f"renoise draws must be >= 1, got {k}")
    w = table.weights
    probs = torch.full_like(w, 1.0 / len(w)) if sampling == "uniform" else w / w.sum()
    index = torch.multinomial(probs, k, replacement=True, generator=generator)
    eps = torch.randn((k, *latent_shape), generator=generator)
    return RenoiseDraws(index=index, eps=eps, scale=(w[index] / probs[index]))


Predict = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def renoise_mi(
    predict: Predict, z0: torch.Tensor, table: LevelTable, draws: RenoiseDraws, term: Term,
    *, target_term: TargetTerm | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MI of finished latents `z0` (B, ...) by re-noising them with the shared `draws`.

    `predict(z_levels, levels)` returns the (conditional, unconditional) predictions for a batch of
    noised latents at the given levels (a row each). Returns the mean over draws and its standard
    error, per latent. Draws are evaluated one at a time over the whole batch. `target_term`
    (e.g. `standard_eps_term`), when given, replaces `term` and also receives the draw's noise.
    """
    per_draw = []
    for j in range(len(draws.index)):
        row = int(draws.index[j])
        eps = draws.eps[j].to(device=z0.device, dtype=z0.dtype).expand_as(z0)
        signal, noise = float(table.signal[row]), float(table.noise[row])
        z_level = signal * z0 + noise * eps
        levels = torch.full((z0.shape[0],), float(table.levels[row]), device=z0.device)
        cond, uncond = predict(z_level, levels)
        value = term(cond, uncond) if target_term is None else target_term(cond, uncond, eps)
        per_draw.append(float(draws.scale[j]) * value)
    values = torch.stack(per_draw)  # (K, B)
    k = values.shape[0]
    stderr = values.std(0, unbiased=True) / math.sqrt(k) if k > 1 else torch.zeros_like(values[0])
    return values.mean(0), stderr
