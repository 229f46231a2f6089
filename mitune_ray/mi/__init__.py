"""Point-wise mutual information estimators (pure torch: no Ray, no diffusers).

Both estimators approximate an integral over noise levels of a weighted difference between the
denoiser's conditional and unconditional predictions:

- discrete-time diffusion (SD-2.1, SD-XL): MI-TUNE's `kappa_t * ||eps(z_t, p) - eps(z_t, null)||^2`
  summed over t (`discrete.py`);
- rectified flow (SD3.5): RFMI's `(1 - sigma) / sigma * u(x|y) . (u(x|y) - u(x))` integrated over
  sigma (`flow.py`).

A `LevelTable` holds a quadrature over noise levels (a level, its weight, how to noise a clean
latent to it); the trajectory estimator (`TrajectoryMI`) reads the predictions a CFG sampler
computes anyway, the re-noising estimator (`renoise_mi`) draws levels for a finished latent.

Two forms of the per-level term. The paper's ("orthogonal") term above equals the MI only in
expectation over images drawn for the prompt. The point-wise ("standard") form,
`||target - pred(null)||^2 - ||target - pred(p)||^2` against the re-noising draw's own regression
target, is `log p(z|p) - log p(z)` for each image, for all three parameterisations (epsilon,
v, flow): it is the one that ranks a prompt's candidates (docs/estimators.md).
"""

from mitune_ray.mi.discrete import ddpm_levels, ddpm_trajectory_weights, kappa
from mitune_ray.mi.estimators import (
    LevelTable,
    RenoiseDraws,
    TrajectoryMI,
    draw_levels,
    eps_term,
    mean_and_stderr,
    regression_target,
    renoise_mi,
    renoise_terms,
    standard_term,
    velocity_term,
)
from mitune_ray.mi.flow import flow_levels, flow_trajectory_weights

__all__ = [
    "LevelTable", "RenoiseDraws", "TrajectoryMI", "ddpm_levels", "ddpm_trajectory_weights",
    "draw_levels", "eps_term", "flow_levels", "flow_trajectory_weights", "kappa", "mean_and_stderr",
    "regression_target", "renoise_mi", "renoise_terms", "standard_term", "velocity_term",
]
