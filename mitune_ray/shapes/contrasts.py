"""The ShapesWorld bench's statistics: paired contrasts between selection arms, the loop
selection efficiency, and how many replicates x prompts a series needs (power).

The unit of comparison is one evaluation prompt's held-out fully-correct rate (the share of its
evaluation images the checker finds fully correct) under one model version. Within a replicate
every arm evaluates the same prompts with the same seeds, so arms are compared prompt by prompt
(paired). Replicates (a generation seed and a training seed each) are independent runs of the
whole loop; the intervals over the series resample replicates, then prompts within each
(`metrics.agreement.bootstrap_two_level_interval`).

- contrast A-B: mean over replicates of the per-prompt difference of A's and B's rates;
- loop selection efficiency: (mi - random) / (checker - random), where MI's loop lands between
  random selection (0) and the oracle (1);
- power: from a pilot's per-prompt contrasts, the replicates needed at a number of prompts for a
  95% interval above zero at a target effect.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from mitune_ray.errors import MituneError
from mitune_ray.metrics.agreement import bootstrap_mean_interval, bootstrap_two_level_interval

# (A, B): A's rate minus B's. checker is the oracle, anti the anti-oracle.
CONTRASTS = (("checker", "random"), ("checker", "anti"), ("mi", "random"),
             ("mi_filter", "random"), ("mi_filter", "mi"))
EFFICIENCY_ARMS = ("mi", "random", "checker")
PRIMARY_ROUND = 1  # the pre-registered endpoint: round 1 at the bench's guidance (docs/shapes.md)
# Effects a series must be able to resolve (fully-correct rate, 0-1): the oracle against the
# anti-oracle and against random selection.
POWER_TARGETS = {"checker-anti": 0.08, "checker-random": 0.04}
POWER_PROMPTS = (64, 128, 200)  # evaluation prompts per replicate; 200: the tune split's reserve
POWER = 0.8  # the chance that the interval excludes zero when the effect is the target
MAX_REPLICATES = 200

# {replicate: {arm: {prompt id: fully-correct rate}}} for one model version and guidance
Rates = dict[str, dict[str, dict[str, float]]]


def contrast_name(a: str, b: str) -> str:
    return f"{a}-{b}"


def paired_gain(base: dict[str, float], tuned: dict[str, float], *, n_boot: int = 5000,
                seed: int = 0) -> dict:
    """Mean per-prompt gain in fully-correct rate, with a paired bootstrap 95% interval.

    Example:
        >>> g = paired_gain({"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0})
        >>> g["gain"]
        0.5
    """
    keys = sorted(set(base) & set(tuned))
    diff = np.array([tuned[k] - base[k] for k in keys])
    low, high = bootstrap_mean_interval(diff, n_boot=n_boot, seed=seed)  # paired: per prompt
    return {"gain": float(diff.mean()) if len(diff) else float("nan"), "ci": [low, high],
            "base_rate": float(np.mean([base[k] for k in keys])) if keys else float("nan"),
            "tuned_rate": float(np.mean([tuned[k] for k in keys])) if keys else float("nan"),
            "prompts": len(keys)}


def paired_rows(rates: Rates, arms: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per replicate that ran every arm of `arms`: (prompts x arms) rates on the prompts all of
    them evaluated, in sorted prompt order."""
    out = {}
    for rep, by_arm in rates.items():
        if all(a in by_arm for a in arms):
            keys = sorted(set.intersection(*(set(by_arm[a]) for a in arms)))
            if keys:
                out[rep] = np.array([[by_arm[a][k] for a in arms] for k in keys], dtype=float)
    return out


def contrast(rates: Rates, a: str, b: str, *, n_boot: int = 5000, seed: int = 0) -> dict | None:
    """A's rate minus B's: per replicate (paired over prompts, one-level interval) and over the
    series (two-level interval); None where no replicate ran both.

    Example:
        >>> c = contrast({"1": {"x": {"p": 1.0, "q": 0.5}, "y": {"p": 0.5, "q": 0.5}}}, "x", "y")
        >>> c["diff"], c["per_replicate"]["1"]["diff"]
        (0.25, 0.25)
    """
    rows = paired_rows(rates, (a, b))
    if not rows:
        return None
    diffs = {rep: r[:, 0] - r[:, 1] for rep, r in rows.items()}
    low, high = bootstrap_two_level_interval(list(diffs.values()), n_boot=n_boot, seed=seed)
    per_replicate = {}
    for rep, r in rows.items():
        rep_low, rep_high = bootstrap_mean_interval(diffs[rep], n_boot=n_boot, seed=seed)
        per_replicate[rep] = {"diff": float(diffs[rep].mean()), "ci": [rep_low, rep_high],
                              a: float(r[:, 0].mean()), b: float(r[:, 1].mean()),
                              "prompts": len(r)}
    return {"diff": float(np.mean([d.mean() for d in diffs.values()])), "ci": [low, high],
            "replicates": len(rows), "per_replicate": per_replicate}


def efficiency_of(mean_row: np.ndarray) -> float:
    """(mi - random) / (checker - random) of a (mi, random, checker) row; nan without room
    (the oracle no better than random)."""
    room = mean_row[2] - mean_row[1]
    return float((mean_row[0] - mean_row[1]) / room) if room > 0 else float("nan")


def loop_efficiency(rates: Rates, *, n_boot: int = 5000, seed: int = 0) -> dict | None:
    """The loop selection efficiency (mi - random) / (checker - random) of held-out rates,
    with a two-level 95% interval; None where no replicate ran the three arms.

    Example:
        >>> arms = {"mi": {"p": 0.5}, "random": {"p": 0.25}, "checker": {"p": 0.75}}
        >>> loop_efficiency({"1": arms})["efficiency"]
        0.5
    """
    rows = paired_rows(rates, EFFICIENCY_ARMS)
    if not rows:
        return None
    mean_row = np.mean([r.mean(axis=0) for r in rows.values()], axis=0)
    low, high = bootstrap_two_level_interval(list(rows.values()), statistic=efficiency_of,
                                             n_boot=n_boot, seed=seed)
    return {"efficiency": efficiency_of(mean_row), "ci": [low, high],
            **{arm: float(v) for arm, v in zip(EFFICIENCY_ARMS, mean_row)},
            "replicates": len(rows),
            "per_replicate": {rep: efficiency_of(r.mean(axis=0)) for rep, r in rows.items()}}


def statistics(rates: Rates) -> dict:
    """The contrasts of `CONTRASTS` (those whose arms ran) and the loop efficiency."""
    contrasts = {contrast_name(a, b): c for a, b in CONTRASTS
                 if (c := contrast(rates, a, b)) is not None}
    return {"contrasts": contrasts, "efficiency": loop_efficiency(rates)}


def statistics_line(stats: dict) -> str:
    """Contrasts and efficiency on one line."""
    parts = [f"{name} {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
             for name, c in stats["contrasts"].items()]
    e = stats["efficiency"]
    if e is not None:
        parts.append(f"efficiency {e['efficiency']:+.2f} [{e['ci'][0]:+.2f}, {e['ci'][1]:+.2f}]")
    return "; ".join(parts) or "no arms to compare"


# -- power ------------------------------------------------------------------------------------


def variance_components(groups: list[np.ndarray]) -> dict:
    """Per-prompt contrasts of each replicate -> the within-replicate variance of one prompt's
    contrast and the between-replicate variance of replicate means (method of moments, at
    least 0; with one replicate it cannot be estimated and is taken as 0)."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 1]
    if not groups:
        raise MituneError("power analysis needs a replicate with at least two prompts")
    within = float(np.mean([g.var(ddof=1) for g in groups]))
    prompts = float(np.mean([len(g) for g in groups]))
    between = 0.0
    if len(groups) > 1:
        between = max(0.0, float(np.var([g.mean() for g in groups], ddof=1)) - within / prompts)
    return {"within": within, "between": between, "between_estimated": len(groups) > 1,
            "pilot_replicates": len(groups), "pilot_prompts": int(round(prompts))}


def replicates_needed(effect: float, within: float, between: float, prompts: int, *,
                      level: float = 0.95, power: float = POWER) -> int | None:
    """The fewest replicates for which a two-level interval at `level` lies above zero with
    chance `power` when the true contrast is `effect` (None: more than MAX_REPLICATES).

    The two-level bootstrap's variance of the series mean is about
    (between + 2 within / prompts) / replicates (it counts the prompts' noise at both levels);
    the normal quantiles make it an approximation, fair from about 5 replicates.

    Example:
        >>> replicates_needed(0.1, within=0.1, between=0.0, prompts=100)  # 7.85 * 0.002 / 0.01
        2
    """
    if effect <= 0:
        raise MituneError(f"power analysis: target effect {effect} must be above 0")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2) + NormalDist().inv_cdf(power)
    per_replicate = between + 2 * within / prompts
    need = max(2, math.ceil(per_replicate * (z / effect) ** 2))
    return need if need <= MAX_REPLICATES else None


def pilot_rates(result: dict, round_index: int = PRIMARY_ROUND) -> Rates:
    """{replicate: {arm: {prompt: rate}}} after `round_index` at the bench's guidance, from a
    `shapes-bench.json` (its `mitune` part)."""
    replicates = result.get("mitune", {}).get("replicates")
    if not replicates:
        raise MituneError("the results have no per-prompt rates (mitune.replicates); they come "
                          "from 'mitune shapes bench' with replicates, not an earlier bench")
    key = str(round_index)
    return {rep: {arm: data["per_prompt"][key] for arm, data in r["arms"].items()
                  if key in data.get("per_prompt", {})}
            for rep, r in replicates.items()}


def power_analysis(rates: Rates, *, targets: dict[str, float] = POWER_TARGETS,
                   prompt_counts: tuple[int, ...] = POWER_PROMPTS) -> dict:
    """For each target contrast the pilot ran: its variance components and the replicates
    needed at each number of prompts."""
    out = {}
    for name, effect in targets.items():
        a, b = name.split("-")
        rows = paired_rows(rates, (a, b))
        if not rows:
            continue
        parts = variance_components([r[:, 0] - r[:, 1] for r in rows.values()])
        out[name] = {"target": effect, **parts, "power": POWER, "replicates_needed": {
            str(n): replicates_needed(effect, parts["within"], parts["between"], n)
            for n in prompt_counts}}
    return out


def power_lines(power: dict) -> list[str]:
    """The power analysis, one line per target contrast."""
    lines = []
    for name, p in power.items():
        needed = ", ".join(f"{n} prompts: {'>' + str(MAX_REPLICATES) if r is None else r}"
                           for n, r in p["replicates_needed"].items())
        between = (f"{p['between']:.4f}" if p["between_estimated"]
                   else "0 (assumed: one pilot replicate cannot estimate it)")
        lines.append(
            f"[power] {name} +{p['target']:.2f}: pilot {p['pilot_replicates']} replicates x "
            f"{p['pilot_prompts']} prompts, per-prompt variance {p['within']:.4f}, between "
            f"replicates {between}; replicates for a 95% interval above 0 with chance "
            f"{p['power']:.0%}: {needed}")
    return lines
