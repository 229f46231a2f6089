"""The Ray Data generation stage's throughput against the same work in one process.

The same prompts (same ids, so the same seeds), model and settings go through `generate_round` on a
Ray cluster with N actors, and through `CandidateSampler.generate` in this process, in the same
batches of prompts and decoding the selected candidates as the stage does. Both sides include
loading the model (an actor pays for it too); the stage also writes its parquet shards, so the
end-to-end ratio prices Ray Data's whole overhead: actor start-up, a model load per actor, block
transfers and the writes.

On a small machine actor start-up (tens of seconds under load) dominates small work, so a
steady-state ratio is also estimated from the times the stage's output shards were written: after
each actor's first batch, the stage's rate is (shards written since) / (time since), against the
in-process rate without its model load.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mitune_ray import layout
from mitune_ray.config import GenerateSection, MISection, PromptsSection, RaySection


def _steady_rate(out_dir: Path, actors: int, prompts_per_batch: int) -> float | None:
    """Prompts/s of the stage after every actor wrote its first shard (None if too few shards)."""
    times = sorted(p.stat().st_mtime for p in (out_dir / layout.SELECTED).glob("*.parquet"))
    if len(times) <= actors or times[-1] <= times[actors - 1]:
        return None
    return (len(times) - actors) * prompts_per_batch / (times[-1] - times[actors - 1])


def compare(model: str, texts: list[str], gen: GenerateSection, *, actors: list[int],
            cpus_per_actor: float = 0.5, workdir: str | None = None) -> dict[str, Any]:
    """In-process seconds and, per actor count, the stage's seconds and throughput ratios."""
    import ray

    from mitune_ray.stages.generate import generate_round
    from mitune_ray.models import ModelSpec, load_model
    from mitune_ray.prompts import prepare_corpus, prompt_id
    from mitune_ray.runtime import ensure_ray
    from mitune_ray.sampling import CandidateSampler, Prompt
    from mitune_ray.storage import Store

    mi = MISection.paper()  # the sampler loop alone, as the figures it is compared with
    spec = ModelSpec(model)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="mitune-bench-ray-"))
    source = tmp / "prompts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    store = Store(str(tmp / "corpus"))
    report = prepare_corpus([str(source)], store, settings=PromptsSection(val_fraction=0.0))
    # Four batches per actor of the largest pool: three in each actor's steady state.
    per_batch = max(1, len(texts) // (4 * max(actors)))

    t0 = time.perf_counter()
    pipe, fam, device, dtype = load_model(spec)
    sampler = CandidateSampler(pipe, fam, gen, mi, device=device, dtype=dtype)
    loaded = time.perf_counter()
    prompts = [Prompt(prompt_id(t), t) for t in texts]
    for i in range(0, len(prompts), per_batch):
        sampler.generate(prompts[i : i + per_batch], 1)
    done = time.perf_counter()
    local_s, local_rate = done - t0, len(prompts) / (done - loaded)
    out: dict[str, Any] = {
        "inprocess_s": local_s, "inprocess_load_s": loaded - t0,
        "inprocess_generate_s": done - loaded, "inprocess_threads": torch.get_num_threads(),
        "prompts": report.train, "prompts_per_batch": per_batch, "candidates": gen.candidates,
        "steps": gen.steps, "model": model, "per_actors": {},
    }
    del pipe, sampler

    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    # Logical CPUs beyond the cores, so fractional actors never starve the read tasks.
    ensure_ray(RaySection(num_cpus=max(4, os.cpu_count() or 1)))
    out["ray_init_s"] = time.perf_counter() - t0
    context = ray.data.DataContext.get_current()
    progress = context.enable_progress_bars
    context.enable_progress_bars = False
    logging.disable(logging.INFO)  # Ray Data's per-dataset INFO lines, in the bench's output
    try:
        for n in actors:
            settings = gen.model_copy(update={"actors": n, "cpus_per_actor": cpus_per_actor,
                                              "prompts_per_batch": per_batch})
            target = tmp / layout.round_dir(n)
            t0 = time.perf_counter()
            summary = generate_round(model=spec, gen=settings, mi=mi, round_index=1, prompts=store,
                                     shards=list(report.shards), out=Store(str(target)),
                                     gpus_per_actor=0.0 if device.type == "cpu" else None,
                                     expected_prompts=report.train, log=lambda *_: None)
            stage_s = time.perf_counter() - t0
            steady = _steady_rate(target, n, per_batch)
            out["per_actors"][str(n)] = {
                "stage_s": stage_s, "actors_used": len(summary.actors),
                "throughput_ratio": local_s / stage_s,
                "steady_ratio": steady / local_rate if steady else None,
            }
    finally:
        logging.disable(logging.NOTSET)
        context.enable_progress_bars = progress
        if started_here:
            ray.shutdown()
    best = max(out["per_actors"].values(), key=lambda r: r["throughput_ratio"])
    out["throughput_ratio"] = best["throughput_ratio"]
    out["notes"] = "; ".join(
        f"{n} actor(s): x{r['throughput_ratio']:.2f} end to end"
        + (f", x{r['steady_ratio']:.2f} steady state" if r["steady_ratio"] else "")
        for n, r in out["per_actors"].items()) + " vs one process"
    return out
