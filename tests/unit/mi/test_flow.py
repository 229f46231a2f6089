"""RFMI against Gaussian ground truth, on SD3.5's shifted grid."""

import pytest
import torch

from mitune_ray.mi import (
    TrajectoryMI, draw_levels, flow_levels, flow_trajectory_weights, renoise_mi, velocity_term,
)
from mitune_ray.testing.gaussian import DT, GaussianWorld, euler_sample
from tests.unit.mi.test_discrete import assert_unbiased


def shifted_sigmas(n: int, shift: float = 3.0) -> list[float]:
    """FlowMatchEulerDiscreteScheduler's grid for SD3.5 (shift 3), with the final 0."""
    t = torch.linspace(1.0, 1.0 / n, n, dtype=DT)
    return (shift * t / (1 + (shift - 1) * t)).tolist() + [0.0]


def _truth(world, sigma_min):
    return world.mi_between_snr(0.0, ((1 - sigma_min) / sigma_min) ** 2)


@pytest.mark.parametrize("steps", [28, 100])
def test_rfmi_weights_recover_gaussian_mi_on_the_shifted_grid(steps):
    world = GaussianWorld()
    g = torch.Generator().manual_seed(1)
    x, y = world.sample(20000, g)
    sigmas = shifted_sigmas(steps)
    acc = TrajectoryMI(flow_trajectory_weights(sigmas, sigma_min=0.05), velocity_term,
                       batch=len(x), device="cpu")
    for i, s in enumerate(sigmas[:-1]):
        xs = (1 - s) * x + s * torch.randn(x.shape, generator=g, dtype=DT)
        acc.update(i, world.v_hat(xs, s, y), world.v_hat(xs, s))
    assert acc.mi.double().mean().item() == pytest.approx(_truth(world, 0.05), rel=0.03)


def test_rfmi_along_a_real_euler_sampler():
    world = GaussianWorld()
    g = torch.Generator().manual_seed(2)
    _, y = world.sample(40000, g)
    sigmas = shifted_sigmas(100)
    acc = TrajectoryMI(flow_trajectory_weights(sigmas, sigma_min=0.02), velocity_term,
                       batch=len(y), device="cpu")
    x = euler_sample(world, y, sigmas, g, on_step=acc.update)
    assert acc.mi.double().mean().item() == pytest.approx(_truth(world, 0.02), rel=0.03)
    assert torch.cov((x - y @ world.B.T).T) == pytest.approx(world.S, abs=0.05)


def test_uniform_mean_weights_differ_from_the_interval_weights_on_a_shifted_grid():
    sigmas = shifted_sigmas(28)
    integral = flow_trajectory_weights(sigmas)
    mean = flow_trajectory_weights(sigmas, reduction="mean")
    ratios = [a / b for a, b in zip(integral, mean) if b > 0]
    assert max(ratios) / min(ratios) > 1.5  # a plain mean is not a uniform-in-t integral
    assert all(w == 0 for s, w in zip(sigmas, integral) if s <= 0.05)
    with pytest.raises(ValueError, match="sigma_min"):
        flow_trajectory_weights(sigmas, sigma_min=0.0)


@pytest.mark.parametrize("form", ["standard", "orthogonal"])
@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_rfmi_renoise_recovers_gaussian_mi(sampling, form):
    world = GaussianWorld()
    g = torch.Generator().manual_seed(3)
    table = flow_levels(sigma_min=0.05)
    estimates = []
    for _ in range(40 if form == "orthogonal" else 80):  # fresh shared draws per group
        x, y = world.sample(150, g)
        draws = draw_levels(table, 500, (world.d,), generator=g, sampling=sampling)

        def predict(xs, sigma, y=y):  # every draw in one call: a level per row
            ys = y.repeat(len(xs) // len(y), 1)
            return world.v_hat(xs, sigma, ys), world.v_hat(xs, sigma)

        estimates.append(renoise_mi(predict, x, table, draws, velocity_term, form=form,
                                    rows_per_call=len(x) * len(draws.index))[0])
    assert_unbiased(estimates, _truth(world, 0.05), form)


def test_guided_velocity_variant_matches_its_formula_and_is_zero_without_difference():
    cond, uncond = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    guided = uncond + 7.0 * (cond - uncond)
    expected = (guided * (guided - uncond)).flatten(1).sum(1)
    assert torch.allclose(velocity_term(cond, uncond, guidance=7.0), expected)
    assert torch.allclose(velocity_term(cond, uncond), (cond * (cond - uncond)).flatten(1).sum(1))
    assert torch.equal(velocity_term(cond, cond.clone(), guidance=7.0), torch.zeros(3))
