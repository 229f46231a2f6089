"""CLIPScore and HPS v2: cosine arithmetic by hand, image preparation, tiny models end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mitune_ray.errors import MituneError
from mitune_ray.metrics.clipscore import (
    OPENAI_MEAN,
    OPENAI_STD,
    ClipScorer,
    HpsV2Scorer,
    clip_pixel_values,
    clip_score_from_features,
    cosine_rows,
    hps_from_features,
)


def test_cosines_by_hand():
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
    text = torch.tensor([[4.0, 3.0], [-1.0, 0.0], [2.0, 2.0]])
    expected = [24 / 25, -1.0, 1.0]  # (3*4 + 4*3) / (5*5); opposite; parallel
    assert cosine_rows(image, text).tolist() == pytest.approx(expected, abs=1e-12)
    assert clip_score_from_features(image, text).tolist() == pytest.approx([96.0, 0.0, 100.0])
    hessel = clip_score_from_features(image, text, weight=2.5)
    assert hessel.tolist() == pytest.approx([2.4, 0.0, 2.5])
    assert hps_from_features(image, text).tolist() == pytest.approx([96.0, -100.0, 100.0])


def test_crop_fit_equals_transformers_clip_image_processor(images):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}
    )
    theirs = processor(images=images, return_tensors="pt").pixel_values
    ours = clip_pixel_values(images, size=24, fit="crop")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_pad_fit_is_hps_resize_max_size():
    # A 40 x 20 white image -> longest side 20 -> 20 x 10, pasted centred on a black 20 x 20.
    pixels = clip_pixel_values([Image.new("RGB", (40, 20), "white")], size=20, fit="pad")
    white = [(1 - m) / s for m, s in zip(OPENAI_MEAN, OPENAI_STD)]
    black = [-m / s for m, s in zip(OPENAI_MEAN, OPENAI_STD)]
    for c in range(3):
        assert pixels[0, c, 5:15, :].flatten().tolist() == pytest.approx([white[c]] * 200, abs=1e-5)
        assert pixels[0, c, :5, :].flatten().tolist() == pytest.approx([black[c]] * 100, abs=1e-6)
        assert pixels[0, c, 15:, :].flatten().tolist() == pytest.approx([black[c]] * 100, abs=1e-6)
    with pytest.raises(MituneError, match="'crop' or 'pad'"):
        clip_pixel_values([Image.new("RGB", (4, 4))], size=4, fit="stretch")


@pytest.fixture(scope="module")
def clip_scorer(clip_folder):
    return ClipScorer.from_folder(clip_folder, device="cpu")


def _manual_cosines(scorer, images, prompts, fit):
    model = scorer.clip.model
    pixels = clip_pixel_values(images, size=32, fit=fit)
    ids = scorer.clip.tokenizer(prompts, padding=True, return_tensors="pt").input_ids
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels).pooler_output
        text = model.text_model(input_ids=ids).pooler_output
        image = (image @ model.visual_projection.weight.T).double()
        text = (text @ model.text_projection.weight.T).double()
    return ((image * text).sum(-1) / (image.norm(dim=-1) * text.norm(dim=-1))).numpy()


def test_clipscore_of_the_tiny_model(clip_scorer, images):
    prompts = ["a green bench and a blue bowl", "a cat", "a red apple", "a dog on the left"]
    scores = clip_scorer.score(images, prompts)
    cosines = _manual_cosines(clip_scorer, images, prompts, fit="crop")
    np.testing.assert_allclose(scores, 100 * np.maximum(cosines, 0), atol=1e-9)
    assert len(set(np.round(cosines, 6))) == 4  # images and prompts matter
    # Batching and padding do not change a pair's score.
    alone = [clip_scorer.score([im], [p])[0] for im, p in zip(images, prompts)]
    np.testing.assert_allclose(scores, alone, atol=1e-4)


def test_clipscore_weight_and_prefix(clip_folder, images):
    hessel = ClipScorer.from_folder(
        clip_folder, device="cpu", weight=2.5, prefix="A photo depicts "
    )
    cosine = _manual_cosines(hessel, images[:1], ["A photo depicts a cat"], fit="crop")[0]
    assert hessel.score(images[:1], ["a cat"])[0] == pytest.approx(2.5 * max(cosine, 0.0), abs=1e-9)


def test_clipscore_reads_mean_and_std_from_the_folder(tmp_path, images):
    from mitune_ray.testing.tiny_metrics import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "clip")
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    )
    scorer = ClipScorer.from_folder(folder, device="cpu")
    assert scorer.clip.mean == (0.5, 0.5, 0.5) and scorer.clip.std == (0.5, 0.5, 0.5)


def test_hps_scorer_on_a_converted_checkpoint(tmp_path, images):
    from mitune_ray.metrics.openclip import convert_openclip_checkpoint
    from mitune_ray.testing.tiny_metrics import tiny_openclip_state_dict

    torch.save(tiny_openclip_state_dict(seed=1), tmp_path / "hps.pt")
    folder = convert_openclip_checkpoint(tmp_path / "hps.pt", tmp_path / "hps", vision_heads=2,
                                         text_heads=2)
    scorer = HpsV2Scorer.from_folder(folder, device="cpu")
    prompts = ["a red apple", "a cat", "a blue bowl", "a green bench"]
    scores = scorer.score(images, prompts)
    cosines = _manual_cosines(scorer, images, prompts, "pad")
    np.testing.assert_allclose(scores, 100 * cosines, atol=1e-9)
    assert np.all(np.abs(scores) <= 100)


def test_missing_folders_name_the_fix(tmp_path):
    with pytest.raises(MituneError, match="clip-vit-large-patch14"):
        ClipScorer.from_folder(tmp_path / "absent")
    with pytest.raises(MituneError, match="convert_openclip_checkpoint"):
        HpsV2Scorer.from_folder(tmp_path / "absent")


def test_length_mismatch_is_an_error(clip_scorer, images):
    with pytest.raises(MituneError, match="2 images for 1 prompts"):
        clip_scorer.score(images[:2], ["a cat"])
    assert math.isfinite(clip_scorer.score(images[:1], ["a " * 200])[0])  # long prompts truncate


def test_unknown_dtype_is_an_error(clip_folder):
    with pytest.raises(MituneError, match="'float8'"):
        ClipScorer.from_folder(clip_folder, device="cpu", dtype="float8")
