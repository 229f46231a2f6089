"""ShapesWorld scenes, rendering, prompts and splits."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.shapes.checker import check
from mitune_ray.shapes.prompts import (
    EVAL_RESERVE, Facts, ObjSpec, describe, eval_prompts, fact_key, parse_prompt, scene_facts,
    TUNE_RESERVE, template_kind, templates, train_prompts, tune_prompts, val_prompts,
)
from mitune_ray.shapes.world import (
    BACKGROUND, HELD_OUT_PAIRS, IMAGE_SIZE, PALETTE, Obj, Scene, held_out_combos, is_held_out,
    layout, random_scene, render,
)


def test_render_is_deterministic_and_seed_moves_objects():
    scene = Scene((Obj("red", "circle", "large"), Obj("blue", "square", "small")), "left")
    a, b, c = render(scene, 1), render(scene, 1), render(scene, 2)
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert tuple(a[0, 0]) == BACKGROUND  # corners stay background: objects keep a margin


def test_render_draws_the_palette_colours():
    image = render(Scene((Obj("green", "square", "large"),)), 0)
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert PALETTE["green"] in colours and BACKGROUND in colours


@pytest.mark.parametrize("relation", ["left", "right", "above", "below"])
def test_layout_respects_relation(relation):
    scene = Scene((Obj("red", "circle", "large"), Obj("blue", "square", "large")), relation)
    for seed in range(30):
        a, b = layout(scene, seed)
        dx, dy = a.x - b.x, a.y - b.y
        assert {"left": -dx, "right": dx, "above": -dy, "below": dy}[relation] > 0


def test_bad_scenes_are_one_line_errors():
    with pytest.raises(MituneError, match="unknown colour 'pink'"):
        Obj("pink", "circle")
    with pytest.raises(MituneError, match="different colours"):
        Scene((Obj("red", "circle"), Obj("red", "square")))
    with pytest.raises(MituneError, match="needs two objects"):
        Scene((Obj("red", "circle"),), "left")


@pytest.mark.parametrize(("template", "relation"), templates())
def test_parser_inverts_every_template(template, relation):
    prompt = template.format(a="a small orange triangle", b="a blue circle")
    facts = parse_prompt(prompt)
    small_orange_triangle, blue_circle = ObjSpec("orange", "triangle", "small"), ObjSpec("blue", "circle")
    two = "{b}" in template
    assert facts == Facts((small_orange_triangle, blue_circle) if two else (small_orange_triangle,),
                          relation)


def test_parser_examples_and_normalisation():
    assert parse_prompt("A blue square with a red circle on its left") == Facts(
        (ObjSpec("red", "circle"), ObjSpec("blue", "square")), "left")
    assert parse_prompt("  an orange circle  ") == Facts((ObjSpec("orange", "circle"),))
    with pytest.raises(MituneError, match="not a ShapesWorld prompt"):
        parse_prompt("a cat on a mat")


def test_describe_round_trips_through_the_parser():
    rng = random.Random(0)
    for _ in range(500):
        scene = random_scene(rng, split=rng.choice(["train", "eval"]))
        prompt = describe(scene, rng)
        facts = scene_facts(scene, prompt)  # raises if the prompt misstates the scene
        for spec, obj in zip(facts.objects, scene.objects):
            assert spec.size in (None, obj.size)


def test_p_direct_tilts_the_relation_templates_and_leaves_the_world_prompts_alone():
    rng = random.Random(3)
    scenes = [random_scene(rng, p_single=0.0) for _ in range(400)]
    related = [s for s in scenes if s.relation is not None]

    def kinds(p_direct):
        rng = random.Random(4)
        prompts = [describe(s, rng, p_direct=p_direct) for s in related]
        for scene, prompt in zip(related, prompts):
            scene_facts(scene, prompt)  # still states the scene exactly
        return [template_kind(p) for p in prompts]

    assert set(kinds(1.0)) == {"direct"} and set(kinds(0.0)) == {"inverted"}
    assert 0.68 < kinds(0.75).count("direct") / len(related) < 0.82
    assert template_kind("a red circle and a blue square") is None
    # None draws as the world always has: the evaluation prompts are exactly the published ones.
    assert eval_prompts(3) == ["a picture of a small orange circle and a yellow circle",
                               "a large blue triangle and a small red circle",
                               "a large red triangle to the left of a small yellow square"]


def test_p_canonical_restates_relations_with_left_and_above_for_the_same_image():
    rng = random.Random(5)
    scenes = [s for s in (random_scene(rng, p_single=0.0) for _ in range(300)) if s.relation]

    def words(p_canonical):
        rng = random.Random(6)
        out = []
        for i, scene in enumerate(scenes):
            prompt = describe(scene, rng, p_canonical=p_canonical, p_direct=0.5)
            assert check(prompt, render(scene, seed=i)).all_correct  # the same image, restated
            out.append(parse_prompt(prompt).relation)
        return out

    assert set(words(1.0)) == {"left", "above"} and set(words(0.0)) == {"right", "below"}
    assert 0.68 < sum(w in ("left", "above") for w in words(0.75)) / len(scenes) < 0.82


def test_splits_are_disjoint_and_deterministic():
    train, held = train_prompts(300, seed=0), eval_prompts(100, seed=0)
    assert train == train_prompts(300, seed=0) and held == eval_prompts(100, seed=0)
    assert len(set(train)) == 300 and len(set(held)) == 100
    assert not set(train) & set(held)
    for prompt in train:
        pairs = {(o.colour, o.shape) for o in parse_prompt(prompt).objects}
        assert not pairs & HELD_OUT_PAIRS
        assert len(pairs) == 1 or frozenset(pairs) not in held_out_combos()
    for prompt in held:
        facts = parse_prompt(prompt)
        scene = Scene(tuple(Obj(o.colour, o.shape) for o in facts.objects), facts.relation)
        assert is_held_out(scene)


def test_tuning_prompts_are_held_out_and_never_restate_an_evaluation_prompt(monkeypatch):
    tune = tune_prompts(150, seed=0)
    assert tune == tune_prompts(150, seed=0) and len(set(tune)) == 150
    assert tune != tune_prompts(150, seed=1)
    reserved = {fact_key(p) for p in eval_prompts(EVAL_RESERVE)}
    for prompt in tune:
        facts = parse_prompt(prompt)
        assert is_held_out(Scene(tuple(Obj(o.colour, o.shape) for o in facts.objects), facts.relation))
        assert fact_key(prompt) not in reserved  # not even reworded or resized
    assert fact_key("a small red circle above a blue square") == fact_key(
        "a blue square with a red circle above it")
    monkeypatch.setattr("mitune_ray.shapes.prompts._EXHAUSTED_AFTER", 50)  # exhaustion, quickly
    with pytest.raises(MituneError, match="tuning prompts exist beside the reserved ones"):
        tune_prompts(100_000)


def test_validation_prompts_state_facts_neither_tuned_on_nor_evaluated_on(monkeypatch):
    val = val_prompts(60)
    assert val == val_prompts(60) and len(set(val)) == 60 and val != val_prompts(60, seed=1)
    used = {fact_key(p) for p in eval_prompts(EVAL_RESERVE) + tune_prompts(TUNE_RESERVE)}
    assert not {fact_key(p) for p in val} & used
    assert all(len(parse_prompt(p).objects) == 2 for p in val)  # single objects: all reserved
    monkeypatch.setattr("mitune_ray.shapes.prompts._EXHAUSTED_AFTER", 50)
    with pytest.raises(MituneError, match="validation prompts exist beside the reserved ones"):
        val_prompts(100_000)


def test_held_out_split_covers_every_colour_and_shape_in_training():
    rng = random.Random(0)
    seen = {(o.colour, o.shape) for _ in range(2000) for o in random_scene(rng).objects}
    assert seen.isdisjoint(HELD_OUT_PAIRS)
    assert {c for c, _ in seen} == set(PALETTE) and len({s for _, s in seen}) == 3
