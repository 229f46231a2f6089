"""Timing MI-scored generation with the real `CandidateSampler` loop.

A workload is P prompts x C candidates x S CFG steps. The timed loop is `CandidateSampler.sample`,
exactly what the generation stage runs per denoiser batch (MI accumulated on the device, one host
read of the MI per batch), on random conditioning; text encoding and VAE decoding are excluded
(both run once per prompt or per kept candidate, not per step). Rates are reported per 100 CFG
steps, the paper's setting, whatever `steps` the workload ran.

The reference's style is the same loop with its habits put back: fp32, one prompt's candidates per
batch, and after each MI update a host read of the MI, `gc.collect()` and
`torch.cuda.empty_cache()`.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from mitune_ray.bench.archs import Arch
from mitune_ray.bench.flops import FlopCount
from mitune_ray.levers import Levers, optimize
from mitune_ray.bench.recorder import clock, peak_memory_mib, reset_memory, sync
from mitune_ray.config import GenerateSection, MISection
from mitune_ray.mi import TrajectoryMI
from mitune_ray.sampling import CandidateSampler, candidate_seed

PAPER_STEPS = 100  # rates are normalised to the paper's 100 CFG steps


@dataclass(frozen=True)
class Workload:
    prompts: int = 1
    candidates: int = 16  # per prompt
    steps: int = 20
    batch: int = 64  # candidates per denoiser call (CFG doubles the rows)
    guidance: float = 7.5
    seed: int = 0

    @property
    def images(self) -> int:
        return self.prompts * self.candidates


Chunk = tuple[list[int], list[int], list[int]]  # (prompt of each row, seeds, rows per prompt)


def plan(work: Workload, *, per_prompt: bool = False) -> list[Chunk]:
    """Denoiser batches: up to `batch` candidates with prompts contiguous (as the sampler packs
    them), or one prompt's candidates per batch (the reference)."""
    rows = [(p, c) for p in range(work.prompts) for c in range(work.candidates)]
    size = work.candidates if per_prompt else work.batch
    chunks = []
    for i in range(0, len(rows), size):
        part = rows[i : i + size]
        prompts = [p for p, _ in part]
        seeds = [candidate_seed(work.seed, f"bench-{p}", 1, c) for p, c in part]
        segments = [prompts.count(q) for q in dict.fromkeys(prompts)]
        chunks.append((prompts, seeds, segments))
    return chunks


def make_sampler(arch: Arch, net: torch.nn.Module, work: Workload, device, dtype,
                 *, steps: int | None = None) -> CandidateSampler:
    gen = GenerateSection(candidates=work.candidates, steps=steps or work.steps,
                          guidance=work.guidance, max_batch=work.batch, keep=1)
    return CandidateSampler(arch.pipe(net), arch.fam, gen, MISection.paper(), device=device, dtype=dtype,
                            resolution=arch.resolution)


def run_chunks(sampler: CandidateSampler, cond, chunks: list[Chunk]) -> None:
    """The generation stage's inner loop: each batch sampled, its MI read back once."""
    for prompts, seeds, segments in chunks:
        index = torch.tensor(prompts, device=cond.embeds.device)
        _, _, acc = sampler.sample(seeds, cond.rows(index), segments)
        acc.mi.cpu()


def reference_style(term, device: torch.device):
    """The MI term with the reference's per-step habits: a host sync, gc, and cache emptying."""

    def term_with_syncs(cond, uncond):
        value = term(cond, uncond)
        value.cpu()  # the reference moves the MI to the host every step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return value

    return term_with_syncs


def _shares(rate_rows_steps: float, flops: FlopCount | None, peak_tflops: float | None):
    """Achieved TFLOP/s and shares of peak, from denoiser rows x steps per second (x2 for CFG)."""
    if flops is None:
        return {}
    achieved = 2 * rate_rows_steps * flops.total / 1e12
    out = {"tflops_achieved": achieved}
    if peak_tflops:
        out["peak_share"] = achieved / peak_tflops
        out["peak_share_issue"] = 2 * rate_rows_steps * flops.without_attention / 1e12 / peak_tflops
    return out


def time_generation(arch: Arch, levers: Levers, work: Workload, device: torch.device, *,
                    reference: bool = False, flops: FlopCount | None = None,
                    peak_tflops: float | None = None) -> dict[str, Any]:
    """Images/s (per 100 CFG steps) of MI-scored sampling with `levers`, or the reference's style.

    A short run of the same batches (2 steps) warms up the device and, with torch.compile, compiles
    every batch size before the timed run.
    """
    start = time.perf_counter()
    if reference:
        levers = Levers(dtype=torch.float32)
    net = optimize(arch.build(device, levers.dtype), levers)
    built = time.perf_counter()
    cond = arch.conditioning(work.prompts, device, seed=work.seed)
    chunks = plan(work, per_prompt=reference)
    sampler = make_sampler(arch, net, work, device, levers.dtype)
    warm = make_sampler(arch, net, work, device, levers.dtype, steps=2)
    if reference:
        sampler.term = warm.term = reference_style(sampler.term, device)
    run_chunks(warm, cond, chunks if levers.compile else chunks[:1])
    sync(device)
    warmed = time.perf_counter()
    reset_memory(device)
    now, clock_name = clock(device)
    t0 = now()
    run_chunks(sampler, cond, chunks)
    sync(device)
    seconds = now() - t0
    rows_steps_per_s = work.images * work.steps / seconds
    return {
        "variant": "reference-style fp32" if reference else levers.label(),
        "images_per_s": rows_steps_per_s / PAPER_STEPS,
        "images_per_s_at_steps": work.images / seconds,
        "seconds_timed": seconds, "clock": clock_name, "images": work.images, "steps": work.steps,
        "prompts": work.prompts, "candidates": work.candidates,
        "batch": work.candidates if reference else min(work.batch, work.images),
        "build_s": built - start, "warmup_s": warmed - built,
        "peak_mem_mib": peak_memory_mib(device),
        **_shares(rows_steps_per_s, flops, peak_tflops),
    }


def mi_overhead(arch: Arch, levers: Levers, work: Workload, device: torch.device, *,
                repeats: int = 5) -> dict[str, Any]:
    """The cost of accumulating MI relative to plain CFG sampling of the same batch.

    Two estimates. Paired runs: the same loop with the MI update on, then off (all step weights
    zero, so `TrajectoryMI.update` returns at once), alternating the order each repeat; the
    overhead is the median of the per-pair time ratios. Isolated: the MI update alone, timed on
    tensors of the loop's shapes, relative to one plain sampling step; far less noisy on a shared
    machine, and what the paired estimate converges to.
    """
    net = optimize(arch.build(device, levers.dtype), levers)
    cond = arch.conditioning(work.prompts, device, seed=work.seed)
    chunks = plan(work)
    sampler = make_sampler(arch, net, work, device, levers.dtype)
    weights_on, weights_off = sampler.weights, [0.0] * len(sampler.weights)
    now, clock_name = clock(device)

    def timed(weights) -> float:
        sampler.weights = weights
        sync(device)
        t0 = now()
        run_chunks(sampler, cond, chunks)
        sync(device)
        return now() - t0

    timed(weights_on)  # warm-up
    on, off = [], []
    for r in range(repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        for mi_on in order:
            (on if mi_on else off).append(timed(weights_on if mi_on else weights_off))
    sampler.weights = weights_on
    ratios = [a / b for a, b in zip(on, off)]

    rows = min(work.batch, work.images)
    channels, side = int(arch.config["in_channels"]), arch.latent_side
    pair = [torch.randn(rows, channels, side, side, device=device) for _ in range(2)]
    n = 200
    acc = TrajectoryMI([1.0] * n, sampler.term, batch=rows, device=device)
    sync(device)
    t0 = now()
    for i in range(n):
        acc.update(i, pair[0], pair[1])
    acc.mi.cpu()
    update_s = (now() - t0) / n
    step_s = min(off) / (work.steps * len(chunks))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    isolated = 100 * update_s / step_s
    return {
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "overhead_pct_iqr": [100 * (quartiles[0] - 1), 100 * (quartiles[2] - 1)],
        "overhead_pct_isolated": isolated,
        "ratios": ratios, "seconds_on": on, "seconds_off": off, "repeats": repeats,
        "clock": clock_name, "update_us": update_s * 1e6, "step_ms": step_s * 1e3,
        "images": work.images, "steps": work.steps, "batch": rows,
        "notes": (f"median of {repeats} paired on/off runs, IQR "
                  f"[{100 * (quartiles[0] - 1):+.1f}, {100 * (quartiles[2] - 1):+.1f}]%; "
                  f"the update alone costs {isolated:.2f}% of a plain step"),
    }
