"""Which stated facts does a ShapesWorld model's denoiser use? Contradict one and see what it costs.

    python -m research.shapes.probe mitune_ray/assets/shapes_model [--n 96] [--split train]
    python -m research.shapes.probe --learn 5 [--world order]   # can this architecture learn it?

On rendered ground-truth scenes (two objects with a relation, so every kind of fact is stated),
the conditional denoiser's epsilon loss at a grid of noise levels, with the true prompt and with
one kind of fact contradicted: the relation flipped (left <-> right, above <-> below, the same
template) or turned to the other axis (left -> above, above -> left...), the two objects named
in the other order (the same words: "a red circle left of a blue square" -> "a blue square left of
a red circle", which contradicts the direction without changing any word), the first object's
colour changed to one no object has, both sizes swapped, or no prompt at all. Sizes are stated
in every variant, so two variants differ only in the edited fact.

The cost of an edit is reported two ways: the relative loss increase at each noise level, and in
nats, `mean_t kappa_t * D * (loss_edit(t) - loss_true(t))` over the grid's midpoints, which is
`log p(x | true prompt) - log p(x | edited prompt)` by the model's own ELBO and the amount by which
the standard-form MI of the bench prefers the true prompt. A fact the denoiser does not use costs
nothing, and then no MI estimator computed from this denoiser can rank images by it.

`learnability` asks the architecture rather than a trained model: a fresh UNet and text encoder
trained for a few minutes on a world of two layouts (a large red circle left or right of a large
blue square), then probed. The "relation" world states them with the relation word ("the circle
left / right of the square"); the "order" world always with "left", naming the objects in either
order ("the circle left of the square" / "the square left of the circle"), the binding of word
order to position that a relation's direction needs in the full world. Both use the world's
paraphrase templates. A fact that is not learnt there, where it is the only thing to learn, is
not going to be learnt in the full world.

Written as the world writes prompts, the order world's layout is the parity of two words, the
template ("{a} left of {b}" or "{b} with {a} on its left") and the object named first: neither
alone tells it, and 5,612 steps learn nothing. Tilting the templates (`TrainSettings.p_direct`,
`--p-direct 0.75`) gives gradient descent a slope to start from, and the same steps learn the
binding on both templates (10.9 nats; `nats_by_template` splits every cost by the true prompt's
template).

Example (the shipped model: it reads colours and a relation's axis, not its direction):
    >>> pipe = StableDiffusionPipeline.from_pretrained(SHIPPED)  # doctest: +SKIP
    >>> nats = probe(pipe)["nats"]  # doctest: +SKIP
    >>> nats["relation"], nats["axis"], nats["colour"]  # doctest: +SKIP
    (0.01, 7.8, 151.9)
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import replace

import numpy as np
import torch

from mitune_ray.mi.discrete import kappa
from mitune_ray.shapes import model as arch
from mitune_ray.shapes.prompts import FLIPPED, describe, template_kind
from mitune_ray.shapes.pretrain import TrainSettings, encode_pool, train_denoiser
from mitune_ray.shapes.world import COLOURS, SIZES, Obj, Scene, random_scene, render

TURNED = {"left": "above", "right": "below", "above": "left", "below": "right"}  # other axis
EDITS = ("relation", "axis", "order", "colour", "size", "empty")
LEVELS = tuple(range(50, 1000, 100))  # midpoints of ten equal strata of SD's 1000 steps
# The two-prompt worlds of `learnability`: this pair, one left or right of the other ("relation":
# the relation word varies) or named in either order, always "left of" ("order").
RELATION_PAIR = (Obj("red", "circle", "large"), Obj("blue", "square", "large"))
WORLDS = ("relation", "order")


def _other_size(size: str) -> str:
    return next(s for s in SIZES if s != size)


def edit(scene: Scene, kind: str, k: int = 0) -> Scene | None:
    """`scene` with one kind of fact contradicted (`None` for "empty": no prompt at all); `k`
    picks which unused colour replaces the first object's.

    Example:
        >>> from mitune_ray.shapes.world import Obj
        >>> s = Scene((Obj("red", "circle", "large"), Obj("blue", "square", "small")), "left")
        >>> edit(s, "relation").relation, edit(s, "axis").relation, edit(s, "size").objects[0].size
        ('right', 'above', 'small')
        >>> [o.shape for o in edit(s, "order").objects], edit(s, "order").relation
        (['square', 'circle'], 'left')
    """
    a, b = scene.objects
    if kind == "relation":
        return replace(scene, relation=FLIPPED[scene.relation])
    if kind == "axis":
        return replace(scene, relation=TURNED[scene.relation])
    if kind == "order":
        return replace(scene, objects=(b, a))
    if kind == "colour":
        unused = [c for c in COLOURS if c not in (a.colour, b.colour)]
        return replace(scene, objects=(replace(a, colour=unused[k % len(unused)]), b))
    if kind == "size":
        return replace(scene, objects=tuple(replace(o, size=_other_size(o.size)) for o in (a, b)))
    if kind == "empty":
        return None
    raise ValueError(f"unknown edit {kind!r}; use one of {', '.join(EDITS)}")


def _prompt(scene: Scene | None, template_seed: int) -> str:
    # The same seed draws the same template for the true and the edited scene.
    return "" if scene is None else describe(scene, random.Random(template_seed), p_state_size=1.0)


def relation_scenes(n: int, *, split: str = "train", seed: int = 0) -> list[Scene]:
    """`n` random two-object scenes of `split` that state a relation, deterministic in `seed`."""
    rng = random.Random(f"probe:{split}:{seed}")
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = random_scene(rng, split=split, p_single=0.0)
        if scene.relation is not None:
            scenes.append(scene)
    return scenes


@torch.no_grad()
def probe(pipe, *, n: int = 96, split: str = "train", seed: int = 0, repeats: int = 2,
          batch: int = 96, scenes: list[Scene] | None = None) -> dict:
    """The cost of contradicting each kind of fact, on `n` ground-truth scenes of `split` (or on
    the given two-object `scenes` with relations).

    Returns:
        `levels` (timesteps), `loss` (variant -> mean epsilon loss per level), `increase`
        (edit -> relative loss increase per level), `nats` (edit -> mean log-likelihood ratio of
        the true prompt over the edited one, per image), and the settings.
    """
    scenes = scenes if scenes is not None else relation_scenes(n, split=split, seed=seed)
    n = len(scenes)
    images = np.stack([render(s, seed=seed * 100_003 + i) for i, s in enumerate(scenes)])
    device = pipe.device
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    z0 = torch.cat([pipe.vae.encode(x[i:i + batch]).latent_dist.mean
                    for i in range(0, n, batch)]) * pipe.vae.config.scaling_factor
    variants = ("true",) + EDITS
    prompts = {v: [_prompt(s if v == "true" else edit(s, v, i), seed * 100_003 + i)
                   for i, s in enumerate(scenes)] for v in variants}
    context = {v: torch.cat([pipe.encode_prompt(ps[i:i + batch], device, 1, False)[0]
                             for i in range(0, n, batch)]) for v, ps in prompts.items()}
    abar = pipe.scheduler.alphas_cumprod.to(device)
    # Per image and level, summed on the device (float64), read back once: no host sync per
    # forward.
    sums = {v: torch.zeros(n, len(LEVELS), dtype=torch.float64, device=device) for v in variants}
    gen = torch.Generator().manual_seed(seed)
    for j, t in enumerate(LEVELS):
        for _ in range(repeats):
            eps = torch.randn(z0.shape, generator=gen).to(device)  # the same draws on any device
            zt = abar[t].sqrt() * z0 + (1 - abar[t]).sqrt() * eps
            for v in variants:
                for i in range(0, n, batch):
                    pred = pipe.unet(zt[i:i + batch],
                                     torch.full((len(zt[i:i + batch]),), t, device=device),
                                     context[v][i:i + batch]).sample
                    sums[v][i:i + batch, j] += (pred - eps[i:i + batch]).pow(2).flatten(1).sum(1)
    per_image = {v: sums[v].cpu().numpy() / (repeats * z0[0].numel()) for v in variants}
    weights = kappa(abar.cpu())[list(LEVELS)].numpy() * z0[0].numel()

    def nats(rows: np.ndarray) -> dict[str, float]:
        return {e: round(float(np.mean(weights * (per_image[e][rows].mean(0)
                                                  - per_image["true"][rows].mean(0)))), 3)
                for e in EDITS}

    loss = {v: per_image[v].mean(0) for v in variants}
    kinds = np.array([template_kind(p) for p in prompts["true"]])
    return {
        "levels": list(LEVELS), "n": n, "split": split, "repeats": repeats,
        "loss": {v: [round(float(x), 6) for x in loss[v]] for v in variants},
        "increase": {e: [round(float(x), 4) for x in loss[e] / loss["true"] - 1] for e in EDITS},
        "nats": nats(np.arange(n)),
        # The same, on the images whose true prompt names first the object its relation places
        # ("direct") or the other ("inverted"): a model that reads "first named goes first"
        # gains on one and loses on the other.
        "nats_by_template": {k: nats(np.flatnonzero(kinds == k)) for k in ("direct", "inverted")
                             if (kinds == k).any()},
        "n_by_template": {k: int((kinds == k).sum()) for k in ("direct", "inverted")},
        "example": {v: prompts[v][0] for v in variants},
    }


# The two-prompt worlds' prompts as they are written: no training curriculum, and the order
# world stays "left" (`TrainSettings.p_canonical` would restate half of it with "right").
UNTILTED = {"p_direct": None, "p_canonical": None, "tilt_anneal": 0.0}


def learnability(minutes: float, *, settings: TrainSettings | None = None,
                 vae_folder: str | None = None, n_scenes: int = 4000, seed: int = 0,
                 world: str = "relation", log=print) -> dict:
    """Train a fresh UNet + text encoder for `minutes` on a two-prompt world (`WORLDS`; with the
    autoencoder of `vae_folder`, by default the shipped model's), then `probe` it there.

    `settings` default: the recipe's with the worlds' prompts as written (`UNTILTED`).

    Example (2-core CPU; with `loss_weight_cap=1`, plain epsilon loss, 0.01):
        >>> settings = TrainSettings(loss_weight_cap=100, warmup_steps=100, unet_steps=10**9,
        ...                          **UNTILTED)
        >>> learnability(15, settings=settings)["nats"]["relation"]  # doctest: +SKIP
        11.76
    """
    from mitune_ray.models import resolve_model_path

    if minutes <= 0:
        raise ValueError(f"minutes={minutes} must be positive (the training time)")
    if world not in WORLDS:
        raise ValueError(f"world={world!r} is not one of {', '.join(WORLDS)}")
    s = settings or TrainSettings(**UNTILTED)
    torch.manual_seed(seed)
    vae, _, _ = arch.load_parts(vae_folder or str(resolve_model_path("bundled:shapes")))
    scenes = two_prompt_world(n_scenes, f"train:{seed}", world)
    images = np.stack([render(scene, seed=seed * 1_000_003 + i) for i, scene in enumerate(scenes)])
    latents = encode_pool(vae, images) * vae.config.scaling_factor
    metrics, unet, text_encoder = train_denoiser(
        arch.build_unet(s.unet_size), arch.build_text_encoder(), latents, scenes, s,
        seconds=60.0 * minutes, seed=seed + 1, log=log)
    pipe = arch.assemble_pipeline(vae, text_encoder, unet)
    result = probe(pipe, scenes=two_prompt_world(64, f"probe:{seed}", world), seed=seed)
    return result | {"trained": metrics, "settings": {
        "minutes": minutes, "world": world, "unet_channels": list(s.unet_size.channels),
        "loss_weight_cap": s.loss_weight_cap, "unet_lr": s.unet_lr, "n_scenes": n_scenes,
        "p_direct": s.p_direct}}


def two_prompt_world(n: int, seed: str, world: str = "relation") -> list[Scene]:
    """`n` scenes of a two-prompt world: the relation ("relation") or the objects' order
    ("order") drawn from `seed`."""
    rng = random.Random(seed)
    a, b = RELATION_PAIR
    if world == "order":
        return [Scene(rng.choice(((a, b), (b, a))), "left") for _ in range(n)]
    return [Scene(RELATION_PAIR, rng.choice(("left", "right"))) for _ in range(n)]


def _print(title: str, result: dict) -> None:
    print(title)
    print("edit      nats   " + " ".join(f"t={t:<4}" for t in result["levels"]))
    for e in EDITS:
        print(f"{e:<9}{result['nats'][e]:6.2f}   "
              + " ".join(f"{100 * x:+5.1f}%" for x in result["increase"][e]))
    for kind, nats in result["nats_by_template"].items():
        print(f"  {kind} templates only, nats: "
              + ", ".join(f"{e} {nats[e]:.2f}" for e in EDITS))


def main(argv: list[str] | None = None) -> dict:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(prog="python -m research.shapes.probe",
                                     description="what contradicting each kind of fact costs "
                                                 "a ShapesWorld model's denoiser")
    parser.add_argument("model", nargs="?",
                        help="a diffusers folder (e.g. mitune_ray/assets/shapes_model)")
    parser.add_argument("--learn", type=float, metavar="MINUTES",
                        help="instead of a model: train the architecture for MINUTES on a "
                             "two-prompt world (--world) and probe that")
    parser.add_argument("--world", choices=WORLDS, default="relation",
                        help="with --learn: the two prompts differ in their relation word "
                             "(default) or in which object is named first")
    parser.add_argument("--channels", default=None,
                        help="with --learn: the UNet's block channels, e.g. 64,128 (the shipped)")
    parser.add_argument("--loss-weight-cap", type=float, default=TrainSettings.loss_weight_cap,
                        help="with --learn: TrainSettings.loss_weight_cap (default: the recipe's, "
                             "100; 1: plain epsilon loss)")
    parser.add_argument("--lr", type=float, default=TrainSettings.unet_lr,
                        help="with --learn: the UNet and text encoder's learning rate")
    parser.add_argument("--p-direct", type=float, default=None, metavar="P",
                        help="with --learn: TrainSettings.p_direct, the share of training prompts "
                             "in the direct template (default: both templates alike)")
    parser.add_argument("--steps", type=int, default=None,
                        help="with --learn: stop after this many UNet steps if the minutes last "
                             "(a step count that compares runs on busy or different machines)")
    parser.add_argument("--n", type=int, default=96, help="ground-truth scenes")
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--repeats", type=int, default=2, help="noise draws per level")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    for name in ("n", "repeats", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be at least 1")
    if (args.model is None) == (args.learn is None):
        parser.error("give a model folder, or --learn MINUTES (not both)")
    if args.learn is not None:
        if args.learn <= 0:
            parser.error(f"--learn {args.learn:g} must be a positive number of minutes")
        try:
            channels = (tuple(int(c) for c in args.channels.split(",")) if args.channels
                        else arch.SMALL.channels)
        except ValueError:
            parser.error(f"--channels {args.channels}: write integers separated by commas, "
                         "e.g. 64,128")
        if args.p_direct is not None and not 0.0 <= args.p_direct <= 1.0:
            parser.error(f"--p-direct {args.p_direct:g} must be between 0 and 1")
        settings = TrainSettings(**(UNTILTED | {"p_direct": args.p_direct}),
                                 loss_weight_cap=args.loss_weight_cap, unet_lr=args.lr,
                                 warmup_steps=100, unet_steps=args.steps or 10**9,
                                 unet_size=arch.UNetSize(channels=channels))
        result = learnability(args.learn, settings=settings, world=args.world,
                              log=lambda line: print(line) if "000/" in line else None)
        _print(f"the architecture after {args.learn:g} minutes on the two-prompt {args.world} "
               f"world ({result['trained']['unet_steps']} steps)", result)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(args.model)
        result = probe(pipe, n=args.n, split=args.split, repeats=args.repeats) | {
            "model": args.model}
        _print(f"{args.model}, {args.n} ground-truth {args.split} scenes: what contradicting "
               "each kind of fact costs", result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
