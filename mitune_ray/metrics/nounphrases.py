"""Noun phrases of a prompt, as T2I-CompBench's BLIP-VQA computes them.

T2I-CompBench (`BLIPvqa_eval/BLIP_vqa.py`) runs spaCy's `en_core_web_sm` over the prompt, keeps
`doc.noun_chunks` in order, drops the chunks 'top', 'the side', 'the left' and 'the right', and asks
BLIP one question per remaining chunk. With spaCy and an English model installed we do exactly
that. spaCy is optional (it is not a dependency of this package), so without it a deterministic
rule-based chunker stands in. It is written for T2I-CompBench's prompt forms and recovers a base
noun phrase = optional determiner + modifiers + head noun, like spaCy's chunks:

- "a green bench and a blue bowl"        -> ["a green bench", "a blue bowl"]
- "A bathroom with green tile and a red shower curtain."
                                          -> ["A bathroom", "green tile", "a red shower curtain"]
- "a cat on the left of a dog"           -> ["a cat", "a dog"]     ("the left" is dropped)
- "the fluffy pillow was on top of the wooden chair"
                                          -> ["the fluffy pillow", "the wooden chair"]

How the fallback decides (no part-of-speech tagger, only closed word lists):
- Closed-class words end a phrase: prepositions, conjunctions, auxiliaries, adverbs, relative
  pronouns, punctuation. A determiner, possessive or numeral starts a new phrase.
- Coordinated modifiers stay in one phrase ("a black and white cat", "A long, narrow yellow
  kitchen"), as in spaCy, when everything before the "and"/comma is a modifier and the word after
  it is an adjective.
- A verb (or adverb) is recognised by form and position, and ends the phrase: an "-ing"/"-ly"
  word that does not follow a determiner or adjective ("is lazily lounging"); an "-ed" word that
  neither follows a modifier nor precedes another content word ("is parked near"); a listed
  verb ("sits", "hang") not after an adjective; a word between a noun and a determiner ("the
  spoon and bowl mix the batter"); a word after "to" before a determiner, or after a pronoun.
- A phrase needs a head: it may not end in a determiner or a pure adjective ("one blue" is not a
  phrase), and a determiner-less predicate after "is"/"was"/... is not one ("the bird is red").
- Personal pronouns ("it", "they") are phrases of their own, as in spaCy; relative pronouns
  ("which", "who") are not (spaCy sometimes makes them chunks: a known difference).
Its output is the exact substring of the prompt (case and inner commas kept), as `chunk.text` is.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from mitune_ray.errors import MituneError
from mitune_ray.metrics import _english as en

Backend = Literal["auto", "spacy", "rules"]

# T2I-CompBench's BLIP_vqa.py skips these chunks (spatial words, not objects to look for).
EXCLUDED_CHUNKS = ("top", "the side", "the left", "the right")
SPACY_MODEL = "en_core_web_sm"  # the model T2I-CompBench loads
RULES_CHUNKER = "rules"  # `chunker_name` of the built-in fallback

_PRONOUN = "<pronoun>"  # `last_break` marker: the previous token was a personal pronoun
# Endings of adjectives, to tell "The vibrant, multicolored feathers" from "a cat, a dog".
_ADJECTIVE_ENDINGS = (
    "y", "ed", "ing", "ant", "ent", "ive", "ous", "ful", "ic", "al", "ate", "ish", "less", "able",
    "ible",
)
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*|n't|[^\sA-Za-z0-9]")


def _is_word(token: str) -> bool:
    return token[0].isalnum()


def _classify(word: str, run_kinds: list[str], next_word: str | None, last_break: str) -> str:
    """Kind of a content word in context: 'adj', 'nadj' (adjective or noun), 'noun' or 'verb'.

    Adverbs count as verbs: both end the phrase. `run_kinds` are the kinds of the phrase so far,
    `last_break` the closed-class word before it ("" when none).
    """
    before_object = next_word is not None and next_word.lower() in en.OBJECT_STARTS
    follows_modifier = bool(run_kinds) and run_kinds[-1] in ("det", "adj", "nadj", "sep")
    next_is_content = next_word is not None and _is_word(next_word) and (
        next_word.lower() not in en.BREAKS | en.DETERMINERS | en.FINITE_VERBS
    )
    if word in en.PURE_ADJECTIVES:
        return "adj"
    if word in en.NOUN_ADJECTIVES:
        return "nadj"  # a modifier that may also be the head: "a glass jar", "a glass"
    if word.endswith(("ous", "less", "ful")):
        return "adj"  # "feeling peaceful", "delicious", "endless" (a handful is rare in prompts)
    if len(word) > 4 and word.endswith("ly") and word not in en.LY_NOUNS:
        return "adj" if follows_modifier else "verb"  # "a lovely garden" / "lazily lounging"
    if len(word) > 4 and word.endswith("ing") and word not in en.ING_NOUNS:
        return "adj" if follows_modifier else "verb"  # "a dining table" / "a man holding"
    if len(word) > 4 and word.endswith("ed") and word not in en.ED_NOUNS:
        # "a snow covered street", "the jagged, rocky cliffs" / "parked nearby", "placed on"
        return "adj" if next_is_content or follows_modifier else "verb"
    after_adjective = bool(run_kinds) and run_kinds[-1] in ("det", "adj")
    after_prep = not run_kinds and last_break in en.PREPOSITIONS
    if word in en.FINITE_VERBS and not after_adjective and not after_prep:
        return "verb"  # "a bath tub sits" / "a stand", "with rest"
    if before_object and run_kinds and run_kinds[-1] in ("noun", "nadj"):
        return "verb"  # nouns are not followed by a determiner: "the pen and notebook jot down"
    if before_object and not run_kinds and last_break == "to":
        return "verb"  # an infinitive: "to catch a train"
    if not run_kinds and last_break == _PRONOUN:
        return "verb"  # "as they float", "making it sail"
    return "noun"


def _joins_modifiers(tokens: list[tuple[str, int, int]], i: int, kinds: list[str]) -> bool:
    """Whether the ',' / 'and' / 'or' at `i` joins modifiers inside the phrase being built.

    Two cases: adjectives from the lists on both sides ("a black and white cat", "A long, narrow
    yellow kitchen"), or a comma after determiner + one adjective-looking word, followed by another
    content word ("The vibrant, multicolored feathers").
    """
    word = tokens[i][0].lower()
    j = i + 1
    while j < len(tokens) and tokens[j][0].lower() in ("and", "or"):
        j += 1
    if j >= len(tokens) or word not in (",", "and", "or"):
        return False
    after = tokens[j][0].lower()
    if {"adj", "nadj"} & set(kinds) and "noun" not in kinds and after in en.ADJECTIVES:
        return True
    if word != "," or len(kinds) != 2 or kinds[0] != "det" or not _is_word(after):
        return False
    before = tokens[i - 1][0].lower()
    adjective_like = before in en.ADJECTIVES or before.endswith(_ADJECTIVE_ENDINGS)
    closed = en.BREAKS | en.DETERMINERS | en.PERSONAL_PRONOUNS | en.FINITE_VERBS
    # Two content words must follow (modifier + noun), or it is a clause: "a dish, tasting it".
    follow = [t[0].lower() for t in tokens[j : j + 2]]
    return adjective_like and len(follow) == 2 and all(
        _is_word(w) and w not in closed for w in follow
    )


def rule_noun_chunks(prompt: str) -> list[str]:
    """Base noun phrases of `prompt` by the fallback rules (see the module docstring).

    Example:
        >>> rule_noun_chunks("a bathroom with green tile and a red shower curtain")
        ['a bathroom', 'green tile', 'a red shower curtain']
    """
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(prompt)]
    chunks: list[str] = []
    run: list[int] = []  # token indices of the phrase being built
    kinds: list[str] = []  # 'det' / 'adj' / 'nadj' / 'noun' / 'sep' per run token
    predicate = False  # the run began right after a copula ("is red")
    last_break = ""

    def close() -> None:
        nonlocal run, kinds
        while kinds and (kinds[-1] == "sep" or (kinds[-1] == "adj" and "noun" in kinds)):
            run, kinds = run[:-1], kinds[:-1]  # "a black and" -> "a black"; "wearer warm"
        head = tokens[run[-1]][0].lower() if run else ""
        has_det = "det" in kinds
        if run and kinds[-1] != "det" and head not in en.PURE_ADJECTIVES and not (
            predicate and not has_det
        ):
            chunks.append(prompt[tokens[run[0]][1] : tokens[run[-1]][2]])
        run, kinds = [], []

    def begin(kind: str, i: int) -> None:
        nonlocal predicate
        if not run:
            predicate = last_break in en.COPULAS
        run.append(i)
        kinds.append(kind)

    for i, (token, _, _) in enumerate(tokens):
        word = token.lower()
        next_word = tokens[i + 1][0] if i + 1 < len(tokens) else None
        if run and _joins_modifiers(tokens, i, kinds):
            kinds[-1] = "adj" if kinds[-1] == "noun" else kinds[-1]  # "vibrant" in "The vibrant,"
            begin("sep", i)
            continue
        if not _is_word(token):
            close()
            last_break = word
            continue
        if word == "her" and next_word is not None and _is_word(next_word) and (
            next_word.lower() not in en.BREAKS | en.DETERMINERS
        ):
            word = "its"  # possessive "her", a determiner like "its"
        if word == "one" and kinds and kinds[-1] in ("det", "adj"):
            word = "thing"  # "a loved one": here "one" is the head noun, not a numeral
        if (word in en.DETERMINERS and word != "that") or word.isdigit():
            if {"noun", "adj", "nadj"} & set(kinds):
                close()
            begin("det", i)
            continue
        if word in en.PERSONAL_PRONOUNS or word == "her":
            close()
            chunks.append(token)
            last_break = _PRONOUN
            continue
        if word == "can" and kinds and kinds[-1] != "det" and (
            next_word is None or not _is_word(next_word)
            or next_word.lower() in en.PREPOSITIONS | en.CONJUNCTIONS | en.DETERMINERS
        ):
            word = "tin"  # the noun: "a soda can and", "a paint can." (not "can hold")
        if word in en.BREAKS:
            close()
            last_break = word
            continue
        kind = _classify(word, kinds, next_word, last_break)
        if kind == "verb":
            close()
            last_break = ""  # what follows is an object ("holding umbrellas" -> "umbrellas")
            continue
        begin(kind, i)
    close()
    return chunks


@functools.lru_cache(maxsize=1)
def _spacy_nlp():
    """spaCy's English pipeline, or None when spaCy or its model is not installed."""
    try:
        import spacy
    except ImportError:
        return None
    try:
        return spacy.load(SPACY_MODEL)
    except OSError:
        return None


def spacy_available() -> bool:
    """True when spaCy and `en_core_web_sm` load (then T2I-CompBench's exact chunker runs)."""
    return _spacy_nlp() is not None


def _resolve(backend: Backend):
    """spaCy's pipeline for `backend`, or None for the rules; errors for a bad or missing one."""
    if backend not in ("auto", "spacy", "rules"):
        raise MituneError(
            f"noun phrase backend {backend!r} is unknown: use 'auto', 'spacy' or 'rules'"
        )
    nlp = None if backend == "rules" else _spacy_nlp()
    if nlp is None and backend == "spacy":
        raise MituneError(
            f"noun phrase backend 'spacy' needs spaCy and its {SPACY_MODEL} model, which are not "
            f"installed: pip install spacy and install {SPACY_MODEL} from a local wheel, "
            "or use backend='rules'"
        )
    return nlp


def chunker_name(backend: Backend = "auto") -> str:
    """The chunker `noun_chunks` uses for `backend` in this environment: "spacy
    en_core_web_sm X.Y.Z" (T2I-CompBench's own) or "rules" (the built-in fallback). Evaluation
    results record it (`metrics.json`), since the two can ask BLIP different questions.

    Example:
        >>> chunker_name("rules")
        'rules'
    """
    nlp = _resolve(backend)
    if nlp is None:
        return RULES_CHUNKER
    return f"spacy {SPACY_MODEL} {nlp.meta.get('version', '?')}"


def noun_chunks(prompt: str, *, backend: Backend = "auto") -> list[str]:
    """All noun chunks of `prompt`, before T2I-CompBench's exclusions.

    Args:
        prompt: the text-to-image prompt.
        backend: "spacy" (error when missing), "rules" (the fallback), or "auto" (spaCy when
            installed, else the rules).
    """
    nlp = _resolve(backend)
    if nlp is None:
        return rule_noun_chunks(prompt)
    return [chunk.text for chunk in nlp(prompt).noun_chunks]


def noun_phrases(prompt: str, *, backend: Backend = "auto") -> list[str]:
    """The noun phrases BLIP-VQA asks about: noun chunks minus T2I-CompBench's excluded ones.

    Example:
        >>> noun_phrases("a cat on the left of a dog", backend="rules")
        ['a cat', 'a dog']
    """
    return [c for c in noun_chunks(prompt, backend=backend) if c not in EXCLUDED_CHUNKS]
