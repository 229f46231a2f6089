"""ShapesWorld in the framework's registries (`mitune_ray.registry`): what `register` plugs in.

- prompt source `shapes:SPLIT:N`: N prompts of a split (train: the base model's training split;
  eval: held out; tune: held out, disjoint from eval; val: held out, disjoint from eval and
  from the first 256 tune prompts), e.g. `prompts.train=[shapes:tune:192]`;
- selector `checker` (`generate.select_by=checker`): the exact checker, an oracle upper bound;
- selector `anti` (`generate.select_by=anti`): the checker reversed, an anti-oracle lower
  bound: keeps the candidates the checker judges least correct;
- pool metric `shapes` (`generate.pool_metric`, and what `auto` means for `bundled:shapes`): is
  each candidate fully correct;
- evaluation metric `shapes` (`eval.metrics`): `shapes_correct` and `shapes_fraction` per image.
"""

from __future__ import annotations

from mitune_ray.errors import MituneError
from mitune_ray.imaging import from_png
from mitune_ray.shapes import prompts as shapes_prompts
from mitune_ray.shapes.checker import check, checker_scores

PREFIX = "shapes"
SPLITS = ("train", "eval", "tune", "val")  # the prompt lists of `mitune_ray.shapes.prompts`


def prompt_source(source: str, where: str) -> list[str]:
    """The prompts of a `shapes:SPLIT:N` source ("shapes:train:64": 64 training prompts).

    Example:
        >>> prompt_source("shapes:eval:2", "prompts.eval") == shapes_prompts.eval_prompts(2)
        True
    """
    parts = source.split(":")
    if len(parts) != 3 or parts[0] != PREFIX or parts[1] not in SPLITS or not parts[2].isdigit():
        raise MituneError(f"prompt source {source!r} ({where}) is not shapes:SPLIT:N with SPLIT "
                          f"one of {', '.join(SPLITS)} and N a count")
    return getattr(shapes_prompts, f"{parts[1]}_prompts")(int(parts[2]))


def eval_columns(prompts: list[str], pngs: list[bytes]) -> dict[str, list[float]]:
    """The checker on evaluation images: all facts hold (0/1), and the share that hold."""
    results = [check(p, from_png(b)) for p, b in zip(prompts, pngs)]
    return {"shapes_correct": [float(r.all_correct) for r in results],
            "shapes_fraction": [float(r.fraction) for r in results]}


def anti_checker_scores(prompt: str, images) -> list[float]:
    """Anti-oracle selection scores: the checker's reversed, so the kept candidates are those it
    judges least correct (fewest facts holding; a fully correct one last). With the oracle
    (`checker`) it brackets what selection can do to the loop.

    Example:
        >>> from mitune_ray.shapes.world import Obj, Scene, render
        >>> right = render(Scene((Obj("red", "circle"),)), seed=0)
        >>> wrong = render(Scene((Obj("blue", "square"),)), seed=0)
        >>> anti_checker_scores("a red circle", [right, wrong])
        [-2.0, 0.0]
    """
    return [0.0 - score for score in checker_scores(prompt, images)]
