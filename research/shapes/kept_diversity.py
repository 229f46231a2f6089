"""How alike are the candidates an arm keeps for one prompt?

Recipe search 1 found MI's kept images more often correct than random's, yet training on them no
better (docs/shapes.md). One explanation: MI keeps, within a prompt, candidates that look alike,
so its kept set carries less than random's. This reads one replicate of a `mitune shapes bench`
output folder: the round-1 scores of one of its runs (every candidate's MI and checker verdict,
`pool_metric`) and the bench's candidate cache (every candidate's final latent). For each arm it
recomputes the candidates the arm keeps with the generation stage's own rules (`select.top_k` of
the MI, of `sampling.random_scores` (for `mi_filter`, without MI's lowest share:
`select.filtered_draw`), of the checker's scores of the decoded candidates or of their negation;
the run read checks them against its own picks) and measures
the mean Euclidean distance between a prompt's kept latents, against the mean over all pairs of
its candidates; each arm minus random with a 95% bootstrap interval over prompts. Every
prompt's distances are kept in the JSON.

    python -m research.shapes.kept_diversity runs/recipe-val-t0 --replicate 2 \\
        --json research/shapes/results/kept-diversity-t0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from mitune_ray.families import decode_latents
from mitune_ray.imaging import to_uint8
from mitune_ray.metrics.agreement import bootstrap_mean_interval
from mitune_ray.models import ModelSpec, load_model
from mitune_ray.sampling import random_scores
from mitune_ray.select import filtered_draw, top_k
from mitune_ray.shapes.bench import CANDIDATE_CACHE, replicate_dir
from mitune_ray.shapes.checker import checker_scores

ARMS = ("mi", "random", "checker", "anti", "mi_filter")


def kept(arm: str, row: dict, oracle: list[float], seed: int, keep: int,
         filter_drop: float = 0.5) -> list[int]:
    """The candidates `arm` keeps of one prompt, from its round-1 scores `row` and the checker's
    scores of its candidates, `oracle` (`checker.checker_scores`)."""
    mi = torch.tensor(row["mi"], dtype=torch.float64)
    draw = random_scores(seed, row["prompt_id"], 1, len(row["mi"]))
    scores = {"mi": lambda: mi,
              "random": lambda: draw,
              "mi_filter": lambda: filtered_draw(mi, draw, drop=filter_drop, keep=keep),
              "checker": lambda: torch.tensor(oracle, dtype=torch.float64),
              "anti": lambda: -torch.tensor(oracle, dtype=torch.float64)}[arm]()
    return top_k(scores, keep)


def oracle_scores(pipe, prompt: str, latents: torch.Tensor) -> list[float]:
    """The checker's scores of a prompt's candidates, decoded in one batch as the generation
    stage's judge decodes them."""
    return checker_scores(prompt, list(to_uint8(decode_latents(pipe, latents))))


def mean_distance(latents: torch.Tensor, picks: list[int]) -> float:
    """Mean Euclidean distance over the pairs of `latents[picks]` (all of them: every pair)."""
    flat = latents[picks].double().reshape(len(picks), -1)
    d = torch.cdist(flat, flat)
    return float(d.sum() / (len(picks) * (len(picks) - 1)))


def cached_latents(root: Path, mi: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    """Every prompt's round-1 candidate latents from the bench's cache: the entry whose MI is
    the run's (another replicate's entries hold other candidates)."""
    out = {}
    for path in sorted(root.glob(f"{CANDIDATE_CACHE}/*/round-001/*.safetensors")):
        prompt_id = path.name.split("-")[0]
        if prompt_id not in mi:
            continue
        entry = load_file(str(path))
        if np.allclose(entry["mi"].double().numpy(), mi[prompt_id], rtol=1e-6, atol=0):
            out[prompt_id] = entry["latents"][entry["columns"].argsort()]
    return out


def measure(root: Path, replicate: int) -> dict:
    runs = sorted(p for p in (root / replicate_dir(replicate)).iterdir()
                  if (p / "round-001" / "scores").exists())
    if not runs:
        raise SystemExit(f"{root}/{replicate_dir(replicate)}: no run with round-1 scores")
    stored = json.loads((runs[0] / "manifest.json").read_text())["config"]
    config = stored["generate"]
    rows = pq.read_table(runs[0] / "round-001" / "scores").to_pylist()
    texts = dict(zip(*pq.read_table(runs[0] / "round-001" / "selected",
                                    columns=["prompt_id", "prompt"]).to_pydict().values()))
    latents = cached_latents(root, {r["prompt_id"]: r["mi"] for r in rows})
    pipe = load_model(ModelSpec(stored["model"]["path"]), device="cpu")[0]
    arm_read = config["select_by"]  # its picks are in its scores: a check of the rules here
    matches, per_prompt = 0, {}
    for row in rows:
        z = latents.get(row["prompt_id"])
        if z is None or len(z) < 2:
            continue
        oracle = oracle_scores(pipe, texts[row["prompt_id"]], z)
        picks = {arm: kept(arm, row, oracle, config["seed"], config["keep"],
                           config.get("filter_drop", 0.5)) for arm in ARMS}
        matches += sorted(picks[arm_read]) == sorted(row["selected"])
        per_prompt[row["prompt_id"]] = {arm: mean_distance(z, p) for arm, p in picks.items()} | {
            "pool": mean_distance(z, list(range(len(z))))}
    table = {name: np.array([d[name] for d in per_prompt.values()]) for name in (*ARMS, "pool")}
    arms = {name: {"mean_distance": float(v.mean())} for name, v in table.items()}
    for arm in ARMS:
        diff = table[arm] - table["random"]
        arms[arm] |= {"minus_random": float(diff.mean()),
                      "ci": list(bootstrap_mean_interval(diff, n_boot=5000))}
    return {"replicate": replicate, "run_read": runs[0].name,
            "run_picks_recomputed": f"{matches} of {len(per_prompt)} prompts",
            "keep": config["keep"],
            "seed": config["seed"], "prompts": len(per_prompt), "arms": arms,
            "per_prompt": per_prompt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.shapes.kept_diversity",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out", help="a `mitune shapes bench --out` folder")
    parser.add_argument("--replicate", type=int, default=1)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    result = measure(Path(args.out), args.replicate)
    for name, a in result["arms"].items():
        extra = (f"; minus random {a['minus_random']:+.2f} [{a['ci'][0]:+.2f}, {a['ci'][1]:+.2f}]"
                 if "ci" in a else "")
        print(f"{name:8s} mean distance of kept latents {a['mean_distance']:.2f}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
