"""`mitune shapes frontier`: what a selected image costs, against how well it is selected.

A kept image costs its prompt's candidates' denoiser rows: N candidates x (2 x sampler steps
for classifier-free guidance + 2 x K re-noising draws for the point-wise MI; the paper's
trajectory MI comes free with sampling). The frontier scores one pool of prompts x N candidates
per sampler setting (`pool.py`, resumable, one work folder each), and reads every cheaper
setting off it: the first n of the N candidates (their seeds do not depend on N) and the first k
of the K draws, and pruning (successive halving: at a quarter or half of the steps keep half or
a quarter of the candidates, by the trajectory MI so far or by an early point-wise score of the
predicted clean latent; both recorded by the pool at those steps). Per cell: rows per kept
image, pool selection efficiency and the kept images' fully-correct rate, each with a 95%
bootstrap interval over prompts, and the paired difference in efficiency from the reference (the
first sampler setting at N candidates and K draws: the paper's cost). Settings are chosen on
validation prompts (the cheapest whose efficiency is within `--band` of the reference's) and
reported on held-out prompts.

    mitune shapes frontier --out runs/frontier      # DDPM 100 (reference), DDPM 25, DDIM and
                                                    # DPM-Solver++ at 25 and 15, N 50, K 32
    mitune shapes frontier --quick --out /tmp/f     # the machinery only (CI)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from mitune_ray.metrics.agreement import bootstrap_two_level_interval
from mitune_ray.shapes.pool import (
    BOOTSTRAPS, QUICK, SAMPLERS, PoolScale, efficiency_ratio, score_pool, work_parser,
    write_result,
)
from mitune_ray.sampling import prune_step
from mitune_ray.storage import Store

SETTINGS = ("ddpm:100", "ddpm:25", "ddim:25", "dpmsolver:25", "ddim:15", "dpmsolver:15")
BAND = 0.05  # the issue's: efficiency within 0.05 of the paper-cost setting


PRUNE_AT = (0.25, 0.5)  # fractions of the steps where the frontier's pools can prune
PRUNE_KEEP = (0.5, 0.25)  # the share of a prompt's candidates a pruning step keeps
PRUNE_BY = ("trajectory", "early")  # the partial scores a pool records (`pool.score_batch`)
MIN_STEPS = 4  # a quarter of the steps is at least one step


@dataclass(frozen=True)
class Cell:
    sampler: str
    steps: int
    candidates: int  # n: the first n of the pool's candidates
    draws: int  # k: the first k re-noising draws (0: the paper's trajectory form, no draws)
    # Successive halving: at `prune_at` of the steps keep the best `prune_keep` of the n by a
    # partial score, "trajectory" (the MI so far: `generate.prune`) or "early" (the point-wise
    # standard form of the predicted clean latent, `early_draws` shared draws); "": no pruning.
    prune_by: str = ""
    prune_at: float = 0.0
    prune_keep: float = 1.0
    early_draws: int = 0

    @property
    def name(self) -> str:
        score = f"K={self.draws}" if self.draws else "trajectory"
        name = f"{self.sampler} {self.steps} steps, {self.candidates} candidates, {score}"
        if self.prune_by:
            by = ("trajectory MI" if self.prune_by == "trajectory"
                  else f"early standard K={self.early_draws}")
            name += f", {self.prune_keep:.0%} kept at {self.prune_at:.0%} of the steps by {by}"
        return name

    @property
    def survivors(self) -> int:
        """Candidates that finish sampling (all unless pruned; at least one)."""
        if not self.prune_by:
            return self.candidates
        return max(1, math.ceil(self.prune_keep * self.candidates))

    @property
    def rows_per_kept(self) -> int:
        """Denoiser rows per kept image (one kept per prompt): every candidate's steps up to the
        pruning point and its early score, then the survivors' remaining steps and final score."""
        n, m = self.candidates, self.survivors
        if not self.prune_by:
            return n * 2 * (self.steps + self.draws)
        before = prune_step(self.prune_at, self.steps)
        early = self.early_draws if self.prune_by == "early" else 0
        return n * 2 * (before + early) + m * 2 * (self.steps - before + self.draws)


def cell_rows(records: list[dict], cell: Cell) -> dict[str, tuple[float, float, float]]:
    """(kept, pool, oracle) per prompt id for one cell (standard form, mean over its draws);
    pool and oracle over all n candidates sampled, so what pruning loses shows as efficiency."""
    out = {}
    n = cell.candidates
    for rec in records:
        correct = np.array(rec["correct"][:n])
        if cell.draws:
            scores = np.array(rec["standard"])[: cell.draws, :n].mean(0)
        else:
            scores = np.array(rec["trajectory"][:n])
        if cell.prune_by:
            j = rec["prune_at"].index(cell.prune_at)
            partial = (np.array(rec["partial_trajectory"][j][:n]) if cell.prune_by == "trajectory"
                       else np.array(rec["early_standard"][j])[:, :n].mean(0))
            alive = np.argsort(-partial, kind="stable")[: cell.survivors]
            scores = np.where(np.isin(np.arange(n), alive), scores, -np.inf)
        out[rec["prompt_id"]] = (float(correct[int(np.argmax(scores))]), float(correct.mean()),
                                 float(correct.max()))
    return out


def compare(rows: dict[str, tuple], reference: dict[str, tuple], *, seed: int = 0) -> dict:
    """A cell's efficiency and kept rate with intervals over prompts, and its efficiency minus
    the reference's on the same prompts (paired: both resampled together)."""
    ids = sorted(rows)
    data = np.array([rows[i] + reference[i] for i in ids])  # (prompts, 6)

    def interval(statistic):
        return list(bootstrap_two_level_interval([data], statistic=statistic, n_boot=BOOTSTRAPS,
                                                 seed=seed))

    mean = data.mean(0)
    return {
        "efficiency": efficiency_ratio(mean[:3]),
        "efficiency_ci": interval(lambda m: efficiency_ratio(m[:3])),
        "kept": float(mean[0]), "kept_ci": interval(lambda m: float(m[0])),
        "pool": float(mean[1]), "oracle": float(mean[2]),
        "minus_reference": efficiency_ratio(mean[:3]) - efficiency_ratio(mean[3:]),
        "minus_reference_ci": interval(
            lambda m: efficiency_ratio(m[:3]) - efficiency_ratio(m[3:])),
        "prompts": len(ids), "kept_by_prompt": {i: rows[i][0] for i in ids},
    }


def parse_setting(text: str) -> tuple[str, int]:
    """"dpmsolver:15" -> ("dpmsolver", 15); anything else: ValueError naming the fix."""
    name, _, steps = text.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < MIN_STEPS:
        raise ValueError(f"sampler setting {text!r} is not SAMPLER:STEPS with SAMPLER one of "
                         f"{', '.join(SAMPLERS)} and STEPS an integer of at least {MIN_STEPS} "
                         "(e.g. ddim:25; pruning at a quarter of the steps needs a step before it)")
    return name, int(steps)


def subsets(full: int, options: tuple[int, ...]) -> list[int]:
    return sorted({v for v in options if v < full} | {full})


def run_frontier(model_path: str, root: Store, scale: PoolScale, settings: list[tuple[str, int]],
                 *, band: float = BAND, log=print) -> dict:
    """Score a pool per sampler setting (resuming each), then every cell on both prompt lists;
    choose on validation, report on held out."""
    settings = list(dict.fromkeys(settings))
    cells: list[Cell] = []
    records: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for sampler, steps in settings:
        records[(sampler, steps)] = score_pool(model_path, root.child(f"{sampler}-{steps}"),
                                               replace(scale, sampler=sampler, steps=steps), log)
        for n in subsets(scale.candidates, (8, 16, 32, 50)):
            for k in [0, *subsets(scale.draws, (8, 16, 32))]:
                cells.append(Cell(sampler, steps, n, k))
                cells += [Cell(sampler, steps, n, k, by, at, keep, scale.early_draws)
                          for by in PRUNE_BY for at in scale.prune_at for keep in PRUNE_KEEP]
    sampler, steps = settings[0]
    reference = Cell(sampler, steps, scale.candidates, scale.draws)
    result: dict = {"scale": asdict(scale), "model": model_path, "band": band,
                    "reference": reference.name, "splits": {}}
    for split in records[settings[0]]:
        ref_rows = cell_rows(records[(sampler, steps)][split], reference)
        result["splits"][split] = {
            cell.name: asdict(cell) | {"rows_per_kept": cell.rows_per_kept}
            | compare(cell_rows(records[(cell.sampler, cell.steps)][split], cell), ref_rows)
            for cell in cells}
    chosen = choose(result["splits"]["validation"], band)
    result["chosen_on_validation"] = chosen
    result["saving"] = (None if chosen is None else reference.rows_per_kept
                        / result["splits"]["validation"][chosen]["rows_per_kept"])
    return result


def choose(cells: dict[str, dict], band: float) -> str | None:
    """The cheapest cell whose efficiency is within `band` of the reference's (None: none is,
    or no efficiency could be computed: prompts with no room to select)."""
    inside = [name for name, c in cells.items()
              if np.isfinite(c["minus_reference"]) and c["minus_reference"] >= -band]
    return min(inside, key=lambda name: (cells[name]["rows_per_kept"], name)) if inside else None


def table_lines(result: dict) -> list[str]:
    """The frontier as a markdown table, cheapest first, on held-out prompts where scored."""
    splits = result["splits"]
    shown = "held_out" if "held_out" in splits else "validation"
    lines = [f"| setting | rows per kept image | validation efficiency | {shown} efficiency "
             f"[95% CI] | minus reference [95% CI] | {shown} kept fully correct [95% CI] |",
             "|---|---|---|---|---|---|"]
    for name, cell in sorted(splits[shown].items(), key=lambda kv: kv[1]["rows_per_kept"]):
        mark = (" (reference)" if name == result["reference"] else "") + (
            " (chosen)" if name == result["chosen_on_validation"] else "")
        e, d, k = cell["efficiency_ci"], cell["minus_reference_ci"], cell["kept_ci"]
        lines.append(
            f"| {name}{mark} | {cell['rows_per_kept']:,} | "
            f"{splits['validation'][name]['efficiency']:+.2f} | {cell['efficiency']:+.2f} "
            f"[{e[0]:+.2f}, {e[1]:+.2f}] | {cell['minus_reference']:+.2f} [{d[0]:+.2f}, "
            f"{d[1]:+.2f}] | {cell['kept']:.0%} [{k[0]:.0%}, {k[1]:.0%}] |")
    return lines


def main(argv: list[str]) -> int:
    parser = work_parser("frontier", "denoiser rows per kept image against pool selection "
                         "efficiency, over samplers, steps, candidates and re-noising draws "
                         "(ShapesWorld)", "frontier.json")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="SAMPLER:STEPS,... the first is the reference (default %(default)s)")
    parser.add_argument("--candidates", type=int, default=50, help="N per prompt (default 50)")
    parser.add_argument("--prompts", type=int, default=None,
                        help="held-out prompts (default 200; 0: validation only)")
    parser.add_argument("--val-prompts", type=int, default=None, help="validation prompts (48)")
    parser.add_argument("--band", type=float, default=BAND,
                        help="the efficiency a cheaper setting may lose (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(s) for s in args.settings.split(",")]
    except ValueError as exc:
        parser.error(f"--settings: {exc}")
    base = QUICK if args.quick else PoolScale()
    scale = replace(base, candidates=base.candidates if args.quick else args.candidates,
                    prune_at=PRUNE_AT,
                    **{k: v for k, v in (("prompts", args.prompts),
                                         ("val_prompts", args.val_prompts)) if v is not None})
    if scale.candidates < 1 or scale.val_prompts < 1 or scale.prompts < 0:
        parser.error("--candidates and --val-prompts must be at least 1, --prompts at least 0")
    if not 0 <= args.band < 1:
        parser.error(f"--band {args.band:g} must be in [0, 1)")
    if args.quick:
        settings = [(name, min(steps, 4)) for name, steps in settings]
    root = Store(args.out)
    result = run_frontier(args.model, root, scale, settings, band=args.band)
    result["command"] = "mitune shapes frontier " + " ".join(argv)
    write_result(root, "frontier.json", result, args.json)
    print("\n".join(table_lines(result)))
    if result["chosen_on_validation"] is None:
        print(f"chosen on validation: none (no setting within {args.band:g} of "
              f"{result['reference']}, or no prompt with room to select)")
    else:
        print(f"chosen on validation: {result['chosen_on_validation']}, "
              f"{result['saving']:.1f}x fewer rows per kept image than {result['reference']}")
    return 0
