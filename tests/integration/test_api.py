"""The Python API on Ray: a run from a notebook, and in-memory scores equal to `mitune score`'s."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from peft import PeftConfig
from PIL import Image

from mitune_ray import api
from mitune_ray.config import load_config
from mitune_ray.stages.score import score_images
from tests.runs import tiny_run_config


def test_run_config_runs_a_config_with_overrides_and_says_what_it_made(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_run_config(tmp_path, str(tmp_path / "elsewhere"), rounds=2)
    lines: list[str] = []
    result = api.run_config(config, {"run.uri": str(run_dir), "run.rounds": 1}, log=lines.append)
    assert result.uri == str(run_dir) and (result.rounds, result.trained) == (1, (1,))
    assert result.adapters == {1: f"{run_dir}/round-001/adapter"}
    assert result.metrics == {}  # run.evaluate is off
    assert "1/1 rounds trained" in str(result) and any("[prompts]" in line for line in lines)
    assert not (tmp_path / "elsewhere").exists()  # the override won
    out = api.export_round(result.uri, 1, str(tmp_path / "exported"))
    assert PeftConfig.from_pretrained(str(out)).use_dora


def test_score_pairs_equals_the_scoring_stage_on_ray_data(ray_cluster, tmp_path):
    rng = np.random.default_rng(3)
    pics = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a red cube", "a red cube", "a blue ball"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i, (pic, text) in enumerate(zip(pics, prompts)):
            pic.save(folder / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "prompt": text}) + "\n")
    overrides = ["model.path=tiny:sd", "mi.renoise_draws=4", "generate.actors=1",
                 "generate.cpus_per_actor=0.5"]
    score_images(load_config(None, overrides), str(folder), str(tmp_path / "out"))
    rows = {r["source"]: r for r in pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()}
    scores = api.score_pairs(pics, prompts, overrides=overrides)
    for i, score in enumerate(scores):
        row = rows[f"{i}.png"]
        # PNG files round-trip the pixels exactly; only batch shapes differ (float32 rounding).
        assert abs(score.mi - row["mi"]) < 1e-3 * row["mi_stderr"]
        assert abs(score.stderr - row["mi_stderr"]) < 1e-3 * row["mi_stderr"]
