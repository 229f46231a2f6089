"""ShapesWorld prompts: paraphrase templates, the exact parser back to facts, and the splits.

Every template is a fixed English frame around object phrases ("a small red circle"), so
`parse_prompt` recovers exactly the facts a prompt states (objects with colour, shape and, if
stated, size; the relation of the first object to the second), whatever the template.

Example:
    >>> parse_prompt("a blue square with a red circle on its left")
    Facts(objects=(ObjSpec(colour='red', shape='circle', size=None), ObjSpec(colour='blue', shape='square', size=None)), relation='left')
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from mitune_ray.errors import MituneError
from mitune_ray.shapes.world import COLOURS, SHAPES, SIZES, Obj, Scene, random_scene

P_STATE_SIZE = 0.5  # each object's size is stated in half the prompts: both forms get trained


@dataclass(frozen=True)
class ObjSpec:
    """An object as a prompt states it; `size` is None when the prompt does not say."""

    colour: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class Facts:
    """What a prompt states: 1 or 2 objects, and the relation of objects[0] to objects[1]."""

    objects: tuple[ObjSpec, ...]
    relation: str | None = None


# Relation templates: {a} and {b} are object phrases; the relation is that of a to b.
_RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("{a} to the left of {b}", "{b} with {a} on its left"),
    "right": ("{a} to the right of {b}", "{b} with {a} on its right"),
    "above": ("{a} above {b}", "{b} with {a} above it"),
    "below": ("{a} below {b}", "{b} with {a} below it"),
}
_AND_TEMPLATES = ("{a} and {b}", "a picture of {a} and {b}")
_SINGLE_TEMPLATES = ("{a}", "a picture of {a}", "{a} on a white background")

def _object_pattern(name: str) -> str:
    return (rf"an? (?:(?P<{name}_size>{'|'.join(SIZES)}) )?(?P<{name}_colour>{'|'.join(COLOURS)}) "
            rf"(?P<{name}_shape>{'|'.join(SHAPES)})")


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{a}"), _object_pattern("a"))
    pattern = pattern.replace(re.escape("{b}"), _object_pattern("b"))
    return re.compile(pattern)


def templates() -> list[tuple[str, str | None]]:
    """Every prompt template with the relation it states ({a} is <relation> {b}).

    Example:
        >>> templates()[1]
        ('{b} with {a} on its left', 'left')
    """
    return [(t, rel) for rel, ts in _RELATION_TEMPLATES.items() for t in ts] + [
        (t, None) for t in _AND_TEMPLATES + _SINGLE_TEMPLATES]


# A relation's templates are (direct, inverted): the direct one names first the object the
# relation places ("{a} to the left of {b}"), the inverted one the other ("{b} with {a} ...").
_TEMPLATE_KINDS = ("direct", "inverted")


@functools.lru_cache(maxsize=1)
def _parsers() -> list[tuple[re.Pattern[str], str | None, str | None]]:
    """(regex, relation, template kind) of every template, in `templates()` order."""
    kinds = {t: kind for ts in _RELATION_TEMPLATES.values() for t, kind in zip(ts, _TEMPLATE_KINDS)}
    return [(_template_regex(t), relation, kinds.get(t)) for t, relation in templates()]


def _match(prompt: str) -> tuple[re.Match[str], str | None, str | None]:
    text = " ".join(prompt.lower().split())
    for regex, relation, kind in _parsers():
        match = regex.fullmatch(text)
        if match is not None:
            return match, relation, kind
    raise MituneError(f"prompt {prompt!r} is not a ShapesWorld prompt; write it like "
                      "'a red circle to the left of a blue square' (see shapes.prompts.templates())")


def parse_prompt(prompt: str) -> Facts:
    """The facts a ShapesWorld prompt states; a `MituneError` if it is not a ShapesWorld prompt.

    Example:
        >>> parse_prompt("a small green triangle").objects[0]
        ObjSpec(colour='green', shape='triangle', size='small')
    """
    match, relation, _ = _match(prompt)
    groups = match.groupdict()
    names = ["a", "b"] if "b_colour" in groups else ["a"]
    objects = tuple(ObjSpec(groups[f"{n}_colour"], groups[f"{n}_shape"], groups[f"{n}_size"])
                    for n in names)
    return Facts(objects, relation)


def _phrase(obj: Obj, state_size: bool) -> str:
    words = ([obj.size] if state_size else []) + [obj.colour, obj.shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


# The word a relation is stated with under `p_canonical`, and each word's opposite.
CANONICAL = {"left": "left", "right": "left", "above": "above", "below": "above"}
FLIPPED = {"left": "right", "right": "left", "above": "below", "below": "above"}


def describe(scene: Scene, rng: random.Random, *, p_state_size: float = P_STATE_SIZE,
             p_direct: float | None = None, p_canonical: float | None = None) -> str:
    """A prompt for `scene`, with a template (and stated sizes) drawn from `rng`.

    Training-only tilts (None, the default, writes prompts as the world does; any value draws
    from `rng` differently):
    - `p_direct`: the chance that a relation is stated in its direct template ("{a} to the left
      of {b}": the first-named object is the one the relation places) rather than the inverted
      one ("{b} with {a} on its left"); see `template_kind`.
    - `p_canonical`: the chance that a relation is stated with "left" or "above" rather than
      "right" or "below", by naming the objects the other way round where needed ("a red circle
      right of a blue square" is also "a blue square left of a red circle": the same image).

    Example:
        >>> from mitune_ray.shapes.world import Obj, Scene
        >>> describe(Scene((Obj("orange", "circle"),)), random.Random(0), p_state_size=0.0)
        'a picture of an orange circle'
    """
    if p_canonical is not None and scene.relation is not None:
        canonical = scene.relation == CANONICAL[scene.relation]
        if canonical != (rng.random() < p_canonical):
            scene = Scene(scene.objects[::-1], FLIPPED[scene.relation])
    phrases = [_phrase(o, rng.random() < p_state_size) for o in scene.objects]
    if len(phrases) == 1:
        template = rng.choice(_SINGLE_TEMPLATES)
        return template.format(a=phrases[0])
    if scene.relation is None:
        return rng.choice(_AND_TEMPLATES).format(a=phrases[0], b=phrases[1])
    direct, inverted = _RELATION_TEMPLATES[scene.relation]
    if p_direct is None:
        template = rng.choice((direct, inverted))
    else:
        template = direct if rng.random() < p_direct else inverted
    return template.format(a=phrases[0], b=phrases[1])


def template_kind(prompt: str) -> str | None:
    """"direct" if `prompt` names first the object its relation places, "inverted" if it names
    the other first ("... with ... on its left"), None if it states no relation.

    Example:
        >>> template_kind("a blue square with a red circle on its left")
        'inverted'
    """
    return _match(prompt)[2]


def scene_facts(scene: Scene, prompt: str) -> Facts:
    """The facts of `prompt`, checked to agree with `scene` (a guard for data generation)."""
    facts = parse_prompt(prompt)
    expected = tuple((o.colour, o.shape) for o in scene.objects)
    if tuple((o.colour, o.shape) for o in facts.objects) != expected or (
            facts.relation != scene.relation):
        raise AssertionError(f"prompt {prompt!r} does not describe {scene}")
    return facts


def _prompts(n: int, seed: int, split: str) -> list[str]:
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        prompt = describe(random_scene(rng, split=split), rng)
        if prompt not in seen:  # distinct prompts: each one is a separate evaluation item
            seen.add(prompt)
            out.append(prompt)
    return out


def train_prompts(n: int = 200, *, seed: int = 0) -> list[str]:
    """`n` distinct prompts of the training split, deterministic in `seed`.

    Example:
        >>> train_prompts(2, seed=0) == train_prompts(2, seed=0)
        True
    """
    return _prompts(n, seed, "train")


def eval_prompts(n: int = 100, *, seed: int = 0) -> list[str]:
    """`n` distinct held-out prompts (combinations never shown in training), deterministic.

    Example:
        >>> len(eval_prompts(5))
        5
    """
    return _prompts(n, seed, "eval")


EVAL_RESERVE = 200  # tune_prompts never states the facts of the first 200 evaluation prompts
_EXHAUSTED_AFTER = 20_000  # draws in a row with no new tuning prompt: the space is used up


def fact_key(prompt: str) -> tuple:
    """What a prompt asks for, up to wording and stated sizes: the objects and the relation."""
    facts = parse_prompt(prompt)
    return tuple((o.colour, o.shape) for o in facts.objects), facts.relation


def _disjoint_prompts(n: int, rng: random.Random, reserved: set, what: str) -> list[str]:
    """`n` distinct held-out-split prompts, none stating the facts (`fact_key`) in `reserved`."""
    seen: set[str] = set()
    out: list[str] = []
    misses = 0
    while len(out) < n and misses < _EXHAUSTED_AFTER:
        prompt = describe(random_scene(rng, split="eval"), rng)
        misses += 1
        if prompt not in seen and fact_key(prompt) not in reserved:
            seen.add(prompt)
            out.append(prompt)
            misses = 0
    if len(out) == n:
        return out
    raise MituneError(f"only {len(out)} {what} prompts exist beside the reserved ones; "
                      f"ask for at most {len(out)}, not {n}")


def tune_prompts(n: int = 100, *, seed: int = 0) -> list[str]:
    """`n` held-out-split prompts for self-tuning, disjoint from the evaluation prompts.

    MI-TUNE needs no labels, only the prompts a user cares about; the paper tunes on
    T2I-CompBench's training prompts of a category and evaluates on its validation prompts. The
    analogue here: prompts from the held-out combinations, none of which states the same objects
    and relation as any of `eval_prompts(EVAL_RESERVE)` (so evaluation prompts up to that size
    are never tuned on, not even reworded). Single-object held-out scenes are all in the reserve,
    so these are two-object prompts.

    Example:
        >>> reserved = {fact_key(p) for p in eval_prompts(EVAL_RESERVE)}
        >>> any(fact_key(p) in reserved for p in tune_prompts(20))
        False
    """
    reserved = {fact_key(p) for p in eval_prompts(EVAL_RESERVE)}
    return _disjoint_prompts(n, random.Random(f"tune:{seed}"), reserved, "tuning")


TUNE_RESERVE = 256  # val_prompts never states the facts of the first 256 tuning prompts


def val_prompts(n: int = 100, *, seed: int = 0) -> list[str]:
    """`n` validation prompts: held-out-split prompts stating facts that neither
    `eval_prompts(EVAL_RESERVE)` nor `tune_prompts(TUNE_RESERVE)` state.

    What a recipe is chosen on (the bench's `eval_split=val`): a model tuned on up to
    `TUNE_RESERVE` tuning prompts is judged on combinations it was not tuned on, as it is on the
    evaluation prompts, which stay unseen until the recipe is fixed.

    Example:
        >>> used = {fact_key(p) for p in eval_prompts(EVAL_RESERVE) + tune_prompts(TUNE_RESERVE)}
        >>> any(fact_key(p) in used for p in val_prompts(20))
        False
    """
    reserved = {fact_key(p) for p in eval_prompts(EVAL_RESERVE) + tune_prompts(TUNE_RESERVE)}
    return _disjoint_prompts(n, random.Random(f"val:{seed}"), reserved, "validation")
