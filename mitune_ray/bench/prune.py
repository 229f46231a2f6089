"""Successive-halving pruning against full sampling, on the same prompts and seeds, in one run.

Both runs use the generation stage's `CandidateSampler.generate` on real prompts (a model with its
text encoder: a tiny random model, the bundled ShapesWorld model or a folder). The pruned run
keeps the best `keep` fraction of each prompt's candidates by the MI accumulated after `at` of the
steps and finishes only those. Each candidate has its own noise generator, so a kept candidate
follows the same trajectory in both runs.

Reported: the denoiser compute saved (rows x steps), the time ratio, how often the pruned
run selects the full run's top-1 candidate, the Kendall tau between the kept candidates' final MI
in the two runs, and the regret (how much MI the pruned pick gives up, in units of the prompt's
MI spread).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from mitune_ray.bench.recorder import clock
from mitune_ray.config import GenerateSection, MISection, PruneSection
from mitune_ray.sampling import CandidateSampler, Prompt


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two paired lists (NaN with fewer than two pairs)."""
    if len(a) < 2:
        return float("nan")
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def compare(pipe, fam, texts: list[str], gen: GenerateSection, device, dtype, *,
            at: float = 0.5, keep: float = 0.5) -> dict[str, Any]:
    """Full vs pruned selection on `texts` (one prompt id per text). See the module docstring."""
    prompts = [Prompt(f"prune-{i}", t) for i, t in enumerate(texts)]
    full_gen = gen.model_copy(update={"prune": PruneSection(enabled=False)})
    pruned_gen = gen.model_copy(update={"prune": PruneSection(enabled=True, at=at, keep=keep)})
    runs = {}
    now, clock_name = clock(torch.device(device))
    for name, settings in (("full", full_gen), ("pruned", pruned_gen)):
        sampler = CandidateSampler(pipe, fam, settings, MISection.paper(), device=device, dtype=dtype)
        t0 = now()
        runs[name] = (sampler.generate(prompts, 1, decode=False), now() - t0, sampler)
    (full, full_s, full_sampler), (pruned, pruned_s, pruned_sampler) = runs["full"], runs["pruned"]
    steps = len(full_sampler.timesteps)
    cut = pruned_sampler.prune_index if pruned_sampler.prune_index is not None else steps
    agree, recall, taus, regrets = [], [], [], []
    full_rows = pruned_rows = 0
    for f, p in zip(full, pruned):
        kept = [i for i, v in enumerate(p.mi) if not math.isnan(v)]
        full_rows += len(f.mi) * steps
        pruned_rows += len(f.mi) * cut + len(kept) * (steps - cut)
        best_full = max(range(len(f.mi)), key=lambda i: f.mi[i])
        best_pruned = p.selected[0].index
        agree.append(best_pruned == best_full)
        recall.append(best_full in kept)
        taus.append(kendall_tau([p.mi[i] for i in kept], [f.mi[i] for i in kept]))
        spread = statistics.pstdev(f.mi) or 1.0
        regrets.append((f.mi[best_full] - f.mi[best_pruned]) / spread)
    finite = [t for t in taus if not math.isnan(t)]
    tau = statistics.mean(finite) if finite else float("nan")
    return {
        "compute_saved": 1 - pruned_rows / full_rows,
        "row_steps_full": full_rows, "row_steps_pruned": pruned_rows,
        "time_ratio": pruned_s / full_s, "seconds_full": full_s, "seconds_pruned": pruned_s,
        "clock": clock_name,
        "top1_agreement": sum(agree) / len(agree),
        "top1_in_kept": sum(recall) / len(recall),
        "kendall_tau_kept": tau,
        "regret_sd": statistics.mean(regrets),
        "prompts": len(prompts), "candidates": gen.candidates, "steps": steps,
        "prune_at": at, "prune_keep": keep, "prune_step": cut,
        "notes": (f"top-1 agreement {sum(agree) / len(agree):.0%} (full top-1 kept "
                  f"{sum(recall) / len(recall):.0%}), Kendall tau {tau:.2f}, regret "
                  f"{statistics.mean(regrets):.2f} MI sd, time x{pruned_s / full_s:.2f}"),
    }


def load_prune_model(path: str, device: torch.device):
    """(pipe, family, dtype) of a full pipeline for pruning runs (text encoder needed)."""
    from mitune_ray.models import ModelSpec, load_model

    pipe, fam, _, dtype = load_model(ModelSpec(path), device=device)
    return pipe, fam, dtype
