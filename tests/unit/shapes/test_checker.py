"""The exact checker: ground truth passes, every kind of mistake is caught, blur is tolerated."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mitune_ray.errors import MituneError
from mitune_ray.shapes.checker import FACT_KINDS, check, fact_rates, find_components, shape_of
from mitune_ray.shapes.prompts import describe
from mitune_ray.shapes.world import (
    IMAGE_SIZE, SHAPES, Obj, Placed, Scene, random_scene, render, render_placed,
)

RED_LEFT_OF_BLUE = Scene((Obj("red", "circle", "large"), Obj("blue", "square", "small")), "left")
PROMPT = "a large red circle to the left of a small blue square"


def _blur(image: np.ndarray, sigma: float, noise: float, seed: int) -> np.ndarray:
    out = ndimage.gaussian_filter(image.astype(float), (sigma, sigma, 0))
    out += np.random.default_rng(seed).normal(0, noise, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_ground_truth_scores_all_correct_over_many_scenes():
    rng = random.Random(0)
    for i in range(400):
        scene = random_scene(rng, split=rng.choice(["train", "eval"]))
        prompt = describe(scene, rng, p_state_size=0.7)
        result = check(prompt, render(scene, seed=i))
        assert result.all_correct, (prompt, result)
        assert result.fraction == 1.0


def test_mildly_blurred_noisy_ground_truth_still_scores_correct():
    rng = random.Random(1)
    passed = 0
    for i in range(200):
        scene = random_scene(rng)
        passed += check(describe(scene, rng), _blur(render(scene, i), 1.2, 8, i)).all_correct
    assert passed >= 198


def test_facts_and_fraction_values():
    result = check(PROMPT, render(RED_LEFT_OF_BLUE, 0))
    assert result.facts == {"red circle": True, "size of red circle": True, "blue square": True,
                            "size of blue square": True, "red circle left of blue square": True}
    assert result.fraction == 1.0 and result.all_correct


def test_swapped_relation_is_caught():
    swapped = Scene(RED_LEFT_OF_BLUE.objects, "right")
    result = check(PROMPT, render(swapped, 0))
    assert result.facts["red circle left of blue square"] is False
    assert result.fraction == pytest.approx(4 / 5) and not result.all_correct


def test_wrong_colour_wrong_shape_and_wrong_size_are_caught():
    wrong_colour = Scene((Obj("orange", "circle", "large"), Obj("blue", "square", "small")), "left")
    result = check(PROMPT, render(wrong_colour, 0))
    assert result.facts["red circle"] is False
    assert result.facts["red circle left of blue square"] is False  # no red circle to relate
    assert result.fraction == pytest.approx(2 / 5)

    wrong_shape = Scene((Obj("red", "circle", "large"), Obj("blue", "triangle", "small")), "left")
    assert check(PROMPT, render(wrong_shape, 0)).facts["blue square"] is False

    wrong_size = Scene((Obj("red", "circle", "small"), Obj("blue", "square", "small")), "left")
    facts = check(PROMPT, render(wrong_size, 0)).facts
    assert facts["red circle"] is True and facts["size of red circle"] is False


def test_fact_rates_by_kind_on_right_and_deliberately_wrong_images():
    right = check(PROMPT, render(RED_LEFT_OF_BLUE, 0))
    assert right.kinds == {"red circle": "object", "size of red circle": "size",
                           "blue square": "object", "size of blue square": "size",
                           "red circle left of blue square": "relation"}
    assert fact_rates([right]) == {kind: 1.0 for kind in (*FACT_KINDS, "relation_given_objects")}

    swapped = check(PROMPT, render(Scene(RED_LEFT_OF_BLUE.objects, "right"), 0))
    small = check(PROMPT, render(Scene((Obj("red", "circle", "small"),
                                        Obj("blue", "square", "small")), "left"), 0))
    alone = check(PROMPT, render(Scene((Obj("red", "circle", "large"),)), 0))
    rates = fact_rates([right, swapped, small, alone])
    assert rates["object"] == pytest.approx(7 / 8)
    assert rates["size"] == pytest.approx(6 / 8)  # not: the small red circle, the missing square
    assert rates["relation"] == pytest.approx(2 / 4)  # right and small; not swapped or alone
    # Among images with both objects found (all but `alone`): 2 of 3 relations hold.
    assert rates["relation_given_objects"] == pytest.approx(2 / 3)
    # A prompt that states no size and no relation leaves those kinds undefined, not zero.
    single = check("a red circle", render(Scene((Obj("red", "circle"),)), 0))
    assert fact_rates([single]) == {"object": 1.0, "size": None, "relation": None,
                                    "relation_given_objects": None}


def test_missing_object_and_blank_image_are_caught():
    alone = Scene((Obj("red", "circle", "large"),))
    result = check(PROMPT, render(alone, 0))
    assert result.facts["red circle"] is True and result.facts["blue square"] is False
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    assert check(PROMPT, blank).fraction == 0.0


def test_every_shape_swap_is_detected():
    for i, truth in enumerate(SHAPES):
        for said in SHAPES:
            image = render(Scene((Obj("purple", truth, "small"),)), seed=i)
            assert check(f"a purple {said}", image).all_correct == (truth == said)


def test_tiny_specks_and_blobs_are_not_objects():
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    image[10:13, 10:13] = (210, 30, 40)  # a 9-pixel red speck
    assert find_components(image) == ()
    assert shape_of(np.ones((4, 20), bool)) is None  # a bar, not a ShapesWorld object


def test_accepts_pil_images_and_rejects_grey():
    image = render(RED_LEFT_OF_BLUE, 3)
    assert check(PROMPT, Image.fromarray(image)).all_correct
    with pytest.raises(MituneError, match="RGB image"):
        check(PROMPT, image[:, :, 0])


def test_components_report_centroids():
    placed = (Placed(Obj("yellow", "square", "large"), 20.0, 30.0),)
    (component,) = find_components(render_placed(placed))
    assert (component.colour, component.shape, component.size) == ("yellow", "square", "large")
    assert component.cx == pytest.approx(20.0, abs=0.6) and component.cy == pytest.approx(30.0,
                                                                                         abs=0.6)
