"""MI-TUNE's discrete-time estimator against hand-computed values and Gaussian ground truth."""

import math

import pytest
import torch

from mitune_ray.mi import (
    TrajectoryMI, ddpm_levels, ddpm_trajectory_weights, draw_levels, eps_term, flow_levels, kappa,
    renoise_mi, renoise_terms,
)
from mitune_ray.testing.gaussian import DT, GaussianWorld, ddpm_sample, sd_alphas_cumprod, snr

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
    z = ddpm_sample(world, y, timesteps, abar, g, on_step=acc.update)
    assert acc.mi.double().mean().item() == pytest.approx(world.mi(), rel=0.03)
    # The sampler's end points are distributed as x | y: their covariance is S.
    residual = z - y @ world.B.T
    assert torch.cov(residual.T) == pytest.approx(world.S, abs=0.05)


@pytest.mark.parametrize("form", ["standard", "orthogonal"])
@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_renoise_estimator_recovers_gaussian_mi(sampling, form):
    world, abar = GaussianWorld(), sd_alphas_cumprod()
    g = torch.Generator().manual_seed(3)
    table = ddpm_levels(abar, t_min=0)
    estimates = []
    # Draws are shared within a prompt (common random numbers), so fresh draws per group of
    # samples are what lets the level-sampling noise average out here. The standard form's draws
    # spread three times wider (its target's own noise does not cancel): more groups.
    for _ in range(20 if form == "orthogonal" else 60):
        x, y = world.sample(150, g)
        draws = draw_levels(table, 200, (world.d,), generator=g, sampling=sampling)

        def predict(z, levels, y=y):  # every draw in one call: a level per row
            t = levels.long()
            a, n = abar[t].sqrt(), (1 - abar[t]).sqrt()
            ys = y.repeat(len(z) // len(y), 1)
            return world.eps_hat(z, a, n, ys), world.eps_hat(z, a, n)

        mi, stderr = renoise_mi(predict, x, table, draws, eps_term, form=form,
                                rows_per_call=len(x) * len(draws.index))
        estimates.append(mi)
    s = snr(abar)
    assert_unbiased(estimates, world.mi_between_snr(s[-1].item(), s[1].item()), form)
    assert (stderr > 0).all()
    if form == "orthogonal":
        assert stderr.mean().item() < 0.15 * torch.cat(estimates).mean().item()


def assert_unbiased(groups: list[torch.Tensor], truth: float, form: str) -> None:
    """The paper's form within 3% of the truth; the standard form's mean within 4 standard errors
    of it (from the spread of the groups, each with its own draws), that error under 2%."""
    mi = torch.cat(groups).double()
    if form == "orthogonal":
        assert mi.mean().item() == pytest.approx(truth, rel=0.03)
        return
    means = torch.stack([g.double().mean() for g in groups])
    se = (means.std() / len(means) ** 0.5).item()
    assert abs(mi.mean().item() - truth) < 4 * se and se < 0.02 * truth


def test_standard_form_tracks_each_pair_and_says_when_a_prompt_does_not_fit():
    # The paper's ||eps_c - eps_u||^2 is never negative; the standard form, re-noising with the
    # draw's own noise, tracks log p(x|y) - log p(x) pair by pair, mismatched pairs included.
    # (How the two rank a prompt's candidates: tests/unit/mi/test_pointwise.py.)
    world, abar = GaussianWorld(), sd_alphas_cumprod()
    g = torch.Generator().manual_seed(5)
    x, y = world.sample(40, g)
    table = ddpm_levels(abar, t_min=0)
    for yy in (y, y[torch.randperm(40, generator=g)]):  # matched, then mismatched pairs
        exact = world.log_ratio(x, yy)
        draws = draw_levels(table, 4000, (world.d,), generator=g)

        def predict(z, levels, yy=yy):  # every draw in one call: a level per row
            t = levels.long()
            a, n = abar[t].sqrt(), (1 - abar[t]).sqrt()
            ys = yy.repeat(len(z) // len(yy), 1)
            return world.eps_hat(z, a, n, ys), world.eps_hat(z, a, n)

        together = len(x) * len(draws.index)
        standard, stderr = renoise_mi(predict, x, table, draws, eps_term, rows_per_call=together)
        orthogonal, _ = renoise_mi(predict, x, table, draws, eps_term, form="orthogonal",
                                   rows_per_call=together)
        assert torch.corrcoef(torch.stack([standard, exact.float()]))[0, 1] > 0.99
        assert (standard - exact).abs().mean() < 3 * stderr.mean() + 0.05
        assert (orthogonal >= 0).all()
    # Mismatched pairs: mostly negative MI, which only the standard form can say.
    assert exact.mean() < -3
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
    for form in ("standard", "orthogonal"):
        mi, se = renoise_mi(lambda z, t: (z * 2, z * 2), torch.randn(5, 4, 8, 8), table, draws,
                            eps_term, form=form)
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


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow"])
def test_draws_evaluated_together_give_each_draws_values(prediction):
    """`rows_per_call` packs several draws into one prediction call (a level per row): every
    draw's value is what it is alone, for each parameterisation's regression target."""
    table = (flow_levels(sigma_min=0.05) if prediction == "flow"
             else ddpm_levels(sd_alphas_cumprod().float(), t_min=0, prediction_type=prediction))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 4, 2, 2, generator=g)
    draws = draw_levels(table, 10, (4, 2, 2), generator=g)
    calls = []

    def predict(z, levels):  # row-wise: each row's output depends on its own input and level
        calls.append(len(z))
        w = (levels / (1.0 if prediction == "flow" else 1000.0)).view(-1, 1, 1, 1)
        return torch.tanh(z) * w + 0.1, z * (1 - w)

    one = renoise_terms(predict, z0, table, draws, eps_term)
    assert calls == [3] * 10
    for rows, sizes in ((3, [3] * 10), (7, [6] * 5), (12, [12, 12, 6]), (1000, [30])):
        calls.clear()
        many = renoise_terms(predict, z0, table, draws, eps_term, rows_per_call=rows)
        assert calls == sizes
        torch.testing.assert_close(many, one)
