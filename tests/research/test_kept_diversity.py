"""Kept-set diversity: each arm's picks recomputed with the generation stage's rules."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from mitune_ray.models import ModelSpec, load_model
from mitune_ray.sampling import random_scores
from mitune_ray.select import top_k
from research.shapes.kept_diversity import (
    cached_latents, kept, main, mean_distance, oracle_scores,
)


def test_each_arm_keeps_by_its_own_scores():
    row = {"prompt_id": "p", "mi": [0.1, 3.0, 2.0, -1.0]}
    oracle = [2.0, 0.5, 2.0, 0.0]  # candidates 0 and 2 fully correct
    assert kept("mi", row, oracle, seed=0, keep=2) == [1, 2]
    assert kept("checker", row, oracle, seed=0, keep=2) == [0, 2]
    assert kept("anti", row, oracle, seed=0, keep=2) == [3, 1]
    assert kept("random", row, oracle, seed=4, keep=2) == top_k(random_scores(4, "p", 1, 4), 2)
    # MI as a filter: at random among MI's better half (candidates 1 and 2), whatever the draw.
    assert sorted(kept("mi_filter", row, oracle, seed=4, keep=2, filter_drop=0.5)) == [1, 2]
    assert set(kept("mi_filter", row, oracle, seed=4, keep=1, filter_drop=0.5)) <= {1, 2}


def test_mean_distance_over_the_kept_pairs():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]).reshape(3, 2, 1)
    assert mean_distance(z, [0, 2]) == 0.0
    assert mean_distance(z, [0, 1]) == pytest.approx(5.0)
    assert mean_distance(z, [0, 1, 2]) == pytest.approx((5 + 0 + 5) / 3)


def _bench(tmp_path, n=4):
    """A bench folder of one prompt: a run's round-1 scores and picks, and two cache entries of
    that prompt (another replicate's, then this one's)."""
    root = tmp_path / "bench"
    run = root / "replicate-01" / "anti"
    (run / "round-001").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"config": {
        "model": {"path": "bundled:shapes"},
        "generate": {"seed": 0, "keep": 2, "select_by": "anti"}}}))
    mi = [1.0, 2.0, 3.0, 4.0]
    gen = torch.Generator().manual_seed(0)
    latents = {tag: torch.randn(n, 4, 8, 8, generator=gen) for tag in ("other", "ours")}
    for key, tag, values in (("a", "other", [9.0] * n), ("b", "ours", mi)):
        entry = root / "candidates" / key / "round-001"
        entry.mkdir(parents=True)
        save_file({"columns": torch.arange(n), "latents": latents[tag],
                   "mi": torch.tensor(values), "stderr": torch.zeros(n)},
                  str(entry / "p0-12345678.safetensors"))
    return root, run, mi, latents


def test_the_cache_entry_is_the_one_whose_mi_is_the_runs(tmp_path):
    root, _, mi, latents = _bench(tmp_path)
    found = cached_latents(root, {"p0": mi})
    assert torch.equal(found["p0"], latents["ours"])
    assert cached_latents(root, {"p0": [0.0] * 4}) == {}


def test_measure_checks_the_rules_against_the_run_read_and_keeps_every_prompt(tmp_path):
    root, run, mi, latents = _bench(tmp_path)
    pipe = load_model(ModelSpec("bundled:shapes"), device="cpu")[0]
    text = "a red circle"
    anti = kept("anti", {"prompt_id": "p0", "mi": mi},
                oracle_scores(pipe, text, latents["ours"]), seed=0, keep=2)
    pq.write_table(pa.table({"prompt_id": ["p0"], "mi": [mi], "selected": [anti]}),
                   run / "round-001" / "scores")
    pq.write_table(pa.table({"prompt_id": ["p0", "p0"], "prompt": [text, text]}),
                   run / "round-001" / "selected")
    out = tmp_path / "diversity.json"
    assert main([str(root), "--replicate", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["run_picks_recomputed"] == "1 of 1 prompts" and result["prompts"] == 1
    distances = result["per_prompt"]["p0"]
    assert distances["mi"] == pytest.approx(mean_distance(latents["ours"], [3, 2]))
    assert result["arms"]["mi"]["minus_random"] == pytest.approx(
        distances["mi"] - distances["random"])
