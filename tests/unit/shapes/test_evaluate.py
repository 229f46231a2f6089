"""Scoring a model's samples: overall rates and the one- / two-object breakdown."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mitune_ray.shapes.evaluate import Samples, grid, score
from mitune_ray.shapes.prompts import describe
from mitune_ray.shapes.world import IMAGE_SIZE, Scene, random_scene, render


def _ground_truth(n: int, seed: int) -> tuple[Samples, list[Scene]]:
    rng = random.Random(seed)
    scenes = [random_scene(rng, split="eval") for _ in range(n)]
    return Samples([describe(s, rng) for s in scenes],
                   np.stack([render(s, seed=i) for i, s in enumerate(scenes)])), scenes


def test_score_of_ground_truth_is_all_correct_with_the_object_breakdown():
    samples, scenes = _ground_truth(12, seed=3)
    out = score(samples)
    singles = sum(len(s.objects) == 1 for s in scenes)
    assert 0 < singles < 12
    assert (out["all_correct"], out["fraction"], out["n"]) == (1.0, 1.0, 12)
    assert out["all_correct_1obj"][1] + out["all_correct_2obj"][1] == 12
    assert out["all_correct_1obj"][1] == singles
    assert all(rate in (1.0, None) for rate, _ in (out["all_correct_1obj"], out["all_correct_2obj"]))
    assert set(out["facts"].values()) == {1.0}  # objects, sizes and relations: all stated
    assert out["relation_by_template"] == {"direct": 1.0, "inverted": 1.0}


def test_relations_are_also_scored_by_template():
    from mitune_ray.shapes.world import Obj

    a, b = Obj("red", "circle"), Obj("blue", "square")
    left_image = render(Scene((a, b), "left"), seed=0)  # the red circle on the left
    prompts = ["a red circle to the left of a blue square",  # direct, holds
               "a blue square to the left of a red circle",  # direct, wrong
               "a blue square with a red circle on its left",  # inverted, holds
               "a red circle and a blue square"]  # no relation
    out = score(Samples(prompts, np.stack([left_image] * 4)))
    assert out["relation_by_template"] == {"direct": 0.5, "inverted": 1.0}


def test_score_catches_missing_objects():
    samples, _ = _ground_truth(12, seed=4)
    blank = np.full_like(samples.images, 255)  # nothing drawn: every stated object is missing
    out = score(Samples(samples.prompts, blank))
    assert out["all_correct"] == 0.0 and out["fraction"] < 0.5
    assert out["all_correct_2obj"][0] in (0.0, None)
    assert out["facts"]["object"] == 0.0 and out["facts"]["relation_given_objects"] is None


def test_grid_tiles_images_row_by_row():
    images = np.zeros((5, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    images[4] = 7
    tiled = grid(images, columns=2)
    assert tiled.shape == (3 * IMAGE_SIZE, 2 * IMAGE_SIZE, 3)
    assert (tiled[2 * IMAGE_SIZE:, :IMAGE_SIZE] == 7).all()
    assert (tiled[2 * IMAGE_SIZE:, IMAGE_SIZE:] == 255).all()  # padding is white


def test_cli_scores_several_seeds_at_the_asked_guidance(tmp_path):
    import json
    from importlib.resources import files

    from mitune_ray.shapes.evaluate import main

    model = str(files("mitune_ray.assets") / "shapes_model")
    out = tmp_path / "m.json"
    metrics = main([model, "3", "--steps", "2", "--seeds", "2", "--guidance", "12",
                    "--splits", "heldout", "--json", str(out)])
    assert set(metrics) == {"heldout"} and json.loads(out.read_text()) == metrics
    got = metrics["heldout"]
    assert (got["n"], got["seeds"], got["guidance"], got["steps"]) == (6, 2, 12.0, 2)
    assert 0.0 <= got["all_correct"] <= got["fraction"] <= 1.0


def test_cli_fuses_a_trained_adapter_before_sampling(tmp_path, monkeypatch):
    from importlib.resources import files

    import torch

    import mitune_ray.shapes.evaluate as evaluate
    from mitune_ray.adapters import dora_config, export_adapter
    from mitune_ray.config import TrainSection
    from mitune_ray.families import denoiser, load_pipeline

    model = str(files("mitune_ray.assets") / "shapes_model")
    pipe, fam = load_pipeline(model)
    net = denoiser(pipe, fam)
    base = {k: v.clone() for k, v in net.state_dict().items()}
    net.add_adapter(dora_config(fam, TrainSection(rank=4)))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    adapter = export_adapter(net, fam, tmp_path / "adapter").parent

    used = []
    real = evaluate.generate
    monkeypatch.setattr(evaluate, "generate", lambda p, *a, **k: used.append(p) or real(p, *a, **k))
    metrics = evaluate.main([model, "2", "--steps", "2", "--splits", "heldout",
                             "--adapter", str(adapter)])
    assert metrics["heldout"]["adapters"] == [str(adapter)]
    fused = used[0].unet.state_dict()
    moved = [k for k, v in base.items() if k in fused and not torch.equal(fused[k], v)]
    assert moved and all("lora" not in k for k in fused), "fused into the base weights"


@pytest.mark.parametrize("args", [["--splits", "test"], ["--seeds", "0"], ["0"]])
def test_cli_rejects_bad_arguments_in_one_line(args, capsys):
    from mitune_ray.shapes.evaluate import main

    with pytest.raises(SystemExit) as err:
        main(["unused-model-folder", *args])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in message and args[-1] in message
