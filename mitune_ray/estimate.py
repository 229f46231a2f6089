"""`mitune plan`: the work a config asks for, counted before anything runs, and its GPU-hours.

Prompts are counted from the configured sources the way the prompts stage would keep them
(normalised, de-duplicated, split by id, the `max_prompts` sample), without generating anything:
bundled, local and registered (`shapes:...`) sources are read, `s3://` ones are not (then the
count is `prompts.max_prompts`, or the work is given per 1,000 prompts). The work, per round:

- generation: prompts x candidates, each `generate.steps` x 2 denoiser rows (classifier-free
  guidance: a conditional and an unconditional prediction) plus, for `mi.estimator=renoise`,
  `mi.renoise_draws` x 2 rows of re-noising MI (pruning, when on, cuts the rows after its step);
- training: optimizer steps x the effective batch (batch_size x grad_accum x workers) samples,
  and the validation images of every checkpoint (sampling only, no re-noising);
- evaluation (`run.evaluate`): every version (the base model once, then each round) generates
  `eval.candidates` per evaluation prompt the way generation does.

GPU-hours come from the throughput measured on one H100 (`bench/measured.py`): a denoiser row
costs 1 / (images/s per 100 CFG steps x 200) seconds at the measured resolution, scaled by the
pixel count at another. The range runs from that to `PESSIMISTIC` times it: the bench leaves out
text encoding, VAE decoding, model loading and compile warm-up, Ray Data and storage, and partial
batches; the re-noising rows, SD-2.1's and SD3.5's training and the evaluation metrics (BLIP-VQA,
CLIPScore, HPS) are not measured.

Example:
    >>> from mitune_ray.config import load_config
    >>> print(plan_text(load_config(None, ["prompts.train=[bundled:t2i-compbench/color_train]",
    ...                                    "model.path=s3://b/sd", "model.family=sd"]), "example")
    ...       )  # doctest: +ELLIPSIS
    mitune plan example: sd model s3://b/sd at 512 px, 3 rounds
    prompts: 642 tuned on, 37 held out for validation (of 679 kept); no evaluation
    ...
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

from mitune_ray.bench import measured
from mitune_ray.config import Config, GenerateSection, TrainSection, effective_batch
from mitune_ray.driver import materialize_sources, model_family, resolve
from mitune_ray.families import FAMILIES
from mitune_ray.models import BUNDLED_PREFIX, TINY_PREFIX
from mitune_ray.prompts import corpus_ids
from mitune_ray.storage import Store, is_s3

PESSIMISTIC = 2.0  # the top of the GPU-hours range: this many times the measured throughput's
PER_PROMPTS = 1000  # the unit of work where the prompt count is unknown


@dataclass(frozen=True)
class PromptCount:
    """Prompts the prompts stage would keep (None: a source that plan does not read)."""

    train: int | None  # tuned on (the training split, less evaluation prompts)
    val: int | None  # held out of tuning: checkpoint validation
    eval: int | None  # evaluation prompts (after eval.max_prompts); 0 without prompts.eval
    unread: tuple[str, ...]  # s3:// sources, not read
    capped: bool = False  # train is prompts.max_prompts, an upper bound (a source not read)


@dataclass(frozen=True)
class Work:
    """The work of one run, per round unless named otherwise (`estimate`)."""

    family: str | None  # None: model.family=auto on a remote model
    resolution: int | None  # pixels; None: the model's own, unknown
    rounds: int
    prompts: PromptCount
    per_prompts: int | None  # counted for this many train prompts (the real count is unknown)
    candidates: int  # generated per round
    sample_rows: int  # denoiser rows per candidate for sampling (CFG, after pruning)
    mi_rows: int  # denoiser rows per candidate for re-noising MI
    kept: int  # selected images per round
    train: TrainSection  # with the family's defaults where the config leaves them unset
    train_samples: int  # per round
    checkpoints: int  # per round
    validation_prompts: int  # scored at every checkpoint
    validation_rows: int  # per round
    eval_rows: int  # per evaluated version
    versions: int  # evaluated versions in the whole run (0: run.evaluate=false)

    @property
    def generate_rows(self) -> int:
        return self.candidates * (self.sample_rows + self.mi_rows)


def _count(sources: list[str], cfg: Config, split_name: str | None) -> tuple[dict | None, list]:
    """(prompt id -> split, or None where a source is remote), and the remote sources."""
    remote = [s for s in sources if is_s3(s)]
    if remote:
        return None, remote
    with tempfile.TemporaryDirectory(prefix="mitune-plan-") as tmp:
        local = materialize_sources(sources, Store(tmp),  # e.g. shapes:train:64, as text files
                                    "prompts.eval" if split_name else "prompts.train")
        return corpus_ids(local, settings=cfg.prompts, split_name=split_name), []


def count_prompts(cfg: Config) -> PromptCount:
    """The prompts a run of `cfg` tunes on, validates with and evaluates on."""
    train, unread = _count(cfg.prompts.train, cfg, None) if cfg.prompts.train else ({}, [])
    ev, eval_unread = _count(cfg.prompts.eval, cfg, "eval") if cfg.prompts.eval else ({}, [])
    n_eval = None if ev is None else len(ev)
    if n_eval is not None and cfg.eval.max_prompts is not None:
        n_eval = min(n_eval, cfg.eval.max_prompts)
    if train is None:
        cap = cfg.prompts.max_prompts
        return PromptCount(cap, None, n_eval, tuple(unread + eval_unread), capped=cap is not None)
    tuned = {pid for pid, split in train.items() if split == "train"}
    overlap = len(tuned & set(ev or {}))  # evaluation prompts are never tuned on
    return PromptCount(len(tuned) - overlap, len(train) - len(tuned), n_eval,
                       tuple(eval_unread))


def _family(cfg: Config) -> str | None:
    if cfg.model.family != "auto":
        return cfg.model.family
    if is_s3(cfg.model.path):
        return None  # not read: set model.family
    return model_family(cfg).name  # from the folder's model_index.json


def rows_per_candidate(gen: GenerateSection, draws: int | None) -> tuple[int, int]:
    """(sampling, re-noising MI) denoiser rows per candidate, averaged over a prompt's candidates
    (`draws`: mi.renoise_draws, None for the trajectory estimator, which costs no extra row).

        >>> rows_per_candidate(GenerateSection(candidates=50, steps=100), 32)
        (200, 64)
    """
    n, steps = gen.candidates, gen.steps
    survivors = n
    sample = 2 * steps * n
    if gen.prune.enabled and gen.prune.keep < 1.0:
        at = round(gen.prune.at * steps)
        survivors = max(math.ceil(gen.prune.keep * n), min(gen.keep, n))
        sample = 2 * (at * n + (steps - at) * survivors)
    mi = 0 if draws is None else 2 * draws * survivors
    return round(sample / n), round(mi / n)


def estimate(cfg: Config) -> Work:
    """Count the work of a run of `cfg` (the family's training defaults filled in)."""
    family = _family(cfg)
    if family is not None:  # the family's training defaults, as the run will resolve them
        cfg = resolve(cfg, FAMILIES[family])
    prompts = count_prompts(cfg)
    per_prompts = PER_PROMPTS if prompts.train is None else None
    n_train = per_prompts or prompts.train
    gen, train = cfg.generate, cfg.train
    draws = cfg.mi.renoise_draws if cfg.mi.estimator == "renoise" else None
    sample_rows, mi_rows = rows_per_candidate(gen, draws)
    steps = train.steps or 0  # unset: an unknown family's default
    checkpoints = (steps // train.checkpoint_every + (steps % train.checkpoint_every > 0)
                   if train.validation_prompts else 0)
    scored = (train.validation_prompts if prompts.val is None  # not counted: assume enough
              else min(train.validation_prompts, prompts.val))
    validation = checkpoints * scored * train.validation_candidates * 2 * gen.steps
    ev_gen = gen.model_copy(update={"candidates": cfg.eval.candidates, "keep": cfg.eval.candidates,
                                    "prune": gen.prune.model_copy(update={"enabled": False})})
    eval_sample, eval_mi = rows_per_candidate(ev_gen, draws)
    evaluating = cfg.run.evaluate and bool(cfg.prompts.eval)
    resolution = cfg.model.resolution or (  # unset: the measured model's, for a real one
        measured.GENERATION[family].resolution
        if family in measured.GENERATION and not _small(cfg.model.path) else None)
    return Work(
        family=family, resolution=resolution, rounds=cfg.run.rounds, prompts=prompts,
        per_prompts=per_prompts, candidates=n_train * gen.candidates, sample_rows=sample_rows,
        mi_rows=mi_rows, kept=n_train * gen.keep, train=train,
        train_samples=steps * (effective_batch(train) or 0), checkpoints=checkpoints,
        validation_prompts=scored, validation_rows=validation,
        eval_rows=(prompts.eval or 0) * cfg.eval.candidates * (eval_sample + eval_mi),
        versions=cfg.run.rounds + 1 if evaluating else 0)


@dataclass(frozen=True)
class Hours:
    """GPU-hours of one run, from the measured throughput (low) to `PESSIMISTIC` times it."""

    generate: float  # all rounds
    train: float
    evaluate: float
    row_s: float  # GPU-seconds per denoiser row at the run's resolution
    sample_s: float  # GPU-seconds per training sample
    generation_rate: float  # the measured images/s per 100 CFG steps used
    training_measured: bool  # False: estimated from SD-XL's by forward FLOPs

    @property
    def total(self) -> float:
        return self.generate + self.train + self.evaluate


def gpu_hours(work: Work, cfg: Config) -> Hours | None:
    """The low end of the range (None: no measured throughput for this model)."""
    rate = measured.GENERATION.get(work.family or "")
    if rate is None or _small(cfg.model.path) or not work.resolution:
        return None
    pixels = (work.resolution / rate.resolution) ** 2
    images_per_s = rate.images_per_s(compiled=cfg.generate.compile)
    row_s = pixels / (images_per_s * measured.ROWS_PER_IMAGE)
    trained = measured.TRAINING.get(work.family)
    if trained is None:  # scaled from SD-XL's by the FLOPs of one forward
        base = measured.TRAINING["sdxl"]
        ratio = measured.GENERATION["sdxl"].forward_tflop / rate.forward_tflop
        sample_s = pixels / (base.samples_per_s * ratio)
    else:
        sample_s = pixels / trained.samples_per_s
    rounds = work.rounds
    return Hours(
        generate=rounds * work.generate_rows * row_s / 3600,
        train=rounds * (work.train_samples * sample_s + work.validation_rows * row_s) / 3600,
        evaluate=work.versions * work.eval_rows * row_s / 3600,
        row_s=row_s, sample_s=sample_s, generation_rate=images_per_s,
        training_measured=trained is not None)


def _small(model_path: str) -> bool:
    """A model shipped in the package or built for tests: no measured throughput applies."""
    return model_path.startswith((BUNDLED_PREFIX, TINY_PREFIX))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _range(hours: float) -> str:
    low, high = hours, hours * PESSIMISTIC
    digits = 2 if high < 1 else (1 if high < 100 else 0)
    return f"{low:,.{digits}f} to {high:,.{digits}f}"


def _prompt_line(p: PromptCount, cfg: Config) -> str:
    if p.train is None:
        text = (f"prompts: not counted ({', '.join(p.unread)} not read); the work below is per "
                f"{PER_PROMPTS:,} prompts tuned on")
    elif p.capped:
        text = (f"prompts: at most {_n(p.train)} tuned on (prompts.max_prompts; "
                f"{', '.join(u for u in p.unread if u in cfg.prompts.train)} not read)")
    else:
        text = f"prompts: {_n(p.train)} tuned on, {_n(p.val)} held out for validation " \
               f"(of {_n(p.train + p.val)} kept)"
    if not cfg.prompts.eval:
        return text + "; no evaluation"
    ev = ("not counted (" + ", ".join(u for u in p.unread if u in cfg.prompts.eval) + " not read)"
          if p.eval is None else _n(p.eval))
    return text + f"; {ev} for evaluation" + ("" if cfg.run.evaluate else " (run.evaluate=false)")


def plan_text(cfg: Config, source: str) -> str:
    """What `mitune plan` prints for `cfg` (read from `source`)."""
    work, gen = estimate(cfg), cfg.generate
    resolution = f"{work.resolution} px" if work.resolution else "its own resolution"
    family = work.family or "unknown family (model.family=auto on a remote model: set it)"
    lines = [f"mitune plan {source}: {family} model {cfg.model.path} at {resolution}, "
             f"{work.rounds} rounds", _prompt_line(work.prompts, cfg), "per round:"]
    mi = (f" + {cfg.mi.renoise_draws} draws x 2 (re-noising MI)" if work.mi_rows else
          " (trajectory MI: no extra row)")
    pruned = " after pruning" if gen.prune.enabled and gen.prune.keep < 1.0 else ""
    lines += [
        f"  generate  {_n(work.candidates // gen.candidates)} prompts x {gen.candidates} "
        f"candidates = {_n(work.candidates)} candidates, keep {gen.keep} each ({_n(work.kept)} "
        "images)",
        f"            denoiser rows a candidate: {gen.steps} steps x 2 (CFG){pruned}{mi} = "
        f"{work.sample_rows + work.mi_rows}; {_n(work.generate_rows)} rows",
    ]
    t = work.train
    if work.train_samples:
        passes = (f", {work.train_samples / work.kept:,.1f} passes over the kept images"
                  if work.kept else "")
        batch = f"{t.batch_size} x grad_accum {t.grad_accum} x {_plural(t.workers, 'worker')}"
        lines.append(f"  train     {_n(t.steps)} steps x {effective_batch(t)} samples ({batch}) "
                     f"= {_n(work.train_samples)} samples{passes}")
    else:
        lines.append("  train     steps unknown (train.steps and grad_accum unset, the family "
                     "unknown)")
    if work.validation_rows:
        lines.append(f"            validation: {work.checkpoints} checkpoints x "
                     f"{work.validation_prompts} prompts x "
                     f"{t.validation_candidates} candidates x {gen.steps * 2} rows = "
                     f"{_n(work.validation_rows)} rows")
    if work.versions:
        lines.append(f"  evaluate  {_n(work.prompts.eval)} prompts x {cfg.eval.candidates} "
                     f"candidates: {_n(work.eval_rows)} rows a version, {work.versions} versions "
                     "in the run (the base model, then each round)")
    hours = gpu_hours(work, cfg)
    if hours is None:
        lines.append("GPU-hours: no measured throughput for this model (the bench measured "
                     "SD-2.1-base, SD-XL and SD3.5-medium at their real sizes)")
        return "\n".join(lines)
    rate = measured.GENERATION[work.family]
    compiled = "compiled" if gen.compile and rate.compiled is not None else "eager"
    trained = ("measured" if hours.training_measured else
               "estimated from SD-XL's by FLOPs per forward, not measured")
    per = f" per {PER_PROMPTS:,} prompts" if work.per_prompts else ""
    lines += [
        f"GPU-hours on one {measured.CARD}{per}, all {work.rounds} rounds: measured "
        f"throughput to x{PESSIMISTIC:g} (docs/configuration.md, mitune plan)",
        f"  generate  {_range(hours.generate)}  ({hours.generation_rate:g} images/s per 100 CFG "
        f"steps, {compiled}, measured {measured.DATE} at {rate.resolution} px)",
        f"  train     {_range(hours.train)}  ({1 / hours.sample_s:.2f} samples/s, {trained}; "
        "validation images included)",
    ]
    if work.versions:
        lines.append(f"  evaluate  {_range(hours.evaluate)}  (image generation and MI; "
                     "BLIP-VQA / CLIPScore / HPS not counted)")
    wall = (hours.generate / gen.actors + hours.train / t.workers
            + hours.evaluate / cfg.eval.actors)
    lines.append(f"  total     {_range(hours.total)}; about {_range(wall)} hours of wall clock on "
                 f"{_plural(gen.actors, 'generation actor')}, "
                 f"{_plural(t.workers, 'training worker')} and "
                 f"{_plural(cfg.eval.actors, 'evaluation actor')}")
    return "\n".join(lines)

