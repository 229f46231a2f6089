"""The noun phrases BLIP-VQA asks about: the rule fallback on T2I-CompBench's own prompts."""

from __future__ import annotations

import re

import pytest

from mitune_ray.errors import MituneError
from mitune_ray.metrics import nounphrases
from mitune_ray.metrics.nounphrases import (
    chunker_name, noun_chunks, noun_phrases, rule_noun_chunks,
)

from .conftest import read_prompts

# A two-object attribute prompt: "[a|an] ATTRIBUTE NOUN... and [a|an] ATTRIBUTE NOUN...".
OBJECT = r"((?:an? )?[a-z-]+(?: [a-z-]+)+)"
TWO_OBJECTS = re.compile(rf"^{OBJECT} and {OBJECT}\.?$")


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a green bench and a blue bowl", ["a green bench", "a blue bowl"]),
        (
            "A bathroom with green tile and a red shower curtain.",
            ["A bathroom", "green tile", "a red shower curtain"],
        ),
        ("a cat on the left of a dog", ["a cat", "a dog"]),
        ("a mouse on side of a key", ["a mouse", "side", "a key"]),  # 'side' is not excluded
        ("the fluffy pillow was on top of the wooden chair",
         ["the fluffy pillow", "the wooden chair"]),
        ("A black and white cat sits in a white sink.", ["A black and white cat", "a white sink"]),
        ("A long, narrow yellow kitchen with black and white floor tiles.",
         ["A long, narrow yellow kitchen", "black and white floor tiles"]),
        ("A woman is holding a yoga mat and heading to a class.",
         ["A woman", "a yoga mat", "a class"]),
        ("A cat is lazily lounging in a sunny windowsill.", ["A cat", "a sunny windowsill"]),
        ("The metallic pen and fluffy notebook jot down ideas on the wooden desk.",
         ["The metallic pen", "fluffy notebook", "ideas", "the wooden desk"]),
        ("A dog is wagging its tail and playing fetch with its owner.",
         ["A dog", "its tail", "fetch", "its owner"]),
        ("two fish, three desks and four ducks", ["two fish", "three desks", "four ducks"]),
        ("The bird is red.", ["The bird"]),  # a predicate adjective is not a phrase
        ("a snow covered street", ["a snow covered street"]),
    ],
)
def test_rule_chunker_on_prompt_forms(prompt, expected):
    assert noun_phrases(prompt, backend="rules") == expected


def test_chunks_are_exact_substrings_and_exclusions_apply():
    prompt = "a cat on the left of a dog on top of the right table"
    chunks = rule_noun_chunks(prompt)
    assert chunks == ["a cat", "the left", "a dog", "top", "the right table"]
    assert all(chunk in prompt for chunk in chunks)
    assert noun_phrases(prompt, backend="rules") == ["a cat", "a dog", "the right table"]


def test_every_attribute_prompt_has_a_phrase_and_pairs_are_recovered(compbench):
    checked = 0
    for name in ("color_val.txt", "shape_val.txt", "texture_val.txt"):
        prompts = read_prompts(compbench / name)
        assert len(prompts) == 300  # no trailing-newline or CRLF loss
        for prompt in prompts:
            assert "\r" not in prompt
            phrases = noun_phrases(prompt, backend="rules")
            assert phrases, f"{name}: no phrase in {prompt!r}"
            match = TWO_OBJECTS.match(prompt)
            if match and not {"the", "with", "of", "on", "in"} & set(prompt.split()):
                assert phrases == [match.group(1), match.group(2)], prompt
                checked += 1
    assert checked > 650  # nearly every attribute prompt is of the two-object form


def test_other_categories_yield_phrases(compbench):
    for name in ("spatial_val.txt", "non_spatial_val.txt", "complex_val.txt", "numeracy_val.txt"):
        prompts = read_prompts(compbench / name)
        empty = [p for p in prompts if not noun_phrases(p, backend="rules")]
        assert not empty, f"{name}: {empty[:3]}"
    # Spatial prompts ask about both objects and never about "the left" / "the right".
    for prompt in read_prompts(compbench / "spatial_val.txt"):
        phrases = noun_phrases(prompt, backend="rules")
        assert phrases[0] == " ".join(prompt.split()[:2]), prompt
        assert not {"the left", "the right"} & set(phrases)


def test_backend_selection(monkeypatch):
    monkeypatch.setattr(nounphrases, "_spacy_nlp", lambda: None)
    assert noun_chunks("a red apple", backend="auto") == ["a red apple"]
    with pytest.raises(MituneError, match="spaCy"):
        noun_chunks("a red apple", backend="spacy")
    with pytest.raises(MituneError, match="'auto', 'spacy' or 'rules'"):
        noun_chunks("a red apple", backend="nltk")


def test_spacy_path_keeps_chunk_text(monkeypatch):
    class Chunk:
        def __init__(self, text):
            self.text = text

    class Doc:
        noun_chunks = [Chunk("A cat"), Chunk("the left"), Chunk("a dog")]

    monkeypatch.setattr(nounphrases, "_spacy_nlp", lambda: lambda prompt: Doc())
    assert noun_phrases("A cat on the left of a dog", backend="auto") == ["A cat", "a dog"]


def test_the_chunker_in_use_is_named(monkeypatch):
    # Evaluation results record this name: the two chunkers can ask BLIP different questions.
    monkeypatch.setattr(nounphrases, "_spacy_nlp", lambda: None)
    assert chunker_name("auto") == chunker_name("rules") == "rules"
    with pytest.raises(MituneError, match="spaCy"):
        chunker_name("spacy")

    class Nlp:  # what spacy.load returns carries its package's meta
        meta = {"lang": "en", "name": "core_web_sm", "version": "3.8.0"}

    monkeypatch.setattr(nounphrases, "_spacy_nlp", lambda: Nlp())
    assert chunker_name("auto") == chunker_name("spacy") == "spacy en_core_web_sm 3.8.0"
    assert chunker_name("rules") == "rules"
