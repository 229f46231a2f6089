"""BLIP-VQA: the arithmetic on fixed logits, the question text, and a tiny model end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mitune_ray.errors import MituneError
from mitune_ray.metrics.blipvqa import (
    BlipVqaScorer,
    blip_pixel_values,
    combine_phrase_probabilities,
    pre_question,
    t2i_compbench_questions,
    yes_probability,
)


def test_yes_probability_matches_the_reference_softmax_ratio():
    # Vocabulary of 4: ids 1 = yes, 2 = no. Hand values: e^2/(e^2+e^0) = 0.880797...
    logits = torch.tensor([[5.0, 2.0, 0.0, -1.0], [0.0, 1.0, 1.0, 9.0], [0.0, -3.0, 0.0, 0.0]])
    expected = [math.exp(2) / (math.exp(2) + 1), 0.5, math.exp(-3) / (math.exp(-3) + 1)]
    got = yes_probability(logits, yes_id=1, no_id=2)
    assert got.tolist() == pytest.approx(expected, abs=1e-7)
    softmax = torch.softmax(logits, dim=1)
    reference = softmax[:, 1] / (softmax[:, 1] + softmax[:, 2])  # T2I-CompBench's vqa_prob
    assert torch.allclose(got, reference, atol=1e-7)


def test_yes_probability_stays_finite_where_the_softmax_underflows():
    logits = torch.tensor([[0.0, -200.0, -201.0, 200.0]])  # p(yes), p(no) underflow to 0
    softmax = torch.softmax(logits, dim=1)
    assert torch.isnan(softmax[:, 1] / (softmax[:, 1] + softmax[:, 2])).all()
    got = yes_probability(logits, yes_id=1, no_id=2).item()
    assert got == pytest.approx(math.e / (math.e + 1), abs=1e-6)


def test_phrase_probabilities_multiply():
    assert combine_phrase_probabilities([0.5, 0.8, 0.25]) == pytest.approx(0.1)
    assert combine_phrase_probabilities([]) == 1.0  # the reference's missing questions count 1
    # The reference's 4-decimal JSON: 0.123456 -> 0.1235; 0.1235 * 0.5 = 0.06175, whose binary
    # value lies just below the half, -> 0.0617.
    assert combine_phrase_probabilities([0.123456, 0.5], reference_rounding=True) == 0.0617


def test_questions_are_the_references():
    assert pre_question('The red "hat".') == "the red hat"
    assert t2i_compbench_questions(
        "The fluffy pillow was on top of the wooden chair.", backend="rules"
    ) == ["the fluffy pillow?", "the wooden chair?"]
    colours = "red green blue pink gray white black brown tan".split()
    many = ", ".join(f"a {c} cube" for c in colours)
    assert len(t2i_compbench_questions(many, backend="rules")) == 8  # --np_num 8


def test_pixel_values_are_resized_and_normalised(images):
    pixels = blip_pixel_values(images[:1], image_size=16)
    assert pixels.shape == (1, 3, 16, 16)
    # A pure red image: (1 - mean) / std in channel 0 and (0 - mean) / std elsewhere.
    red = (1 - 0.48145466) / 0.26862954
    assert pixels[0, 0].flatten().unique().tolist() == pytest.approx([red])
    assert pixels[0, 2].flatten().unique().tolist() == pytest.approx([-0.40821073 / 0.27577711])


@pytest.fixture(scope="module")
def scorer(blip_folder):
    return BlipVqaScorer.from_folder(blip_folder, device="cpu", image_size=32, backend="rules")


def test_tiny_model_round_trip_and_token_ids(scorer, blip_folder):
    from transformers import BlipForQuestionAnswering

    built = BlipForQuestionAnswering.from_pretrained(blip_folder)
    loaded = scorer.model.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in built.state_dict().items())
    vocab = scorer.tokenizer.get_vocab()
    assert (scorer.yes_id, scorer.no_id) == (vocab["yes"], vocab["no"])
    assert scorer.enc_token_id == vocab["[ENC]"]
    assert scorer.model.decoder_start_token_id == vocab["[DEC]"]


def test_score_is_the_product_of_the_model_answers(scorer, images):
    prompt = "a green bench and a blue bowl"
    questions = ["a green bench?"] * 2 + ["a blue bowl?"] * 2
    per_phrase = scorer.yes_probabilities(images[:2] * 2, questions)
    assert np.all((per_phrase > 0) & (per_phrase < 1))
    assert abs(per_phrase[0] - per_phrase[1]) > 1e-4  # the answer depends on the image
    scores = scorer.score(images[:2], [prompt, prompt])
    np.testing.assert_allclose(scores, per_phrase[:2] * per_phrase[2:], rtol=1e-6)


def test_score_matches_a_manual_forward(scorer, images):
    model, tok = scorer.model, scorer.tokenizer
    text = tok(["a cat?"], return_tensors="pt")
    ids = text.input_ids.clone()
    ids[:, 0] = tok.convert_tokens_to_ids("[ENC]")
    with torch.no_grad():
        pixels = blip_pixel_values(images[2:3], image_size=32)
        image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
        q = model.text_encoder(input_ids=ids, attention_mask=text.attention_mask,
                               encoder_hidden_states=image_embeds).last_hidden_state
        logits = model.text_decoder(input_ids=torch.tensor([[model.decoder_start_token_id]]),
                                    encoder_hidden_states=q).logits[0, 0]
    p = torch.softmax(logits, 0)
    expected = (p[scorer.yes_id] / (p[scorer.yes_id] + p[scorer.no_id])).item()
    # "a cat on the left of a dog" asks "a cat?" and "a dog?": check the first on its own.
    assert scorer.yes_probabilities(images[2:3], ["a cat?"])[0] == pytest.approx(expected, rel=1e-5)


def test_scorer_names_its_noun_phrase_chunker(scorer):
    assert scorer.info == {"noun_phrase_chunker": "rules"}  # backend="rules"


def test_prompts_without_phrases_score_one(scorer, images):
    assert scorer.score(images[:1], ["on the left"]).tolist() == [1.0]


def test_missing_folder_and_weights_are_one_line_errors(tmp_path):
    with pytest.raises(MituneError, match="blip-vqa-base") as err:
        BlipVqaScorer.from_folder(tmp_path / "absent")
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MituneError, match="no model.safetensors"):
        BlipVqaScorer.from_folder(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(MituneError, match="pickle"):
        BlipVqaScorer.from_folder(tmp_path)


def test_length_mismatch_is_an_error(scorer, images):
    with pytest.raises(MituneError, match="2 images for 1 prompts"):
        scorer.score(images[:2], ["a cat"])


def test_answers_do_not_depend_on_the_other_questions_of_the_batch(scorer, images):
    alone = scorer.yes_probabilities(images[3:], ["a cat?"])[0]
    questions = ["the fluffy pillow?", "a cat?", "a red apple?"]  # 3 different token lengths
    mixed = scorer.yes_probabilities(images[3:] * 3, questions)
    assert mixed[1] == pytest.approx(alone, rel=1e-6)
