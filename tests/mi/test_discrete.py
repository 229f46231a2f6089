"""MI-TUNE's discrete-time estimator against hand-computed values and Gaussian ground truth."""

import math

import pytest
import torch

from mitune_ray.mi import (
    TrajectoryMI, ddpm_levels, ddpm_trajectory_weights, draw_levels, eps_term, kappa, renoise_mi,
    standard_eps_term,
)
from tests.mi.gaussian import DT, GaussianWorld, sd_alphas_cumprod, snr

LEADING_100 = list(range(991, 0, -10))  # DDPMScheduler(steps_offset=1, "leading"), 100 steps


def test_kappa_matches_hand_computed_values_for_sd_schedule():
    abar = sd_alphas_cumprod()
    for t in (0, 1, 499, 999):
        beta = (0.00085**0.5 + t * (0.012**0.5 - 0.00085**0.5) / 999) ** 2
        alpha = 1 - beta
        prod = math.prod(1 - (0.00085**0.5 + s * (0.012**0.5 - 0.00085**0.5) / 999) ** 2
                         for s in range(t + 1))
        expected = beta * 1000 / (2 * alpha * (1 - prod))
        assert kappa(abar)[t].item() == pytest.approx(expected, rel=1e-9)
        assert kappa(abar, variant="reference")[t].item() == pytest.approx(expected * alpha, rel=1e-9)
    assert kappa(abar)[0].item() == pytest.approx(500 / (1 - 0.00085), rel=1e-9)


def test_reference_kappa_is_within_about_one_percent_of_the_paper():
    abar = sd_alphas_cumprod()
    ratio = kappa(abar, variant="reference") / kappa(abar)
    assert ratio.min().item() == pytest.approx(1 - 0.012, rel=1e-6)
    assert ratio.max().item() <= 1.0


def test_integral_weights_sum_kappa_over_the_kept_range():
    abar = sd_alphas_cumprod()
    w = ddpm_trajectory_weights(LEADING_100, abar, t_min=50)
    assert sum(w) == pytest.approx(float(kappa(abar)[51:].sum()) / 1000, rel=1e-12)
    assert all(x == 0.0 for t, x in zip(LEADING_100, w) if t <= 50)
    mean = ddpm_trajectory_weights(LEADING_100, abar, t_min=50, reduction="mean")
    kept = [t for t in LEADING_100 if t > 50]
    assert mean[0] == pytest.approx(float(kappa(abar)[991]) / len(kept))


def _forward_marginal_estimate(world, x, y, timesteps, abar, t_min, g):
    weights = ddpm_trajectory_weights(timesteps, abar, t_min=t_min)
    acc = TrajectoryMI(weights, eps_term, batch=len(x), device="cpu")
    for i, t in enumerate(timesteps):
        a, n = abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()
        z = a * x + n * torch.randn(x.shape, generator=g, dtype=DT)
        acc.update(i, world.eps_hat(z, a, n, y), world.eps_hat(z, a, n))
    return acc.mi.double().mean().item()


@pytest.mark.parametrize("t_min", [0, 50])
def test_trajectory_weights_recover_gaussian_mi_on_a_100_step_grid(t_min):
    world, abar = GaussianWorld(), sd_alphas_cumprod()
    g = torch.Generator().manual_seed(1)
    x, y = world.sample(20000, g)
    s = snr(abar)
    truth = world.mi_between_snr(s[-1].item(), s[t_min + 1].item())
    estimate = _forward_marginal_estimate(world, x, y, LEADING_100, abar, t_min, g)
    assert estimate == pytest.approx(truth, rel=0.03)
    if t_min == 0:  # the schedule's SNR range holds nearly all of this world's information
        assert estimate == pytest.approx(world.mi(), rel=0.03)


def test_trajectory_mi_along_a_real_ancestral_gaussian_sampler():
    """Accumulated along DDPM's reverse process (guidance 1), the expectation is the true MI."""
    world, abar = GaussianWorld(), sd_alphas_cumprod()
    g = torch.Generator().manual_seed(2)
    _, y = world.sample(8000, g)
    timesteps = list(range(999, -1, -1))
    acc = TrajectoryMI(ddpm_trajectory_weights(timesteps, abar, t_min=0), eps_term,
                       batch=len(y), device="cpu")
    z = torch.randn(len(y), world.d, generator=g, dtype=DT)
    for i, t in enumerate(timesteps):
        a, n = abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()
        eps_c = world.eps_hat(z, a, n, y)
        acc.update(i, eps_c, world.eps_hat(z, a, n))
        prev = abar[t - 1].item() if t > 0 else 1.0
        alpha_t = abar[t].item() / prev
        x0 = (z - n * eps_c) / a
        mean = (prev**0.5 * (1 - alpha_t) * x0 + alpha_t**0.5 * (1 - prev) * z) / (1 - abar[t].item())
        var = (1 - prev) / (1 - abar[t].item()) * (1 - alpha_t)
        z = mean + var**0.5 * torch.randn(z.shape, generator=g, dtype=DT)
    assert acc.mi.double().mean().item() == pytest.approx(world.mi(), rel=0.03)
    # The sampler's end points are distributed as x | y: their covariance is S.
    residual = z - y @ world.B.T
    assert torch.cov(residual.T) == pytest.approx(world.S, abs=0.05)


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_renoise_estimator_recovers_gaussian_mi(sampling):
    world, abar = GaussianWorld(), sd_alphas_cumprod()
    g = torch.Generator().manual_seed(3)
    table = ddpm_levels(abar, t_min=0)
    estimates = []
    # Draws are shared within a prompt (common random numbers), so fresh draws per group of
    # samples are what lets the level-sampling noise average out here.
    for _ in range(20):
        x, y = world.sample(150, g)
        draws = draw_levels(table, 200, (world.d,), generator=g, sampling=sampling)

        def predict(z, levels, y=y):
            t = int(levels[0])
            a, n = abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()
            return world.eps_hat(z, a, n, y), world.eps_hat(z, a, n)

        mi, stderr = renoise_mi(predict, x, table, draws, eps_term)
        estimates.append(mi)
    mi = torch.cat(estimates)
    s = snr(abar)
    assert mi.mean().item() == pytest.approx(world.mi_between_snr(s[-1].item(), s[1].item()), rel=0.03)
    assert (stderr > 0).all() and stderr.mean().item() < 0.15 * mi.mean().item()


def _log_density_ratio(world: GaussianWorld, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact point-wise MI, log p(x|y) - log p(x), of the Gaussian world."""

    def log_normal(mean, cov):
        d = x - mean
        return -0.5 * ((d @ torch.linalg.inv(cov)) * d).sum(1) - 0.5 * torch.logdet(cov)

    return log_normal(y @ world.B.T, world.S) - log_normal(torch.zeros_like(x), world.sigma_x)


def test_standard_form_is_point_wise_and_the_orthogonal_form_is_not():
    # Point-wise, the paper's ||eps_c - eps_u||^2 is not log p(x|y) - log p(x): it is never
    # negative, and it grows when the prompt's prediction disagrees with the image. Re-noising
    # with the draw's own noise (the standard form) tracks the exact value pair by pair.
    world, abar = GaussianWorld(), sd_alphas_cumprod()
    g = torch.Generator().manual_seed(5)
    x, y = world.sample(40, g)
    table = ddpm_levels(abar, t_min=0)
    for yy in (y, y[torch.randperm(40, generator=g)]):  # matched, then mismatched pairs
        exact = _log_density_ratio(world, x, yy)
        draws = draw_levels(table, 4000, (world.d,), generator=g)

        def predict(z, levels, yy=yy):
            t = int(levels[0])
            a, n = abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()
            return world.eps_hat(z, a, n, yy), world.eps_hat(z, a, n)

        standard, stderr = renoise_mi(predict, x, table, draws, eps_term,
                                      target_term=standard_eps_term)
        orthogonal, _ = renoise_mi(predict, x, table, draws, eps_term)
        assert torch.corrcoef(torch.stack([standard, exact.float()]))[0, 1] > 0.99
        assert (standard - exact).abs().mean() < 3 * stderr.mean() + 0.05
        assert torch.corrcoef(torch.stack([orthogonal, exact.float()]))[0, 1] < 0
    # Mismatched pairs: mostly negative MI, which only the standard form can say.
    assert exact.mean() < -3 and (orthogonal > 0).all()
    assert ((standard < 0) == (exact < 0)).float().mean() > 0.9


def test_estimates_are_exactly_zero_when_predictions_coincide():
    abar = sd_alphas_cumprod()
    pred = torch.randn(5, 4, 8, 8)
    acc = TrajectoryMI(ddpm_trajectory_weights(LEADING_100, abar), eps_term, batch=5, device="cpu")
    for i in range(len(LEADING_100)):
        acc.update(i, pred, pred.clone())
    assert torch.equal(acc.mi, torch.zeros(5)) and torch.equal(acc.stderr, torch.zeros(5))
    table = ddpm_levels(abar)
    draws = draw_levels(table, 8, (4, 8, 8), generator=torch.Generator().manual_seed(0))
    mi, se = renoise_mi(lambda z, t: (z * 2, z * 2), torch.randn(5, 4, 8, 8), table, draws, eps_term)
    assert torch.equal(mi, torch.zeros(5)) and torch.equal(se, torch.zeros(5))


def test_renoise_uses_common_random_numbers_across_candidates():
    table = ddpm_levels(sd_alphas_cumprod())
    draws = draw_levels(table, 4, (2,), generator=torch.Generator().manual_seed(0))
    seen = []

    def predict(z, levels):
        seen.append((z.clone(), levels.clone()))
        return z, torch.zeros_like(z)

    z0 = torch.zeros(3, 2)  # identical candidates see identical noised inputs
    renoise_mi(predict, z0, table, draws, eps_term)
    for z, levels in seen:
        assert torch.equal(z[0], z[1]) and torch.equal(z[1], z[2])
        assert torch.equal(levels, levels[:1].expand(3))


def test_v_prediction_weights_scale_by_alpha_bar():
    abar = sd_alphas_cumprod()
    eps_w = ddpm_trajectory_weights(LEADING_100, abar, reduction="mean")
    v_w = ddpm_trajectory_weights(LEADING_100, abar, reduction="mean", prediction_type="v_prediction")
    assert v_w[0] == pytest.approx(eps_w[0] * abar[991].item())
    with pytest.raises(ValueError, match="sample"):
        ddpm_trajectory_weights(LEADING_100, abar, prediction_type="sample")
