"""`mitune shapes pool`: how much of a perfect selector's choice does each MI estimator make?

MI-TUNE keeps, among a prompt's candidates, the one with the highest MI. On prompts x candidates
from the bundled model at the operating guidance, every candidate is judged by the exact checker
(fully correct or not) and scored by every estimator variant. Per prompt: `kept` (is the variant's
top candidate fully correct), `pool` (the share of fully-correct candidates: what a random pick
keeps on average) and `oracle` (is any candidate fully correct: what a perfect selector keeps).

    pool selection efficiency = (mean kept - mean pool) / (mean oracle - mean pool)

0 is random selection, 1 a perfect selector, below 0 worse than random; the 95% interval
bootstraps prompts. Variants are chosen on validation prompts (the tuning split, disjoint from the
evaluation prompts) and reported on held-out evaluation prompts.

The re-noising variants share one pass: K uniform (t, eps) draws per prompt, shared by its
candidates, give each draw's value in both forms, and every re-noising variant is a subset of
those draws (the first K, or those in a band of t) in one form. The paper's trajectory form comes
free with sampling. Work is written per batch of prompts under `--out`, so a stopped run resumes.

    mitune shapes pool --out runs/pool          # 48 validation + 200 held-out prompts x 16
    mitune shapes pool --quick --out /tmp/pool  # the machinery only (CI)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np
import torch

from mitune_ray.config import GenerateSection, MISection
from mitune_ray.errors import MituneError
from mitune_ray.families import decode_latents, encode_prompts
from mitune_ray.imaging import to_uint8
from mitune_ray.metrics.agreement import bootstrap_two_level_interval
from mitune_ray.mi import draw_levels
from mitune_ray.models import ModelSpec, load_model
from mitune_ray.prompts import prompt_id
from mitune_ray.sampling import CandidateSampler, candidate_seed, derive_seed, prune_step
from mitune_ray.shapes.checker import check
from mitune_ray.shapes.prompts import eval_prompts, tune_prompts
from mitune_ray.storage import Store

BOOTSTRAPS = 2000


@dataclass(frozen=True)
class PoolScale:
    val_prompts: int = 48  # tuning-split prompts: where variants are compared and chosen
    # held-out evaluation prompts: where they are reported (0: none, for searching settings such
    # as the guidance on validation prompts alone)
    prompts: int = 200
    candidates: int = 16
    draws: int = 32  # uniform re-noising draws per prompt; variants use subsets of them
    steps: int = 25
    guidance: float = 7.5  # the operating guidance of the ShapesWorld bench
    batch_prompts: int = 4  # prompts per unit of resumable work (sampled in one denoiser batch)
    sampler: str = "ddpm"  # `generate.scheduler`: ddpm, ddim or dpmsolver
    # Fractions of the steps where a candidate could be pruned (`generate.prune.at`): at each, a
    # record keeps two partial scores of every candidate, read before the step a pruned sampler
    # drops it at: the trajectory MI so far (what `generate.prune` ranks by) and the point-wise
    # standard form of the clean latent predicted then, with `early_draws` draws shared by the
    # prompt's candidates. (): no partial scores (`mitune shapes frontier` asks for them).
    prune_at: tuple[float, ...] = ()
    early_draws: int = 4


QUICK = PoolScale(val_prompts=2, prompts=3, candidates=4, draws=8, steps=4, batch_prompts=2)


@dataclass(frozen=True)
class Variant:
    """A re-noising estimator as a subset of the shared draws, in one form."""

    form: str  # "standard" (point-wise) or "orthogonal" (the paper's)
    draws: int  # the first `draws` draws whose level lies in the band (at most that many)
    t_low: int = 50  # band: t_low < t <= t_high (t > 50 is the library's default)
    t_high: int = 999
    kappa: bool = True  # False: each level's term unweighted (kappa_t dropped)
    # How the chosen draws combine: "mean" (the estimator), or robust to a few heavy draws:
    # "median", "rank" (each draw ranks the candidates; ranks averaged), "zscore" (each draw's
    # values standardised across the prompt's candidates, then averaged).
    aggregate: str = "mean"
    # > 0: minus this many within-prompt z-scores of the paper's trajectory form (the squared
    # slope of the noisy classifier, largest where an image is ambiguous or contradicts the
    # prompt), added to the within-prompt z-scores of the draws' mean: point-wise MI, tempered by
    # how unstable the prompt's pull on the image was while it was sampled.
    trajectory_weight: float = 0.0

    @property
    def name(self) -> str:
        weight = ("" if self.kappa else ", unweighted") + (
            "" if self.aggregate == "mean" else f", {self.aggregate} over draws") + (
            f", minus {self.trajectory_weight:g} x the trajectory form (z-scores)"
            if self.trajectory_weight else "")
        if (self.t_low, self.t_high) == (50, 999):
            return f"{self.form} K={self.draws}{weight}"
        return f"{self.form}, those of K={self.draws} in t {self.t_low}..{self.t_high}{weight}"


def variants(draws: int) -> list[Variant]:
    """The levers the selector issue names: K, the noise band, the level weighting; both forms."""
    ks = [k for k in (8, 16, 32, 64) if k <= draws] or [draws]
    out = [Variant("orthogonal", min(16, draws))]
    out += [Variant("standard", k) for k in ks]
    out += [Variant("standard", draws, 50, high) for high in (300, 500, 700)]
    out += [Variant("standard", draws, low, 999) for low in (300, 500)]
    out += [Variant("standard", min(16, draws), kappa=False)]
    out += [Variant("standard", draws, aggregate=a) for a in ("median", "rank", "zscore")]
    out += [Variant("standard", draws, trajectory_weight=w) for w in (0.5, 1.0, 2.0)]
    return out


TRAJECTORY = "paper form along the trajectory, t>50"
REVERSED_TRAJECTORY = "paper form along the trajectory, t>50, lowest kept"


def _short(values: torch.Tensor) -> list:
    """Nested lists of 6 significant digits: the work files stay small enough to keep."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(
        values.double().cpu().numpy()).tolist()


def prompt_lists(scale: PoolScale) -> dict[str, list[str]]:
    lists = {"validation": tune_prompts(scale.val_prompts, seed=7)}
    if scale.prompts:
        lists["held_out"] = eval_prompts(scale.prompts, seed=0)
    return lists


def score_batch(sampler, texts: list[str], scale: PoolScale) -> list[dict]:
    """Every candidate of `texts`: the checker's verdict, the trajectory MI, and each shared
    re-noising draw's level and value in both forms (unweighted values are value / scale); with
    `scale.prune_at`, the partial scores at each pruning point too."""
    cond = encode_prompts(sampler.pipe, sampler.fam, texts, sampler.device)
    table = sampler.level_table()
    n = scale.candidates
    ids = [prompt_id(t) for t in texts]
    seeds = [candidate_seed(0, pid, 1, c) for pid in ids for c in range(n)]
    every = torch.arange(len(texts)).repeat_interleave(n)
    early: dict[int, list[float]] = {}
    for at in scale.prune_at:
        early.setdefault(prune_step(at, len(sampler.timesteps)) - 1, []).append(at)
    early_draws = [draw_levels(table, scale.early_draws, tuple(sampler.shape),
                               generator=torch.Generator().manual_seed(
                                   derive_seed("pool-early-draws", pid)))
                   for pid in ids] if early else []
    partial: dict[float, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def observe(i, t, x, guided, acc):
        if i in early:  # the scores a pruning rule would read before step i + 1
            clean = sampler.predicted_clean(x, guided, t)
            standard = [sampler.renoise_terms(clean[p * n:(p + 1) * n],
                                              cond.rows(every[p * n:(p + 1) * n]), draws)[0]
                        for p, draws in enumerate(early_draws)]
            for at in early[i]:
                partial[at] = (acc.mi.cpu().clone(), standard)

    _, latents, acc = sampler.sample(seeds, cond.rows(every),  # all the batch's candidates at once
                                     observe=observe if early else None)
    images = to_uint8(decode_latents(sampler.pipe, latents))
    trajectory = acc.mi.cpu()
    out = []
    for p, (text, pid) in enumerate(zip(texts, ids)):
        mine = slice(p * n, (p + 1) * n)
        verdicts = [check(text, image) for image in images[mine]]
        g = torch.Generator().manual_seed(derive_seed("pool-draws", pid))
        draws = draw_levels(table, scale.draws, tuple(latents.shape[1:]), generator=g)
        standard, orthogonal = sampler.renoise_terms(latents[mine], cond.rows(every[mine]), draws)
        out.append({
            "prompt": text, "prompt_id": pid,
            "correct": [float(v.all_correct) for v in verdicts],
            "fraction": [v.fraction for v in verdicts],
            "trajectory": trajectory[mine].tolist(),
            "levels": [float(table.levels[int(i)]) for i in draws.index],
            "scale": _short(draws.scale), "standard": _short(standard),
            "orthogonal": _short(orthogonal),
        } | ({"prune_at": list(scale.prune_at),
              "partial_trajectory": [partial[at][0][mine].tolist() for at in scale.prune_at],
              "early_standard": [_short(partial[at][1][p]) for at in scale.prune_at]}
             if scale.prune_at else {}))
    return out


def variant_draws(record: dict, variant: Variant) -> np.ndarray | None:
    """The draws a variant reads of one prompt, (draws, candidates): the first `variant.draws`
    in its band, in its form, weighted or not (None: no draw in its band)."""
    levels = np.array(record["levels"])
    chosen = np.flatnonzero((levels > variant.t_low) & (levels <= variant.t_high))[:variant.draws]
    if not len(chosen):
        return None
    values = np.array(record[variant.form], dtype=float)[chosen]
    return values if variant.kappa else values / np.array(record["scale"])[chosen, None]


def variant_scores(record: dict, variant: Variant) -> np.ndarray | None:
    """A variant's score of each candidate of one prompt (None: no draw in its band)."""
    values = variant_draws(record, variant)
    if values is None:
        return None
    if variant.aggregate == "median":
        return np.median(values, 0)
    if variant.aggregate == "rank":
        return np.argsort(np.argsort(values, 1, kind="stable"), 1).mean(0)
    if variant.aggregate == "zscore":
        return _zscore(values).mean(0)
    if variant.trajectory_weight:
        return _zscore(values.mean(0)) - variant.trajectory_weight * _zscore(record["trajectory"])
    return values.mean(0)


def _zscore(values) -> np.ndarray:
    """Values standardised across one prompt's candidates, the last axis (0 where they do not
    differ)."""
    values = np.asarray(values, dtype=float)
    spread = values.std(-1, keepdims=True)
    return (values - values.mean(-1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def efficiency_ratio(means) -> float:
    """(kept - pool) / (oracle - pool) of the mean (kept, pool, oracle) of a set of prompts (NaN
    where no prompt had room to select)."""
    room = means[2] - means[1]
    return float((means[0] - means[1]) / room) if room > 0 else float("nan")


def efficiency(rows: list[tuple[float, float, float]], *, seed: int = 0) -> dict:
    """Pool selection efficiency from (kept, pool, oracle) per prompt, with a percentile
    bootstrap interval over prompts (resamples where no prompt had room to select are dropped).

    Example:
        >>> efficiency([(1.0, 0.5, 1.0), (0.0, 0.5, 1.0)])["efficiency"]
        0.0
    """
    data = np.array(rows, dtype=float).reshape(-1, 3)
    # One replicate: the two-level bootstrap reduces to resampling the prompts.
    low, high = (bootstrap_two_level_interval([data], statistic=efficiency_ratio,
                                              n_boot=BOOTSTRAPS, seed=seed)
                 if len(data) else (float("nan"), float("nan")))
    kept, pool, oracle = (data.mean(0).tolist() if len(data) else [np.nan] * 3)
    return {"efficiency": efficiency_ratio(data.mean(0)) if len(data) else float("nan"),
            "ci": [low, high],
            "kept": kept, "pool": pool, "oracle": oracle, "prompts": len(data)}


def summarize(records: list[dict], draws: int) -> dict:
    """Per variant: the efficiency, its interval, and every prompt's kept verdict."""
    out = {}
    scorers = {TRAJECTORY: lambda rec: np.array(rec["trajectory"]),
               REVERSED_TRAJECTORY: lambda rec: -np.array(rec["trajectory"])} | {
        v.name: partial(variant_scores, variant=v) for v in variants(draws)}
    for name, scorer in scorers.items():
        rows, per_prompt = [], {}
        for rec in records:
            correct = np.array(rec["correct"])
            scores = scorer(rec)
            if scores is None:
                continue
            kept = float(correct[int(np.argmax(scores))])
            rows.append((kept, float(correct.mean()), float(correct.max())))
            per_prompt[rec["prompt_id"]] = kept
        out[name] = efficiency(rows) | {"kept_by_prompt": per_prompt}
    return out


SAMPLERS = ("ddpm", "ddim", "dpmsolver")


def pool_sampler(model_path: str, scale: PoolScale) -> CandidateSampler:
    """The bundled model's sampler at the pool's settings (MI along the trajectory: the paper's
    form comes free with sampling; the re-noising draws are scored separately)."""
    pipe, fam, device, dtype = load_model(ModelSpec(model_path))
    gen = GenerateSection(candidates=scale.candidates, keep=1, steps=scale.steps,
                          guidance=scale.guidance, max_batch=64, scheduler=scale.sampler)
    return CandidateSampler(pipe, fam, gen, MISection.paper(), device=device, dtype=dtype)


def score_split(sampler: CandidateSampler, out: Store, split: str, texts: list[str],
                scale: PoolScale, log=print) -> list[dict]:
    """Every prompt's record (`score_batch`), scored now or read back from `out`."""
    records: list[dict] = []
    start = time.perf_counter()
    for i in range(0, len(texts), scale.batch_prompts):
        rel = f"{split}/part-{i:05d}.json"
        if not out.exists(rel):
            out.write_bytes(rel, json.dumps(score_batch(
                sampler, texts[i : i + scale.batch_prompts], scale)).encode())
            log(f"[pool] {split}: {min(i + scale.batch_prompts, len(texts))}/{len(texts)} "
                f"prompts scored ({time.perf_counter() - start:.0f}s)")
        records += json.loads(out.read_bytes(rel))
    return records


# What a work folder's records depend on: a rerun with other values would mix pools.
WORK_KEYS = ("candidates", "draws", "steps", "guidance", "batch_prompts", "sampler", "prune_at",
             "early_draws")
WORK = "work.json"


def check_work(out: Store, scale: PoolScale, model_path: str) -> None:
    """Record what `out`'s records are scored with, or refuse a rerun that would mix them."""
    want = json.loads(json.dumps({k: getattr(scale, k) for k in WORK_KEYS} | {"model": model_path}))
    if not out.exists(WORK):
        out.write_json(WORK, want)
        return
    # A folder from before a key existed was scored as that key's default says.
    have = {k: getattr(PoolScale(), k) for k in WORK_KEYS} | out.read_json(WORK)
    have = json.loads(json.dumps(have))
    changed = [f"{k} {have.get(k)!r} -> {v!r}" for k, v in want.items() if have.get(k) != v]
    if changed:
        raise MituneError(f"the pool work folder {out.uri} was scored with other settings "
                          f"({'; '.join(changed)}): use another --out, or the same settings")


def score_pool(model_path: str, out: Store, scale: PoolScale, log=print) -> dict[str, list]:
    """Every prompt list's records (`score_batch`), scored now or read back from `out`, whose
    settings are checked first (`check_work`)."""
    check_work(out, scale, model_path)
    sampler = pool_sampler(model_path, scale)
    return {split: score_split(sampler, out, split, texts, scale, log)
            for split, texts in prompt_lists(scale).items()}


def run_pool(model_path: str, out: Store, scale: PoolScale, log=print) -> dict:
    """Score (or resume scoring) both prompt lists and summarize every variant on each."""
    result: dict = {"scale": asdict(scale), "model": model_path, "splits": {}}
    for split, records in score_pool(model_path, out, scale, log).items():
        result["splits"][split] = {"prompts": len(records), "variants": summarize(records, scale.draws),
                                   "records": [{k: r[k] for k in ("prompt_id", "prompt", "correct")}
                                               for r in records]}
    val = result["splits"]["validation"]["variants"]
    finite = {k: v["efficiency"] for k, v in val.items() if np.isfinite(v["efficiency"])}
    result["chosen_on_validation"] = max(finite, key=finite.get) if finite else None
    return result


def table_lines(result: dict) -> list[str]:
    splits = result["splits"]
    shown = "held_out" if "held_out" in splits else "validation"
    lines = [f"| variant | validation efficiency | {shown} efficiency [95% CI] | {shown} kept |",
             "|---|---|---|---|"]
    held = splits[shown]["variants"]
    for name, val in splits["validation"]["variants"].items():
        h = held[name]
        mark = " (chosen)" if name == result["chosen_on_validation"] else ""
        lines.append(f"| {name}{mark} | {val['efficiency']:+.2f} | {h['efficiency']:+.2f} "
                     f"[{h['ci'][0]:+.2f}, {h['ci'][1]:+.2f}] | {h['kept']:.0%} of {h['prompts']} "
                     f"(random {h['pool']:.0%}, perfect {h['oracle']:.0%}) |")
    return lines


def work_parser(command: str, description: str, result_file: str) -> argparse.ArgumentParser:
    """The arguments `mitune shapes pool` and `frontier` share: the work folder, the result's
    extra copy, the model and --quick."""
    parser = argparse.ArgumentParser(prog=f"mitune shapes {command}", description=description)
    parser.add_argument("--out", default=f"runs/shapes-{command}",
                        help="work folder, local or s3:// (a rerun resumes from it)")
    parser.add_argument("--json", help=f"also write the result here (default: OUT/{result_file})")
    parser.add_argument("--model", default="bundled:shapes", help="a ShapesWorld diffusers folder")
    parser.add_argument("--quick", action="store_true", help="a tiny run: the machinery only")
    return parser


def write_result(out: Store, result_file: str, result: dict, copy: str | None) -> None:
    """The result as JSON at `OUT/result_file`, and at `copy` too when given (--json)."""
    text = json.dumps(result, indent=1)
    out.write_bytes(result_file, text.encode())
    if copy:
        with open(copy, "w", encoding="utf-8") as f:
            f.write(text)


# PoolScale fields `mitune shapes pool` leaves at their defaults: the frontier's pruning points.
FRONTIER_ONLY = ("prune_at", "early_draws")


def main(argv: list[str]) -> int:
    parser = work_parser("pool", "pool selection efficiency of every MI estimator variant on "
                                 "ShapesWorld", "pool.json")
    for field, default in asdict(PoolScale()).items():
        if field in FRONTIER_ONLY:
            continue
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=None,
                            help=f"default {default} ({QUICK.__dict__[field]} with --quick)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else PoolScale()
    scale = replace(base, **{f: getattr(args, f) for f in asdict(base)
                             if f not in FRONTIER_ONLY and getattr(args, f) is not None})
    if scale.sampler not in SAMPLERS:
        parser.error(f"--sampler {scale.sampler} is not one of {', '.join(SAMPLERS)}")
    for field, value in asdict(scale).items():
        if field == "sampler" or field in FRONTIER_ONLY:
            continue
        if not (value > 0 or (field == "prompts" and value == 0)):
            least = "0 (no held-out prompts)" if field == "prompts" else "above 0"
            parser.error(f"--{field.replace('_', '-')} {value} must be {least}")
    out = Store(args.out)
    result = run_pool(args.model, out, scale)
    result["command"] = "mitune shapes pool " + " ".join(argv)
    write_result(out, "pool.json", result, args.json)
    print("\n".join(table_lines(result)))
    return 0
