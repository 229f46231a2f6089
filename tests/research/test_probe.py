"""The fact probe: edits contradict exactly one kind of fact, and their cost is read correctly."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch

from research.shapes.probe import (EDITS, RELATION_PAIR, _prompt, edit, learnability, main,
                                     relation_scenes, two_prompt_world)
from mitune_ray.shapes.prompts import parse_prompt


def _scenes(n: int):
    return relation_scenes(n, seed=11)


def test_each_edit_contradicts_one_kind_of_fact_in_the_same_template():
    for i, scene in enumerate(_scenes(40)):
        true = parse_prompt(_prompt(scene, i))
        flipped = parse_prompt(_prompt(edit(scene, "relation"), i))
        assert flipped.objects == true.objects and flipped.relation != true.relation
        reordered = parse_prompt(_prompt(edit(scene, "order"), i))
        assert reordered.objects == true.objects[::-1] and reordered.relation == true.relation
        assert sorted(_prompt(edit(scene, "order"), i).split()) == sorted(_prompt(scene, i).split())
        turned = parse_prompt(_prompt(edit(scene, "axis"), i))
        assert turned.objects == true.objects
        assert {turned.relation, true.relation} & {"left", "right"}  # one horizontal,
        assert {turned.relation, true.relation} & {"above", "below"}  # the other vertical
        recoloured = parse_prompt(_prompt(edit(scene, "colour", i), i))
        assert recoloured.relation == true.relation and recoloured.objects[1] == true.objects[1]
        assert recoloured.objects[0].colour not in {o.colour for o in true.objects}
        assert recoloured.objects[0].shape == true.objects[0].shape
        resized = parse_prompt(_prompt(edit(scene, "size"), i))
        assert [o.size for o in resized.objects] != [o.size for o in true.objects]
        assert all(o.size is not None for o in true.objects)  # sizes always stated
        assert len(_prompt(edit(scene, "relation"), i).split()) == len(_prompt(scene, i).split())
        assert _prompt(edit(scene, "empty"), i) == ""
    with pytest.raises(ValueError, match="unknown edit"):
        edit(_scenes(1)[0], "shape")


@pytest.fixture(scope="module")
def shipped():
    return str(files("mitune_ray.assets") / "shapes_model")


def test_probe_sees_colours_in_the_shipped_model(shipped, tmp_path):
    out = main([shipped, "--n", "8", "--repeats", "1", "--json", str(tmp_path / "p.json")])
    assert set(out["nats"]) == set(EDITS) and len(out["levels"]) == 10
    # A contradicted colour makes the ground truth much less likely under the model's own ELBO.
    assert out["nats"]["colour"] > 1.0 and out["nats"]["empty"] > 1.0
    assert max(out["increase"]["colour"]) > 0.2
    assert (tmp_path / "p.json").exists()
    # The same costs split by the true prompt's template: a weighted mean of the two is the whole.
    counts, split = out["n_by_template"], out["nats_by_template"]
    assert sum(counts.values()) == 8 and set(split) == {"direct", "inverted"}
    for e in EDITS:
        whole = sum(counts[k] * split[k][e] for k in split) / 8
        assert whole == pytest.approx(out["nats"][e], abs=0.01)


def test_a_denoiser_that_ignores_the_prompt_pays_nothing_for_any_edit(shipped):
    from diffusers import StableDiffusionPipeline

    from research.shapes.probe import probe

    pipe = StableDiffusionPipeline.from_pretrained(shipped)
    forward = pipe.unet.forward
    pipe.unet.forward = lambda z, t, context, **kw: forward(z, t, torch.zeros_like(context), **kw)
    out = probe(pipe, n=4, repeats=1)
    assert all(x == 0.0 for x in out["nats"].values())
    assert all(x == 0.0 for e in EDITS for x in out["increase"][e])


def test_learnability_trains_the_architecture_on_the_relation_world_and_probes_it():
    from mitune_ray.shapes import model as arch
    from mitune_ray.shapes.pretrain import TrainSettings

    settings = TrainSettings(unet_steps=5, unet_batch=8, warmup_steps=1, unet_size=arch.TEST)
    out = learnability(1.0, settings=settings, n_scenes=32, log=lambda line: None)
    assert out["trained"]["unet_steps"] == 5  # the step cap, not the clock, ended it
    assert out["n"] == 64 and out["settings"]["unet_channels"] == list(arch.TEST.channels)
    assert {parse_prompt(out["example"]["true"]).relation,
            parse_prompt(out["example"]["relation"]).relation} == {"left", "right"}
    assert {o.colour for o in parse_prompt(out["example"]["true"]).objects} == {
        o.colour for o in RELATION_PAIR}
    with pytest.raises(ValueError, match="minutes=0"):
        learnability(0)
    with pytest.raises(ValueError, match="world='colour' is not one of relation, order"):
        learnability(1.0, world="colour")


def test_the_order_world_names_the_pair_in_either_order_always_left_of():
    scenes = two_prompt_world(40, "t", "order")
    assert {s.objects for s in scenes} == {RELATION_PAIR, RELATION_PAIR[::-1]}
    assert {s.relation for s in scenes} == {"left"}
    assert {s.relation for s in two_prompt_world(40, "t")} == {"left", "right"}


def test_learn_flags_reach_the_training(monkeypatch, capsys):
    import research.shapes.probe as probe_module

    seen = {}

    def fake(minutes, *, settings, world, log):
        seen.update(minutes=minutes, steps=settings.unet_steps, world=world,
                    channels=settings.unet_size.channels, p_direct=settings.p_direct,
                    curriculum=(settings.p_canonical, settings.tilt_anneal))
        return {"trained": {"unet_steps": settings.unet_steps}, "levels": [50],
                "nats": dict.fromkeys(EDITS, 0.0), "increase": {e: [0.0] for e in EDITS},
                "nats_by_template": {"inverted": dict.fromkeys(EDITS, 0.5)}}

    monkeypatch.setattr(probe_module, "learnability", fake)
    main(["--learn", "30", "--steps", "3700", "--world", "order", "--channels", "32,64",
          "--p-direct", "0.75"])
    assert seen == {"minutes": 30.0, "steps": 3700, "world": "order", "channels": (32, 64),
                    "p_direct": 0.75, "curriculum": (None, 0.0)}  # the order world stays "left"
    out = capsys.readouterr().out
    assert "two-prompt order world (3700 steps)" in out
    assert "inverted templates only, nats: relation 0.50" in out
    main(["--learn", "30"])
    assert seen["p_direct"] is None  # both templates alike, as the world writes prompts
    with pytest.raises(SystemExit):
        main(["--learn", "5", "--steps", "0"])
    assert "--steps 0 must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--learn", "5", "--p-direct", "1.5"])
    assert "--p-direct 1.5 must be between 0 and 1" in capsys.readouterr().err
