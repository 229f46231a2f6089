"""How often is a prompt's k-th candidate by MI fully correct?

Recipe search 3 (docs/shapes.md) kept MI's first choice alone and found it correct less often
than MI's two choices together. This reads a `mitune shapes pool` work folder (every candidate's
checker verdict and its point-wise MI per shared re-noising draw; the committed ones are in
`research/shapes/pool-work*`) and gives, per prompt list:

- the rank profile: for k = 1..N, the fraction of prompts whose k-th candidate by the point-wise
  form's mean over the first K draws (t > 50, `pool.Variant("standard", K)`) is fully correct,
  with a 95% bootstrap interval over prompts, beside the pool's mean (a random pick);
- the pool selection efficiency (`pool.efficiency`) of picking by a lower confidence bound, the
  draws' mean minus c standard errors, for a few c (c = 0: the mean itself): whether MI's first
  choice suffers from its own estimation noise.

Every prompt's verdict by rank is kept in the JSON, so any other contrast can be recomputed.

    python -m research.shapes.rank_profile research/shapes/pool-work \\
        --json research/shapes/results/rank-profile.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np

from mitune_ray.metrics.agreement import bootstrap_mean_interval
from mitune_ray.shapes.pool import Variant, efficiency, variant_draws

DRAWS = (16, 32)
BOUNDS = (0.0, 0.5, 1.0, 2.0)  # c of the lower confidence bound mean - c x standard error


def read_records(folder: Path, split: str) -> list[dict]:
    """A split's records of a pool work folder, in the order they were scored."""
    records: list[dict] = []
    for part in sorted((folder / split).glob("part-*.json")):
        records += json.loads(part.read_text())
    return records


def lower_bound(values: np.ndarray, c: float) -> np.ndarray:
    """Per candidate: the draws' mean minus c standard errors of it."""
    if c == 0 or len(values) < 2:
        return values.mean(0)
    return values.mean(0) - c * values.std(0, ddof=1) / np.sqrt(len(values))


def by_rank(record: dict, draws: int) -> list[float] | None:
    """The checker's verdict (1: fully correct) of the prompt's candidates, best MI first (ties to
    the lower index, as `select.top_k`): MI the mean of the draws `Variant("standard", draws)`
    reads (None: no draw in its band)."""
    values = variant_draws(record, Variant("standard", draws))
    return None if values is None else _ranked(record, values)


def _ranked(record: dict, values: np.ndarray) -> list[float]:
    """The checker's verdicts of a prompt's candidates in the order of the draws' mean, best
    first (a stable sort: ties to the lower index)."""
    order = np.argsort(-values.mean(0), kind="stable")
    return [float(np.array(record["correct"])[i]) for i in order]


def profile(records: list[dict], draws: int) -> dict:
    """The rank profile and lower-bound efficiencies of a prompt list's records (prompts with no
    draw in the band left out)."""
    variant = Variant("standard", draws)
    drawn = [(r, v) for r in records if (v := variant_draws(r, variant)) is not None]
    verdicts = np.array([_ranked(r, v) for r, v in drawn])  # (prompts, candidates)
    ranks = []
    for k in range(verdicts.shape[1]):
        low, high = bootstrap_mean_interval(verdicts[:, k], seed=k)
        ranks.append({"rank": k + 1, "correct": float(verdicts[:, k].mean()), "ci": [low, high]})
    bounds = {}
    for c in BOUNDS:
        rows = []
        for r, values in drawn:
            correct = np.array(r["correct"], dtype=float)
            pick = int(np.argmax(lower_bound(values, c)))
            rows.append((float(correct[pick]), float(correct.mean()), float(correct.max())))
        bounds[f"{c:g}"] = efficiency(rows)
    return {"draws": draws, "pool": float(verdicts.mean()), "ranks": ranks,
            "lower_bound_efficiency": bounds,
            "by_prompt": {r["prompt_id"]: v for (r, _), v in zip(drawn, verdicts.tolist())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.shapes.rank_profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a `mitune shapes pool` work folder")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    work = json.loads((args.folder / "work.json").read_text())
    result: dict = {"date": datetime.date.today().isoformat(), "work": work, "splits": {}}
    for split in ("validation", "held_out"):
        records = read_records(args.folder, split)
        if not records:
            continue
        ks = [k for k in DRAWS if k <= work["draws"]] or [work["draws"]]
        result["splits"][split] = {f"K={k}": profile(records, k) for k in ks}
        for name, p in result["splits"][split].items():
            top = " ".join(f"{r['correct']:.3f}" for r in p["ranks"][:6])
            effs = ", ".join(f"c={c} {e['efficiency']:+.2f}"
                             for c, e in p["lower_bound_efficiency"].items())
            print(f"{split} {name} ({len(records)} prompts): fully correct by MI rank 1-6: {top}; "
                  f"pool {p['pool']:.3f}; efficiency by lower bound: {effs}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
