"""`mitune shapes bench`: does MI agree with the exact checker, and does MI-TUNE raise alignment?

1. Agreement: held-out prompts x candidates from the bundled model, each candidate scored by
   several MI estimator variants, by the checker, and by its background noise (a confounder:
   a prototype's MI tracked noisy backgrounds). Kendall tau within prompt, averaged, with a 95%
   bootstrap interval over prompts.
2. MI-TUNE: the full loop (Ray Data generation, Ray Train + DeepSpeed DoRA, the driver) for
   several rounds, three arms that differ only in how candidates are selected: by MI, at random,
   and by the checker (an oracle upper bound). Each arm tunes on held-out combinations that never
   restate an evaluation prompt (`shapes:tune:N`, as the paper tunes on a category's training
   prompts; `--tune-split train` tunes on the base model's training split instead), evaluates the
   base model and every round on held-out prompts with the same seeds, and reports the gain in
   fully-correct rate over the base model with a paired 95% bootstrap interval over prompts, and
   how good the selected training sets were (the checker on the kept images), and which kinds of
   fact (objects, sizes, relations) every version's evaluation images get right; part 1 also
   gives tau between MI and each kind.

    mitune shapes bench                 # ~15 minutes per arm and round on 2 idle CPU cores
    mitune shapes bench --rounds 1 --scale train_prompts=96    # any workload setting
    mitune shapes bench --scale control_guidance=5   # every version evaluated at 5 too
    mitune shapes bench --quick         # the machinery only (CI), a few minutes
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import get_args

import numpy as np
import pyarrow.parquet as pq
import torch

from mitune_ray import layout
from mitune_ray.config import GenerateSection, MISection, RunSection, load_config
from mitune_ray.storage import Store

ARMS = ("mi", "random", "checker")


@dataclass(frozen=True)
class Scale:
    # The result files these comments name are in the repository's research/shapes/results/.
    agree_prompts: int = 128  # 16 gave intervals of +-0.2: too wide to tell tau 0.1 from 0
    agree_candidates: int = 8
    steps: int = 25
    # Part 2's fine-tuning step: a GPU sweep in one process (`python -m research.shapes.sweep`,
    # H100, 2026-11-27) found that 46 kept images a round (48 prompts, keep 1) at lr 1e-4 move
    # nothing, and that 6e-4 memorises them; 384 kept images (192 prompts, keep 2). On the model
    # shipped 2026-12-06 the sweep's recipe (600 steps of 16 at lr 2e-4, the loss weighting and
    # timesteps below, a fresh adapter on the accumulated kept sets) raised the oracle by +13
    # points, and through this bench MI-TUNE by +10.5 after three rounds
    # (`bench-curriculum-guidance7.5.json`): these defaults.
    train_prompts: int = 192
    keep: int = 2
    eval_prompts: int = 128
    candidates: int = 16
    rounds: int = 3
    train_steps: int = 600
    train_batch: int = 8  # per worker; two workers
    lr: float = 2e-4
    eval_candidates: int = 4  # 2 gave intervals of +-7 points
    # Classifier-free guidance of generation and evaluation alike: the 2026-11-27 model's best
    # (held out, 128 x 2: 46.9% / 49.2% / 39.1% fully correct at 3 / 5 / 7.5; the model shipped
    # 2026-12-06: 68.0% / 64.5% / 48.0%, 3 and 5 within noise of each other). 7.5 is the
    # paper's, and where MI agrees with the checker on the model shipped 2026-12-06 (tau +0.23;
    # +0.05 at 5). On a model over-guided there a gain can come from tolerating over-guidance
    # (the previous model: guidance-control.json), hence `control_guidance`.
    guidance: float = 7.5
    # Prompts MI-TUNE tunes on: "tune" (held-out combinations, none restating an evaluation
    # prompt: the paper's train/validation prompts of one category) or "train" (the base
    # model's own training split: improvements must then transfer to unseen combinations).
    tune_split: str = "tune"
    # How every arm's MI is estimated (the "mi" arm selects by it): "standard" (re-noising the
    # final latent, K = 16, with the point-wise standard form: the only estimator whose tau with
    # the checker is above zero in part 1) or "paper" (the trajectory estimator, MI-TUNE's
    # default, tau -0.22 on the current model).
    mi: str = "standard"
    # The fine-tuning loss's `train.loss_weight_cap` (1: plain epsilon MSE, the loop's default;
    # 100: the weighting the shipped model was trained with): epsilon MSE hardly weighs the
    # high-noise steps where a layout is decided (`probe.py`).
    loss_weight_cap: float = 100.0
    # `train.min_timestep`: fine-tune on timesteps min_timestep..999 only (0: all). The sweep
    # (`sweep-cpu-grid.json`) found the model's own samples unlike real images at low noise.
    min_timestep: int = 700
    # `run.chaining`: "fresh" (a new adapter on the base model each round, the reference's) or
    # "continue" (each round trains the previous round's adapter on). In the sweep on the model
    # shipped 2026-12-06, "continue" lost the oracle's round-1 gain in round 2 (+8.2, then -0.4
    # points; `sweep-curriculum-guidance7.5.json`).
    chaining: str = "fresh"
    # `run.accumulate`: train round r on the kept images of rounds 1..r, not its own only. With a
    # fresh adapter each round, the same sweep's oracle kept its gain over three rounds (+8.2,
    # +13.3, +8.4 points); without, on an earlier model, +4.3, +5.1, +2.0 (`sweep-cpu-arms.json`).
    accumulate: bool = True
    # > 0: also evaluate the base model and every round at this guidance (`mitune eval
    # --guidance`), each gain over the base at it: is a gain at `guidance` better binding, or a
    # tolerance of that guidance (as on the 2026-11-27 model, `guidance-control.json`)? 0: not.
    control_guidance: float = 5.0


MI_SETTINGS = {"paper": MISection.paper(),
               "standard": MISection(estimator="renoise", renoise_draws=16, form="standard")}


QUICK = Scale(agree_prompts=3, agree_candidates=4, steps=6, train_prompts=6, keep=1, eval_prompts=4,
              candidates=3, rounds=1, train_steps=2, train_batch=2, eval_candidates=1)


def background_noise(image: np.ndarray) -> float:
    """Mean distance from white of the pixels the checker calls background (tint and speckle)."""
    from mitune_ray.shapes.checker import classify_pixels

    labels, _ = classify_pixels(image)
    bg = image[labels < 0].astype(np.float32)
    return float(np.abs(255.0 - bg).mean()) if len(bg) else float("nan")


def _variants(scale: Scale) -> dict[str, MISection]:
    return {
        "trajectory t>50 (paper)": MISection.paper(),
        "trajectory t>0": MISection.paper(t_min=0),
        "trajectory t>300 (high noise)": MISection.paper(t_min=300),
        "renoise K=16 (final latent)": MISection(estimator="renoise", renoise_draws=16,
                                                 form="orthogonal"),
        "renoise K=16, standard form": MI_SETTINGS["standard"],
    }


def agreement(model_path: str, scale: Scale, log=print) -> dict:
    """Part 1: tau(MI, checker) and tau(MI, background noise) per estimator variant."""
    from mitune_ray.metrics.agreement import kendall_agreement
    from mitune_ray.models import ModelSpec, load_model
    from mitune_ray.prompts import prompt_id
    from mitune_ray.sampling import CandidateSampler, Prompt
    from mitune_ray.shapes.checker import FACT_KINDS, check
    from mitune_ray.shapes.prompts import eval_prompts

    pipe, fam, device, dtype = load_model(ModelSpec(model_path))
    texts = eval_prompts(scale.agree_prompts, seed=1)
    prompts = [Prompt(prompt_id(t), t) for t in texts]
    gen = GenerateSection(candidates=scale.agree_candidates, keep=1, steps=scale.steps,
                          guidance=scale.guidance, max_batch=64)
    out: dict = {"prompts": len(prompts), "candidates": scale.agree_candidates, "variants": {}}
    checker = noise = ids = by_kind = None
    for name, mi in _variants(scale).items():
        start = time.perf_counter()
        sampler = CandidateSampler(pipe, fam, gen, mi, device=device, dtype=dtype)
        results = sampler.generate(prompts, 1, gallery=frozenset(p.prompt_id for p in prompts))
        if checker is None:  # the same seeds give the same images for every variant
            checker, noise, ids, by_kind = [], [], [], {kind: [] for kind in FACT_KINDS}
            for res in results:
                for _, image in sorted(res.gallery, key=lambda x: x[0]):
                    result = check(res.prompt.text, image)
                    checker.append(result.fraction)
                    noise.append(background_noise(image))
                    ids.append(res.prompt.prompt_id)
                    for kind in FACT_KINDS:
                        held = result.holds(kind)
                        by_kind[kind].append(float(np.mean(held)) if held else None)
        values = [v for res in results for v in res.mi]
        tau_c = kendall_agreement(values, checker, ids)
        tau_n = kendall_agreement(values, noise, ids)
        # Which facts MI sees: tau with each kind's share, on the prompts that state that kind.
        tau_k = {}
        for kind, shares in by_kind.items():
            stated = [j for j, share in enumerate(shares) if share is not None]
            if stated:
                tau_k[kind] = kendall_agreement([values[j] for j in stated],
                                                [shares[j] for j in stated], [ids[j] for j in stated])
        out["variants"][name] = {
            "tau_checker": tau_c.tau, "tau_checker_ci": [tau_c.low, tau_c.high],
            "tau_noise": tau_n.tau, "tau_noise_ci": [tau_n.low, tau_n.high],
            "tau_by_fact": {kind: {"tau": t.tau, "ci": [t.low, t.high], "prompts_used": t.n_prompts}
                            for kind, t in tau_k.items()},
            "prompts_used": tau_c.n_prompts, "seconds": round(time.perf_counter() - start, 1)}
        log(f"[agreement] {name}: tau(MI, checker) {tau_c.tau:+.3f} "
            f"[{tau_c.low:+.3f}, {tau_c.high:+.3f}], tau(MI, background noise) {tau_n.tau:+.3f}; "
            "by fact: " + ", ".join(f"{kind} {t.tau:+.3f} [{t.low:+.3f}, {t.high:+.3f}]"
                                    for kind, t in tau_k.items()))
    out["fully_correct_rate_base"] = float(np.mean([c == 1.0 for c in checker]))
    return out


def arm_config(root: str, arm: str, model_path: str, scale: Scale, quick: bool):
    actors = 1 if quick else 2
    return load_config(None, [
        f"run.uri={root}/{arm}", f"run.rounds={scale.rounds}", "run.evaluate=true",
        f"run.chaining={scale.chaining}", f"run.accumulate={str(scale.accumulate).lower()}",
        f"model.path={model_path}",
        f"prompts.train=[shapes:{scale.tune_split}:{scale.train_prompts}]",
        f"prompts.eval=[shapes:eval:{scale.eval_prompts}]", "prompts.val_fraction=0.1",
        f"generate.candidates={scale.candidates}", f"generate.keep={scale.keep}",
        f"generate.steps={scale.steps}", f"generate.guidance={scale.guidance}",
        "generate.max_batch=64",
        f"generate.prompts_per_batch={4 if quick else 8}", f"generate.actors={actors}",
        "generate.cpus_per_actor=0.5", f"generate.select_by={arm}", "generate.gallery_prompts=2",
        "train.rank=8", f"train.batch_size={scale.train_batch}", "train.grad_accum=1",
        f"train.steps={scale.train_steps}", f"train.lr={scale.lr}", "train.workers=2",
        f"train.loss_weight_cap={scale.loss_weight_cap}", f"train.min_timestep={scale.min_timestep}",
        "train.cpus_per_worker=0.5", f"train.checkpoint_every={max(1, scale.train_steps // 3)}",
        "train.validation_prompts=2", "train.validation_candidates=2",
        "eval.metrics=[mi,shapes]", f"eval.candidates={scale.eval_candidates}",
        "ray.num_cpus=4", *(f"mi.{key}={value}" for key, value in
                            MI_SETTINGS[scale.mi].model_dump(exclude_defaults=True).items())])


def _correct_by_prompt(store: Store, version: str, folder: str = layout.EVAL) -> dict[str, float]:
    table = pq.read_table(store.path(f"{version}/{folder}/{layout.EVAL_SCORES}"),
                          filesystem=store.filesystem, columns=["prompt_id", "shapes_correct"])
    by: dict[str, list[float]] = {}
    for pid, v in zip(table.column("prompt_id").to_pylist(), table.column("shapes_correct").to_pylist()):
        by.setdefault(pid, []).append(v)
    return {k: float(np.mean(v)) for k, v in by.items()}


def image_change(store: Store, version: str, base: str = layout.BASE_VERSION) -> float:
    """Median over evaluation images (same prompt and seed) of the mean absolute pixel change
    from `base` to `version`, on the 0-255 scale: how far the adapter moved the model at all."""
    from mitune_ray.imaging import from_png

    def pngs(v: str) -> dict:
        columns = ["prompt_id", "candidate", "png"]
        t = store.read_parquet(f"{v}/{layout.EVAL}/{layout.SELECTED}", columns=columns)
        return {} if t is None else {
            (i, c): png for i, c, png in zip(*(t.column(n).to_pylist() for n in columns))}

    before, after = pngs(base), pngs(version)
    diffs = [np.abs(from_png(before[k]).astype(np.float32) - from_png(after[k])).mean()
             for k in before.keys() & after.keys()]
    return float(np.median(diffs)) if diffs else float("nan")


def _checked(store: Store, folder: str) -> list:
    """The checker's result for every (prompt, png) row stored under `folder` (none: [])."""
    from mitune_ray.imaging import from_png
    from mitune_ray.shapes.checker import check

    table = store.read_parquet(folder, columns=["prompt", "png"])
    return [] if table is None else [
        check(text, from_png(png))
        for text, png in zip(table.column("prompt").to_pylist(), table.column("png").to_pylist())]


def eval_fact_rates(store: Store, version: str,
                    folder: str = layout.EVAL) -> dict[str, float | None]:
    """Which kinds of fact a version's evaluation images get right (`checker.fact_rates`):
    objects, sizes, relations, and relations where both objects were drawn (chance: ~1/4)."""
    from mitune_ray.shapes.checker import fact_rates

    return fact_rates(_checked(store, f"{version}/{folder}/{layout.SELECTED}"))


def gain_line(g: dict) -> str:
    """A `paired_gain` on one line: "0.561 -> 0.643 (gain +0.082 [+0.021, +0.145])"."""
    return (f"{g['base_rate']:.3f} -> {g['tuned_rate']:.3f} (gain {g['gain']:+.3f} "
            f"[{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}])")


def rates_line(rates: dict) -> str:
    """Fact rates on one line: "object 0.85, size 0.80, ..." ("-": no fact of that kind)."""
    return ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in rates.items())


def selected_quality(store: Store, version: str) -> dict:
    """How good a round's training set was: the checker on its kept images."""
    results = _checked(store, f"{version}/{layout.SELECTED}")
    return {"rows": len(results),
            "fully_correct": float(np.mean([r.all_correct for r in results])) if results else 0.0,
            "fraction": float(np.mean([r.fraction for r in results])) if results else 0.0}


def paired_gain(base: dict[str, float], tuned: dict[str, float], *, n_boot: int = 5000,
                seed: int = 0) -> dict:
    """Mean per-prompt gain in fully-correct rate, with a paired bootstrap 95% interval.

    Example:
        >>> g = paired_gain({"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0})
        >>> g["gain"]
        0.5
    """
    from mitune_ray.metrics.agreement import bootstrap_mean_interval

    keys = sorted(set(base) & set(tuned))
    diff = np.array([tuned[k] - base[k] for k in keys])
    low, high = bootstrap_mean_interval(diff, n_boot=n_boot, seed=seed)  # paired: per prompt
    return {"gain": float(diff.mean()) if len(diff) else float("nan"), "ci": [low, high],
            "base_rate": float(np.mean([base[k] for k in keys])) if keys else float("nan"),
            "tuned_rate": float(np.mean([tuned[k] for k in keys])) if keys else float("nan"),
            "prompts": len(keys)}


def mitune_arms(model_path: str, root: str, scale: Scale, quick: bool, log=print,
                arms: tuple[str, ...] = ARMS) -> dict:
    """Part 2: the full loop for each selection arm; per-round gains over the base model (also
    at `scale.control_guidance`, when set)."""
    from mitune_ray.driver import evaluate_run, run
    from mitune_ray.stages.evaluate import check_guidance

    control = scale.control_guidance or None
    if control:  # before hours of runs, not after
        check_guidance(control, "--scale control_guidance")
    out = {}
    for arm in arms:
        start = time.perf_counter()
        cfg = arm_config(root, arm, model_path, scale, quick)
        run(cfg, log=lambda m: None)
        if control:
            evaluate_run(cfg.run.uri, guidance=control, log=lambda m: None)
        store = Store(cfg.run.uri)
        base = _correct_by_prompt(store, layout.BASE_VERSION)
        base_facts = eval_fact_rates(store, layout.BASE_VERSION)
        log(f"[mitune] select by {arm}, base model: held-out facts that hold: {rates_line(base_facts)}")
        rounds, selected = {}, {}
        for r in range(1, scale.rounds + 1):
            version = layout.round_dir(r)
            rounds[r] = g = paired_gain(base, _correct_by_prompt(store, version))
            selected[r] = kept = selected_quality(store, version)
            g["image_change"] = image_change(store, version)
            g["facts"] = eval_fact_rates(store, version)
            log(f"[mitune] select by {arm}, round {r}: kept images fully correct "
                f"{kept['fully_correct']:.3f}; held-out images changed by {g['image_change']:.1f}/255; "
                f"held out fully correct {gain_line(g)}; facts that hold: {rates_line(g['facts'])}")
            if control:
                folder = layout.eval_dir(control)
                g["control"] = c = paired_gain(
                    _correct_by_prompt(store, layout.BASE_VERSION, folder),
                    _correct_by_prompt(store, version, folder))
                c["guidance"] = control
                c["facts"] = eval_fact_rates(store, version, folder)
                log(f"[mitune] select by {arm}, round {r}, at guidance {control:g}: held out fully "
                    f"correct {gain_line(c)}; facts that hold: {rates_line(c['facts'])}")
        out[arm] = {"rounds": rounds, "selected_sets": selected, "base_facts": base_facts,
                    "seconds": round(time.perf_counter() - start, 1)}
    return out


def svg_plot(result: dict) -> str:
    """Fully-correct rate per round for each arm (base at round 0), as a small SVG."""
    from mitune_ray.report.markup import svg_lines

    series = {}
    for arm, data in result.get("mitune", {}).items():
        rounds = data["rounds"]
        first = next(iter(rounds.values()))
        series[f"select by {arm}"] = [(0, first["base_rate"])] + [
            (int(r), v["tuned_rate"]) for r, v in rounds.items()]
    html = str(svg_lines(series, title="ShapesWorld held-out fully-correct rate by round"))
    return html if 'xmlns=' in html else html.replace("<svg", '<svg xmlns="http://www.w3.org/2000/svg"', 1)


# The numeric Scale fields where 0 is a setting, not a mistake.
ZERO_MEANS = {"min_timestep": "every timestep", "control_guidance": "no control evaluation"}
CHAININGS = get_args(RunSection.model_fields["chaining"].annotation)  # "fresh", "continue"


def parse_flag(text: str) -> bool:
    """"true" or "false", any case; ValueError otherwise (`bool("false")` is True)."""
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def scale_changes(items: list[str]) -> dict:
    """`["lr=3e-4", ...]` as typed `Scale` field values; a clear error for unknown fields or
    values of the wrong type.

        >>> scale_changes(["train_prompts=96", "lr=3e-4"])
        {'train_prompts': 96, 'lr': 0.0003}
    """
    from mitune_ray.errors import MituneError

    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        field = Scale.__dataclass_fields__.get(key.strip())
        if not sep or field is None:
            raise MituneError(f"--scale {item!r}: expected FIELD=VALUE with FIELD one of "
                              f"{', '.join(Scale.__dataclass_fields__)}")
        kind = type(getattr(Scale(), field.name))
        try:
            value = (parse_flag if kind is bool else kind)(text.strip())
        except ValueError:
            what = {int: "an integer", float: "a number", bool: "true or false"}.get(kind,
                                                                                   "a string")
            raise MituneError(f"--scale {item!r}: {field.name} takes {what}, "
                              f"not {text.strip()!r}") from None
        zero = ZERO_MEANS.get(field.name)
        if kind in (int, float) and (value < 0 or (value == 0 and not zero)):
            raise MituneError(f"--scale {item!r}: {field.name} must be above 0"
                              + (f" or 0 ({zero})" if zero else ""))
        choices = {"mi": tuple(MI_SETTINGS), "tune_split": ("tune", "train"),
                   "chaining": CHAININGS}.get(field.name)
        if choices and value not in choices:
            raise MituneError(f"--scale {item!r}: {field.name} is one of {', '.join(choices)}")
        out[field.name] = value
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mitune shapes bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bundled:shapes")
    parser.add_argument("--out", default="runs/shapes-bench", help="folder for the runs and results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-mitune", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--scale", action="append", default=[], metavar="FIELD=VALUE",
                        help="change one workload setting, e.g. --scale train_prompts=48 "
                             f"(fields: {', '.join(Scale.__dataclass_fields__)})")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help="selection arms to run: mi, random, checker (comma-separated)")
    parser.add_argument("--tune-split", choices=("tune", "train"), default="tune",
                        help="prompts tuned on: held-out combinations disjoint from the "
                             "evaluation prompts (default), or the base model's training split")
    parser.add_argument("--mi", choices=tuple(MI_SETTINGS), default="standard",
                        help="the MI estimator of the arms: re-noising with the point-wise "
                             "standard form (default), or the paper's trajectory estimator")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else Scale()
    flags = {"tune_split": args.tune_split, "mi": args.mi} | (
        {"rounds": args.rounds} if args.rounds else {})
    # --scale comes last: `--scale mi=paper` must not be undone by --mi's default.
    scale = Scale(**(asdict(scale) | flags | scale_changes(args.scale)))
    torch.manual_seed(0)
    result: dict = {"model": args.model, "scale": asdict(scale), "date": time.strftime("%Y-%m-%d")}
    if not args.skip_agreement:
        result["agreement"] = agreement(args.model, scale)
    if not args.skip_mitune:
        arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
        unknown = set(arms) - set(ARMS)
        if unknown:
            from mitune_ray.errors import MituneError

            raise MituneError(f"--arms {args.arms!r} names unknown arms {sorted(unknown)}; "
                              f"use some of {', '.join(ARMS)}")
        result["mitune"] = mitune_arms(args.model, args.out, scale, args.quick, arms=arms)
    store = Store(args.out)
    store.write_json("shapes-bench.json", result)
    if "mitune" in result:
        store.write_bytes("shapes-bench.svg", svg_plot(result).encode())
    print(json.dumps(result, indent=2, default=str))
    print(f"results written to {store.child_uri('shapes-bench.json')}")
    return 0
