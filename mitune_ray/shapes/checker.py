"""The exact ShapesWorld checker: scores each fact a prompt states from an image's pixels.

Pixels are classified to the nearest palette colour (or white) within a distance threshold, so
blurred edges and slight tints of a generated image are tolerated; each colour's connected
components (tiny ones ignored) are classified by shape from how low their mass sits and how much
of their bounding box they fill, and by size from the bounding box. Relations compare the two objects' centroids along the stated axis.

Example:
    >>> from mitune_ray.shapes.world import Obj, Scene, render
    >>> scene = Scene((Obj("red", "circle"), Obj("blue", "square")), "left")
    >>> check("a red circle to the left of a blue square", render(scene, seed=0)).all_correct
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mitune_ray.errors import MituneError
from mitune_ray.shapes.prompts import Facts, ObjSpec, parse_prompt
from mitune_ray.shapes.world import BACKGROUND, COLOURS, PALETTE, SIZES

COLOUR_MAX_DISTANCE = 50.0  # RGB distance from a white-to-colour line; about half the closest gap
MIN_COVERAGE = 0.5  # a pixel at least half covered by a colour belongs to its object
MAX_COVERAGE = 1.4  # darker than the colour itself by this much is another colour, not this one
MIN_AREA_PX = 30  # smaller components are noise, not objects (a small triangle covers ~100 px)
# Shape thresholds, set between the classes' ranges measured on renders blurred by up to 1.6 px:
TRIANGLE_MIN_DROP = 0.045  # triangles 0.06..0.17, circles and squares within +-0.03
SQUARE_MIN_FILL = 0.845  # squares fill 0.86..1.0 of their box, circles 0.70..0.83
MIN_FILL = 0.45  # sparser components are scribbles
MAX_ASPECT = 1.6  # ShapesWorld objects have square boxes; longer ones are smears or merges
SIZE_THRESHOLD_PX = (SIZES["small"] + SIZES["large"]) / 2  # bounding-box side, small vs large
FACT_KINDS = ("object", "size", "relation")


@dataclass(frozen=True)
class Component:
    """One connected region of one palette colour, as the checker saw it."""

    colour: str
    shape: str | None  # None: matches no ideal shape well enough
    size: str
    area: int
    cx: float
    cy: float


@dataclass(frozen=True)
class CheckResult:
    """Per-fact outcomes for one (prompt, image) pair.

    `facts` maps a readable fact ("red circle", "size of red circle", "red circle left of blue
    square") to whether it holds; `fraction` is the share that hold; `all_correct` all of them.
    `kinds` maps each fact to its kind, one of `FACT_KINDS`: an object present with its colour
    and shape, its stated size, or the relation between the two objects.
    """

    facts: dict[str, bool]
    components: tuple[Component, ...]
    kinds: dict[str, str] = field(default_factory=dict)

    def holds(self, kind: str) -> list[bool]:
        """Whether each fact of `kind` holds (empty when the prompt states none)."""
        return [ok for fact, ok in self.facts.items() if self.kinds.get(fact) == kind]

    @property
    def fraction(self) -> float:
        return sum(self.facts.values()) / len(self.facts)

    @property
    def all_correct(self) -> bool:
        return all(self.facts.values())


def _as_array(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise MituneError(f"the checker needs an RGB image (H x W x 3), got shape {array.shape}")
    return array.astype(np.float32) if array.dtype == np.uint8 else array.astype(np.float32) * 255


def classify_pixels(image) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel label (index into `COLOURS`, -1 for background) and per-colour coverage.

    Each pixel is read as a blend of white and one palette colour (how antialiasing and blur
    make edges): its coverage `alpha` along the white-to-colour line, and its distance from that
    line. A pixel belongs to the colour it lies closest to, if at least half covered; so an
    object's mask is its 50% contour, which blur moves little.
    """
    rgb = _as_array(image)
    white = np.array(BACKGROUND, dtype=np.float32)
    direction = white - np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # (C, 3)
    offset = white - rgb  # (H, W, 3)
    alpha = offset @ direction.T / (direction**2).sum(axis=1)  # (H, W, C)
    residual = np.linalg.norm(offset[:, :, None, :] - alpha[..., None] * direction, axis=-1)
    coverage = np.where(residual <= COLOUR_MAX_DISTANCE, np.clip(alpha, 0.0, 1.0), 0.0)
    residual[(alpha < MIN_COVERAGE) | (alpha > MAX_COVERAGE)] = np.inf
    labels = residual.argmin(axis=-1)
    labels[residual.min(axis=-1) > COLOUR_MAX_DISTANCE] = -1
    return labels, coverage


def shape_of(mask: np.ndarray) -> str | None:
    """Shape of one component's mask (cropped to its bounding box), or None for a blob.

    An upright triangle's mass sits low in its box (centroid 2/3 down); a square fills its box,
    a circle pi/4 of it. Both features move little under blur, unlike corners.
    """
    h, w = mask.shape
    if max(h, w) > MAX_ASPECT * min(h, w):
        return None
    fill = mask.sum() / (h * w)
    drop = (np.nonzero(mask)[0].mean() + 0.5) / h - 0.5  # centroid below the box centre
    if drop > TRIANGLE_MIN_DROP:
        return "triangle"
    if drop < -TRIANGLE_MIN_DROP or fill < MIN_FILL:
        return None  # upside down, or too sparse: no ShapesWorld shape
    return "square" if fill > SQUARE_MIN_FILL else "circle"


def find_components(image) -> tuple[Component, ...]:
    """Every object-sized single-colour region of `image`, with its shape, size and centroid.

    Example:
        >>> import numpy as np
        >>> find_components(np.full((32, 32, 3), 255, np.uint8))
        ()
    """
    labels, _coverage = classify_pixels(image)
    found: list[Component] = []
    for index, colour in enumerate(COLOURS):
        regions, n = ndimage.label(labels == index)
        for region, box in enumerate(ndimage.find_objects(regions), start=1):
            mask = regions[box] == region
            area = int(mask.sum())
            if area < MIN_AREA_PX:
                continue
            side = max(mask.shape)
            ys, xs = np.nonzero(mask)
            found.append(Component(
                colour=colour, shape=shape_of(mask),
                size="large" if side > SIZE_THRESHOLD_PX else "small", area=area,
                cx=float(xs.mean() + box[1].start), cy=float(ys.mean() + box[0].start),
            ))
    return tuple(found)


def _match(spec: ObjSpec, components: tuple[Component, ...]) -> Component | None:
    """The largest component of the stated colour and shape (the object the prompt means)."""
    hits = [c for c in components if c.colour == spec.colour and c.shape == spec.shape]
    return max(hits, key=lambda c: c.area) if hits else None


def _relation_holds(a: Component, b: Component, relation: str) -> bool:
    """Displacement of a from b points the stated way, and mostly along that axis."""
    dx, dy = a.cx - b.cx, a.cy - b.cy  # image y grows downwards
    major, minor = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx),
                    "below": (dy, dx)}[relation]
    return major > 0 and abs(minor) < major


def _name(spec: ObjSpec) -> str:
    return f"{spec.colour} {spec.shape}"


def check_facts(facts: Facts, image) -> CheckResult:
    """Score parsed `facts` against `image` (PIL image or H x W x 3 uint8 array)."""
    components = find_components(image)
    matches = [_match(spec, components) for spec in facts.objects]
    outcome: dict[str, bool] = {}
    kinds: dict[str, str] = {}
    for spec, match in zip(facts.objects, matches):
        outcome[_name(spec)], kinds[_name(spec)] = match is not None, "object"
        if spec.size is not None:
            key = f"size of {_name(spec)}"
            outcome[key] = match is not None and match.size == spec.size
            kinds[key] = "size"
    if facts.relation is not None:
        a, b = matches
        words = {"left": "left of", "right": "right of"}.get(facts.relation, facts.relation)
        key = f"{_name(facts.objects[0])} {words} {_name(facts.objects[1])}"
        outcome[key] = a is not None and b is not None and _relation_holds(a, b, facts.relation)
        kinds[key] = "relation"
    return CheckResult(outcome, components, kinds)


def check(prompt: str, image) -> CheckResult:
    """Score every fact `prompt` states against `image`, from the pixels.

    Example:
        >>> from mitune_ray.shapes.world import Obj, Scene, render
        >>> result = check("a red circle", render(Scene((Obj("red", "square"),)), seed=0))
        >>> result.facts, result.fraction
        ({'red circle': False}, 0.0)
    """
    return check_facts(parse_prompt(prompt), image)


def checker_scores(prompt: str, images) -> list[float]:
    """Oracle selection scores for candidates of one prompt: all facts hold first, then the
    fraction that hold (the ShapesWorld benchmark's upper-bound control)."""
    results = [check(prompt, image) for image in images]
    return [float(r.all_correct) + r.fraction for r in results]


def fully_correct(prompt: str, images) -> list[float]:
    """1.0 for each image in which every fact of `prompt` holds, else 0.0 (the pool metric)."""
    return [float(check(prompt, image).all_correct) for image in images]


def fact_rates(results) -> dict[str, float | None]:
    """Share of the facts of each kind that hold over `results` (None: none stated), and
    `relation_given_objects`: the share of relations that hold where both objects were found.
    Two objects placed at random satisfy one of the four relations about 1 time in 4.

    Example:
        >>> from mitune_ray.shapes.world import Obj, Scene, render
        >>> image = render(Scene((Obj("blue", "square"), Obj("red", "circle")), "left"), seed=0)
        >>> fact_rates([check("a red circle to the left of a blue square", image)])
        {'object': 1.0, 'size': None, 'relation': 0.0, 'relation_given_objects': 0.0}
    """
    held = {kind: [ok for r in results for ok in r.holds(kind)] for kind in FACT_KINDS}
    held["relation_given_objects"] = [ok for r in results if all(r.holds("object"))
                                      for ok in r.holds("relation")]
    return {kind: float(np.mean(v)) if v else None for kind, v in held.items()}
