"""ShapesWorld: one or two coloured shapes on a white canvas, with a known ground truth.

A `Scene` states what is in the picture (colour, shape and size of each object, and for two
objects the relation of the first to the second); `render(scene, seed)` places the objects with
jittered positions and draws a 64 x 64 RGB image, deterministically from `(scene, seed)`.

Some colour-shape pairs (`HELD_OUT_PAIRS`) and some two-object combinations
(`held_out_combos()`) never appear in training: they make the evaluation split, so that a model
trained on the rest binds attributes imperfectly there and alignment has room to improve.

Example:
    >>> scene = Scene((Obj("red", "circle", "large"), Obj("blue", "square", "small")), "left")
    >>> render(scene, seed=0).shape
    (64, 64, 3)
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mitune_ray.errors import MituneError

IMAGE_SIZE = 64  # pixels; a factor-8 autoencoder makes 8 x 8 latents, like SD's layout
BACKGROUND = (255, 255, 255)
# Chosen far apart in RGB (>= 95 between any two, >= 100 from white) so the checker can classify
# a blurry, slightly tinted generated pixel by its nearest palette colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 40),
    "green": (40, 165, 50),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 30),
    "purple": (135, 45, 190),
    "orange": (245, 125, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
# Side of the bounding box in pixels; far enough apart that size survives the autoencoder's blur.
SIZES: dict[str, int] = {"small": 14, "large": 24}
RELATIONS = ("left", "right", "above", "below")  # the first object is <relation> the second
SUPERSAMPLE = 4  # draw at 4x and downsample: antialiased edges, like a real photograph's

# Each colour and each shape is held out exactly once, so every word is still seen in training.
HELD_OUT_PAIRS = frozenset({("purple", "triangle"), ("orange", "circle"), ("green", "square")})
HELD_OUT_COMBO_FRACTION = 0.15  # share of two-object combinations of training pairs held out
SPLIT_SEED = 1234  # fixes which combinations are held out; part of the world's definition


@dataclass(frozen=True)
class Obj:
    """One object: a colour from `PALETTE`, a shape from `SHAPES`, a size from `SIZES`."""

    colour: str
    shape: str
    size: str = "large"

    def __post_init__(self) -> None:
        for value, allowed, what in ((self.colour, COLOURS, "colour"), (self.shape, SHAPES, "shape"),
                                     (self.size, tuple(SIZES), "size")):
            if value not in allowed:
                raise MituneError(f"unknown {what} {value!r} in a ShapesWorld object; use one of "
                                  f"{', '.join(allowed)}")


@dataclass(frozen=True)
class Scene:
    """One object, or two with a relation (`None` = "and": both present, anywhere)."""

    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if len(self.objects) not in (1, 2):
            raise MituneError(f"a ShapesWorld scene has 1 or 2 objects, got {len(self.objects)}")
        if self.relation is not None and (len(self.objects) != 2 or self.relation not in RELATIONS):
            raise MituneError(f"relation {self.relation!r} needs two objects and one of "
                              f"{', '.join(RELATIONS)}")
        if len(self.objects) == 2 and self.objects[0].colour == self.objects[1].colour:
            # Different colours keep the two objects apart for the checker even when they touch.
            raise MituneError(f"two objects of one colour ({self.objects[0].colour}) are not "
                              "part of ShapesWorld; give them different colours")


@dataclass(frozen=True)
class Placed:
    """An object with the centre of its bounding box, in pixels."""

    obj: Obj
    x: float
    y: float


def held_out_combos() -> frozenset[frozenset[tuple[str, str]]]:
    """The two-object combinations of training colour-shape pairs kept out of training.

    Example:
        >>> len(held_out_combos()) > 0
        True
    """
    pairs = [p for p in itertools.product(COLOURS, SHAPES) if p not in HELD_OUT_PAIRS]
    combos = [frozenset((a, b)) for a, b in itertools.combinations(pairs, 2) if a[0] != b[0]]
    rng = random.Random(SPLIT_SEED)
    return frozenset(rng.sample(combos, round(HELD_OUT_COMBO_FRACTION * len(combos))))


def is_held_out(scene: Scene) -> bool:
    """Whether `scene` belongs to the evaluation split (never shown in training)."""
    pairs = [(o.colour, o.shape) for o in scene.objects]
    if any(p in HELD_OUT_PAIRS for p in pairs):
        return True
    return len(pairs) == 2 and frozenset(pairs) in held_out_combos()


def random_scene(rng: random.Random, *, split: str = "train", p_single: float = 0.4) -> Scene:
    """A random scene of `split` ("train" or "eval"), by rejection from the full world.

    Example:
        >>> is_held_out(random_scene(random.Random(0), split="eval"))
        True
    """
    if split not in ("train", "eval"):
        raise MituneError(f"split {split!r} is not a ShapesWorld split; use 'train' or 'eval'")
    while True:
        n = 1 if rng.random() < p_single else 2
        colours = rng.sample(COLOURS, n)
        objs = tuple(Obj(c, rng.choice(SHAPES), rng.choice(tuple(SIZES))) for c in colours)
        relation = None if n == 1 else rng.choice(RELATIONS + (None,))
        scene = Scene(objs, relation)
        if is_held_out(scene) == (split == "eval"):
            return scene


def _layout_ok(a: Placed, b: Placed, relation: str | None) -> bool:
    """The layout rule: clearly separated along one axis, and not too far off it on the other."""
    dx, dy = a.x - b.x, a.y - b.y  # image y grows downwards
    gap = (SIZES[a.obj.size] + SIZES[b.obj.size]) / 2 + 3
    major, minor = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx),
                    None: (max(abs(dx), abs(dy)), 0.0)}[relation]
    return major >= gap and abs(minor) <= 0.4 * major


def layout(scene: Scene, seed: int) -> tuple[Placed, ...]:
    """Jittered object positions for `scene`, deterministic in `seed` (rejection sampling)."""
    rng = random.Random(seed)
    for _ in range(10_000):
        placed = tuple(Placed(o, rng.uniform(lo, hi), rng.uniform(lo, hi))
                       for o in scene.objects
                       for lo, hi in [(SIZES[o.size] / 2 + 1, IMAGE_SIZE - SIZES[o.size] / 2 - 1)])
        if len(placed) == 1 or _layout_ok(placed[0], placed[1], scene.relation):
            return placed
    raise RuntimeError(f"no layout found for {scene}")  # unreachable for ShapesWorld's sizes


def _draw(draw: ImageDraw.ImageDraw, p: Placed) -> None:
    s = SUPERSAMPLE
    half = SIZES[p.obj.size] / 2
    x0, y0, x1, y1 = ((p.x - half) * s, (p.y - half) * s, (p.x + half) * s, (p.y + half) * s)
    colour = PALETTE[p.obj.colour]
    if p.obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif p.obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:  # upright triangle filling its bounding box
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def render_placed(placed: tuple[Placed, ...]) -> np.ndarray:
    """Draw placed objects: an `IMAGE_SIZE` x `IMAGE_SIZE` x 3 uint8 array."""
    size = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for p in placed:
        _draw(draw, p)
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))


def render(scene: Scene, seed: int) -> np.ndarray:
    """Render `scene` with positions drawn from `seed`: an `IMAGE_SIZE`-square RGB uint8 array.

    Example:
        >>> img = render(Scene((Obj("red", "square"),)), seed=3)
        >>> img.dtype, img.shape
        (dtype('uint8'), (64, 64, 3))
    """
    return render_placed(layout(scene, seed))
