"""ShapesWorld's plug-ins: the anti-oracle selector, and every selection arm drawing the same
candidates (the bench's shared pools) on the bundled model, in one process."""

from __future__ import annotations

import numpy as np
import pytest

from mitune_ray import registry
from mitune_ray.config import GenerateSection, MISection
from mitune_ray.models import ModelSpec, load_model
from mitune_ray.sampling import CandidateSampler, Prompt
from mitune_ray.shapes import register
from mitune_ray.shapes.checker import checker_scores
from mitune_ray.shapes.plugins import anti_checker_scores
from mitune_ray.shapes.prompts import eval_prompts
from mitune_ray.shapes.world import Obj, Scene, render

ARMS = ("mi", "random", "checker", "anti")


def test_anti_keeps_what_the_checker_judges_least_correct():
    prompt = "a red circle to the left of a blue square"
    images = [render(Scene((Obj("red", "circle"), Obj("blue", "square")), "left"), seed=0),
              render(Scene((Obj("red", "circle"), Obj("blue", "square")), "right"), seed=0),
              render(Scene((Obj("green", "triangle"),)), seed=0)]
    oracle, anti = checker_scores(prompt, images), anti_checker_scores(prompt, images)
    assert int(np.argmax(oracle)) == 0  # every fact holds
    assert int(np.argmax(anti)) == 2  # no fact holds
    assert anti == [-v for v in oracle] and oracle[0] > oracle[1] > oracle[2]
    register()
    assert registry.load(registry.entry(registry.SELECTORS, "anti", where="test")) is \
        anti_checker_scores


@pytest.fixture(scope="module")
def shapes_model():
    pipe, fam, device, dtype = load_model(ModelSpec("bundled:shapes"), device="cpu")
    return pipe, fam


def _generate(shapes_model, select_by: str, seed: int = 0):
    pipe, fam = shapes_model
    scorer = {"checker": checker_scores, "anti": anti_checker_scores}.get(select_by)
    gen = GenerateSection(candidates=4, keep=1, steps=4, max_batch=8, seed=seed,
                          select_by=select_by)
    sampler = CandidateSampler(pipe, fam, gen, MISection(renoise_draws=4), device="cpu",
                               scorer=scorer, judge=checker_scores)
    prompts = [Prompt(f"p{i}", text) for i, text in enumerate(eval_prompts(2))]
    return sampler.generate(prompts, 1, gallery=frozenset(p.prompt_id for p in prompts))


def test_every_arm_selects_from_the_same_candidates_and_a_seed_changes_them(shapes_model):
    """Candidate seeds come from (generate.seed, prompt id, round, index), never from the
    selector: the arms of one bench replicate choose among identical round-1 candidates. The
    latents are bit-identical (the same MI); their images agree to one grey level, since each arm
    decodes its kept candidate first, in another VAE batch, and some CPUs' convolutions round
    differently per batch size."""
    runs = {arm: _generate(shapes_model, arm) for arm in ARMS}
    reference = runs["mi"]
    for arm, results in runs.items():
        for res, ref in zip(results, reference):
            assert res.mi == ref.mi, arm  # the same candidates, the same scores
            assert res.pool == ref.pool, arm  # the checker's verdict on every candidate
            for (index, image), (ref_index, ref_image) in zip(res.gallery, ref.gallery):
                assert index == ref_index and _grey_levels(image, ref_image) <= 1, arm
    for p in range(2):
        pool = runs["mi"][p].pool  # checker_scores of every candidate: all correct + fraction
        assert pool[runs["checker"][p].selected[0].index] == max(pool)
        assert pool[runs["anti"][p].selected[0].index] == min(pool)
        assert runs["mi"][p].selected[0].index == int(np.argmax(runs["mi"][p].mi))
    other = _generate(shapes_model, "mi", seed=1)  # another replicate: other candidates
    assert all(_grey_levels(a[1], b[1]) > 32 for res, ref in zip(other, reference)
               for a, b in zip(res.gallery, ref.gallery))


def _grey_levels(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference of two uint8 images in any pixel and channel."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
