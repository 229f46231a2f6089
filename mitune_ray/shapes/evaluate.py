"""Sample a ShapesWorld pipeline and score the images with the exact checker.

    python -m mitune_ray.shapes.evaluate mitune_ray/assets/shapes_model  # train / held-out rates
    python -m mitune_ray.shapes.evaluate FOLDER 100 --json FOLDER/eval_metrics.json

Example:
    >>> from mitune_ray.shapes.model import assemble_pipeline  # doctest: +SKIP
    >>> evaluate(pipe, eval_prompts(100), seed=0)["all_correct"]  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from mitune_ray.shapes.checker import check, fact_rates
from mitune_ray.shapes.prompts import eval_prompts, parse_prompt, template_kind, train_prompts

GUIDANCE = 7.5  # SD's default, and the reference implementation's
STEPS = 50  # DDPM steps: enough for 8 x 8 latents (100 changes the rates by a point or two)


@dataclass(frozen=True)
class Samples:
    """Generated images (N x H x W x 3 uint8), one per prompt, in prompt order."""

    prompts: list[str]
    images: np.ndarray


@torch.no_grad()
def generate(pipe, prompts: list[str], *, seed: int = 0, steps: int = STEPS,
             guidance: float = GUIDANCE, batch: int = 50) -> Samples:
    """One image per prompt; the noise of prompt i comes from seed `seed + i` (batch-independent).

    Example:
        >>> generate(pipe, ["a red circle"], steps=2).images.shape  # doctest: +SKIP
        (1, 64, 64, 3)
    """
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance,
                   generator=generators, output_type="np")
        images.append((out.images * 255).round().astype(np.uint8))
    return Samples(list(prompts), np.concatenate(images))


def score(samples: Samples) -> dict:
    """Fully-correct rate and mean fraction of facts that hold, by the checker; the
    fully-correct rate of one- and two-object prompts, each as [rate, number of prompts]; and
    the share of each kind of fact that holds (`facts`: objects, sizes, relations), and the
    share of relations that hold where both objects were found, by the prompt's template
    (`relation_by_template`: "direct" names the placed object first, "inverted" the other; a
    model that reads "the first-named object is the one placed" is right on one, wrong on the
    other)."""
    results = [check(p, im) for p, im in zip(samples.prompts, samples.images)]
    out: dict = {"all_correct": float(np.mean([r.all_correct for r in results])),
                 "fraction": float(np.mean([r.fraction for r in results])), "n": len(results),
                 "facts": fact_rates(results)}
    n_objects = [len(parse_prompt(p).objects) for p in samples.prompts]
    for k in (1, 2):
        ok = [r.all_correct for r, n in zip(results, n_objects) if n == k]
        out[f"all_correct_{k}obj"] = [float(np.mean(ok)) if ok else None, len(ok)]
    kinds = [template_kind(p) for p in samples.prompts]
    out["relation_by_template"] = {
        kind: fact_rates([r for r, k in zip(results, kinds) if k == kind])["relation_given_objects"]
        for kind in ("direct", "inverted")}
    return out


def evaluate(pipe, prompts: list[str], *, seed: int = 0, steps: int = STEPS,
             guidance: float = GUIDANCE, seeds: int = 1) -> dict[str, float]:
    """Generate `seeds` images per prompt and score them: the checker's rates over all of them.
    Image s of prompt i draws its noise from seed `seed + s * len(prompts) + i`: each its own."""
    samples = [generate(pipe, prompts, seed=seed + s * len(prompts), steps=steps,
                        guidance=guidance) for s in range(seeds)]
    return score(Samples(list(prompts) * seeds, np.concatenate([x.images for x in samples])))


def grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile N x H x W x 3 images into one array (rows of `columns`), padded with white."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    out = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    return out


def main(argv: list[str] | None = None) -> dict:
    from mitune_ray.models import ModelSpec, load_model

    parser = argparse.ArgumentParser(prog="python -m mitune_ray.shapes.evaluate",
                                     description="checker rates of a ShapesWorld model")
    parser.add_argument("model", help="a diffusers folder (e.g. mitune_ray/assets/shapes_model)")
    parser.add_argument("n", nargs="?", type=int, default=100, help="prompts per split")
    parser.add_argument("--json", help="also write the rates to this file")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="classifier-free guidance")
    parser.add_argument("--steps", type=int, default=STEPS, help="DDPM steps")
    parser.add_argument("--seeds", type=int, default=1, help="images per prompt (seeds 0, n, 2n...)")
    parser.add_argument("--splits", default="train,heldout", help="train, heldout or both")
    parser.add_argument("--adapter", action="append", default=[],
                        help="a trained adapter folder (e.g. RUN/round-001/adapter), fused into "
                             "the model first; repeat to fuse several in order")
    args = parser.parse_args(argv)
    splits = {"train": train_prompts, "heldout": eval_prompts}
    unknown = set(args.splits.split(",")) - set(splits)
    if unknown:
        parser.error(f"--splits {args.splits}: unknown {', '.join(sorted(unknown))}; use train, "
                     "heldout or train,heldout")
    for name in ("n", "steps", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"{name} = {getattr(args, name)} must be at least 1")
    # On the CPU in float32, as the recorded rates were measured (a GPU draws other images).
    pipe, _, _, _ = load_model(ModelSpec(args.model, dtype="float32",
                                         adapters=tuple(args.adapter)), device="cpu")
    metrics = {}
    for name in args.splits.split(","):
        start = time.monotonic()
        metrics[name] = evaluate(pipe, splits[name](args.n), steps=args.steps,
                                 guidance=args.guidance, seeds=args.seeds) | {
            "seconds": round(time.monotonic() - start), "guidance": args.guidance,
            "steps": args.steps, "seeds": args.seeds, "adapters": args.adapter}
        print(name, metrics[name])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=1)
    return metrics


if __name__ == "__main__":
    main()
