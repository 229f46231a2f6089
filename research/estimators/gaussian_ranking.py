"""Within-prompt ranking on Gaussian ground truth: which MI estimator keeps the right candidate?

MI-TUNE keeps, among one prompt's candidates, those with the highest MI. On jointly Gaussian
(x, y) with the exact optimal denoiser, velocity and point-wise MI (`mitune_ray.testing.gaussian`),
this script draws 100 prompts x 16 candidates per seed and reports, per estimator, the mean over
prompts of Kendall's tau between the estimate and the exact log p(x|y) - log p(x):

- point-wise (standard) form and the paper's (orthogonal) form, with exact expectations over the
  re-noising draw and with K = 16 draws shared by a prompt's candidates (the library's estimator);
- the paper's form along the sampler's own trajectory (MI-TUNE's Algorithm 2: 25 DDPM steps;
  RFMI: 28 Euler steps on SD3.5's shifted grid), on candidates that the sampler produced,
  unguided (w = 1) and guided (w = 7.5).

Every prompt's tau is kept in the JSON, so any contrast can be recomputed.

    python -m research.estimators.gaussian_ranking --json research/estimators/gaussian-ranking.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from scipy.stats import kendalltau

from mitune_ray.mi import (
    TrajectoryMI, ddpm_levels, ddpm_trajectory_weights, eps_term, flow_levels,
    flow_trajectory_weights, velocity_term,
)
from mitune_ray.testing.gaussian import (
    DT, GaussianWorld, ddpm_sample, euler_sample, expected_terms, sd_alphas_cumprod,
    shared_draw_estimates,
)

PROMPTS, CANDIDATES, DRAWS = 100, 16, 16
DDPM_STEPS, EULER_STEPS, SHIFT = 25, 28, 3.0


def taus(values: torch.Tensor, exact: torch.Tensor) -> list[float]:
    v = values.reshape(PROMPTS, CANDIDATES).numpy()
    e = exact.reshape(PROMPTS, CANDIDATES).numpy()
    return [float(kendalltau(a, b).statistic) for a, b in zip(v, e)]


def table_for(prediction: str):
    if prediction == "flow":
        return flow_levels(sigma_min=0.05)
    return ddpm_levels(sd_alphas_cumprod(), t_min=50, prediction_type=prediction)


def renoise_forms(world, prediction, table, x, y, g):
    """Exact expectations and K shared draws, both forms: {name: estimates}."""
    standard, orthogonal = expected_terms(world, prediction, table, x, y)
    w = table.weights.to(DT)[:, None]
    out = {"standard, exact": (w * standard).sum(0), "paper's form, exact": (w * orthogonal).sum(0)}
    for form, name in (("standard", f"standard, K={DRAWS}"), ("orthogonal", f"paper's form, K={DRAWS}")):
        out[name] = shared_draw_estimates(world, prediction, table, x, y, g, candidates=CANDIDATES,
                                          draws=DRAWS, form=form).double()
    return out


def sampled_ddpm(world, y, guidance, g):
    """Candidates from a guided DDPM sampler and the paper's trajectory MI accumulated on them."""
    abar = sd_alphas_cumprod()
    grid = list(range(1000 - 1000 // DDPM_STEPS + 1, 0, -(1000 // DDPM_STEPS)))  # "leading", offset 1
    acc = TrajectoryMI(ddpm_trajectory_weights(grid, abar, t_min=50), eps_term, batch=len(y), device="cpu")
    z = ddpm_sample(world, y, grid, abar, g, on_step=acc.update, guidance=guidance)
    return z, acc.mi.double()


def sampled_flow(world, y, guidance, g):
    """Candidates from a guided Euler flow sampler on SD3.5's shifted grid, with RFMI along it."""
    t = torch.linspace(1.0, 1.0 / EULER_STEPS, EULER_STEPS, dtype=DT)
    sigmas = (SHIFT * t / (1 + (SHIFT - 1) * t)).tolist() + [0.0]
    acc = TrajectoryMI(flow_trajectory_weights(sigmas, sigma_min=0.05), velocity_term,
                       batch=len(y), device="cpu")
    x = euler_sample(world, y, sigmas, g, on_step=acc.update, guidance=guidance)
    return x, acc.mi.double()


def run_seed(seed: int) -> dict:
    world = GaussianWorld()
    out = {}
    for prediction in ("epsilon", "v_prediction", "flow"):
        g = torch.Generator().manual_seed(seed)
        table = table_for(prediction)
        x, y = world.pool(PROMPTS, CANDIDATES, g)  # x ~ p(x|y): exact samples
        exact = world.log_ratio(x, y)
        rows = {f"{k} (exact samples)": taus(v, exact)
                for k, v in renoise_forms(world, prediction, table, x, y, g).items()}
        for guidance in (1.0, 7.5):
            _, yp = world.pool(PROMPTS, CANDIDATES, g)
            sampler = sampled_flow if prediction == "flow" else sampled_ddpm
            xs, trajectory = sampler(world, yp, guidance, g)
            exact_s = world.log_ratio(xs, yp)
            steps = EULER_STEPS if prediction == "flow" else DDPM_STEPS
            rows[f"paper's form along the trajectory, {steps} steps (sampled, w={guidance:g})"] = (
                taus(trajectory, exact_s))
            std = renoise_forms(world, prediction, table, xs, yp, g)[f"standard, K={DRAWS}"]
            rows[f"standard, K={DRAWS} (sampled, w={guidance:g})"] = taus(std, exact_s)
            spread = exact_s.reshape(PROMPTS, CANDIDATES).std(1).mean().item()
            rows[f"within-prompt sd of the exact point-wise MI (sampled, w={guidance:g})"] = [spread]
        out[prediction] = rows
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", help="write every prompt's tau here")
    args = parser.parse_args(argv)
    start = time.time()
    per_seed = {seed: run_seed(seed) for seed in range(args.seeds)}
    summary: dict = {}
    for prediction in per_seed[0]:
        summary[prediction] = {}
        for name in per_seed[0][prediction]:
            means = [float(np.mean(per_seed[s][prediction][name])) for s in per_seed]
            summary[prediction][name] = {"mean": float(np.mean(means)), "min_seed": min(means),
                                         "max_seed": max(means)}
    print(f"| estimator | {' | '.join(summary)} |")
    print("|---|" + "---|" * len(summary))
    for name in summary["epsilon"]:
        cells = []
        for prediction in summary:
            stat = summary[prediction].get(name) or summary[prediction].get(
                name.replace("25 steps", f"{EULER_STEPS} steps"))
            cells.append("-" if stat is None else
                         f"{stat['mean']:+.2f} [{stat['min_seed']:+.2f}, {stat['max_seed']:+.2f}]")
        print(f"| {name} | {' | '.join(cells)} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": "python -m research.estimators.gaussian_ranking "
                                  f"--seeds {args.seeds} --json {args.json}",
                       "prompts": PROMPTS, "candidates": CANDIDATES, "draws": DRAWS,
                       "torch": torch.__version__, "python": platform.python_version(),
                       "seconds": round(time.time() - start, 1), "summary": summary,
                       "per_seed_per_prompt_tau": per_seed}, f, indent=1)


if __name__ == "__main__":
    main()
