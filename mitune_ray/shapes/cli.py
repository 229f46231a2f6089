"""`mitune shapes train | bench | pool | frontier`."""

from __future__ import annotations

import argparse
from pathlib import Path


def train_main(argv: list[str]) -> int:
    from mitune_ray.shapes.pretrain import TrainSettings, train_shapes_model

    parser = argparse.ArgumentParser(prog="mitune shapes train",
                                     description="train the ShapesWorld model from scratch (CPU)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "shapes_model"),
                        help="diffusers folder to write (default: the bundled model's place)")
    parser.add_argument("--minutes", type=float, default=85.0, help="wall-clock budget")
    parser.add_argument("--seed", type=int, default=0, help="the training's seed (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    parser.add_argument("--loss-weight-cap", type=float, default=TrainSettings.loss_weight_cap,
                        help="weight each sample's loss by min(1 / abar_t, CAP); the default, "
                             "100, is the shipped model's; 1 is plain epsilon loss; see "
                             "research/shapes/probe.py in the repository")
    parser.add_argument("--p-direct", type=float, default=TrainSettings.p_direct, metavar="P",
                        help="the share of relation prompts written in the direct template "
                             "('{a} left of {b}', not '{b} with {a} on its left') at the end of "
                             "the curriculum; default 0.5: both alike; see "
                             "TrainSettings.p_direct")
    parser.add_argument("--p-canonical", type=float, default=TrainSettings.p_canonical,
                        metavar="P", help="the share of relation prompts stated with 'left' or "
                                          "'above' (the same images) at the end of the "
                                          "curriculum; default 0.5: as the world writes them; "
                                          "see TrainSettings.p_direct")
    parser.add_argument("--tilt-anneal", type=float, default=TrainSettings.tilt_anneal,
                        metavar="SHARE", help="a curriculum: both tilts start at 1 and fall "
                        "linearly to --p-direct / --p-canonical over this share of the UNet's "
                        "budget (0: they hold from the start); the default, 0.7, made the "
                        "shipped model; see TrainSettings.tilt_anneal")
    args = parser.parse_args(argv)
    if not args.loss_weight_cap >= 1.0:
        parser.error(f"--loss-weight-cap {args.loss_weight_cap:g} must be at least 1 "
                     "(1 is plain epsilon loss)")
    for flag in ("p_direct", "p_canonical", "tilt_anneal"):
        value = getattr(args, flag)
        if value is not None and not 0.0 <= value <= 1.0:
            parser.error(f"--{flag.replace('_', '-')} {value:g} must be between 0 and 1")
    settings = TrainSettings(loss_weight_cap=args.loss_weight_cap, p_direct=args.p_direct,
                             p_canonical=args.p_canonical, tilt_anneal=args.tilt_anneal)
    metrics = train_shapes_model(args.out, minutes=args.minutes, seed=args.seed,
                                 threads=args.threads, settings=settings)
    print(f"model written to {args.out}: {metrics['unet_steps']} UNet steps in "
          f"{metrics['total_seconds'] / 60:.0f} min (all metrics in train_metrics.json there)")
    return 0


COMMANDS = {
    "train": "train the bundled ShapesWorld model from scratch (CPU)",
    "bench": "does MI agree with the exact checker, and does MI-TUNE raise alignment?",
    "pool": "pool selection efficiency of every MI estimator variant",
    "frontier": "denoiser rows per kept image against selection efficiency, over samplers, "
                "steps, candidates and re-noising draws",
}


def main(argv: list[str]) -> int:
    action, rest = (argv[0], argv[1:]) if argv else ("", [])
    if action == "train":
        return train_main(rest)
    if action == "bench":
        from mitune_ray.shapes.bench import main as bench_main

        return bench_main(rest)
    if action == "pool":
        from mitune_ray.shapes.pool import main as pool_main

        return pool_main(rest)
    if action == "frontier":
        from mitune_ray.shapes.frontier import main as frontier_main

        return frontier_main(rest)
    parser = argparse.ArgumentParser(
        prog="mitune shapes", description="ShapesWorld, the testbed with an exact checker "
        "(mitune_ray/shapes/README.md): " + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    parser.add_argument("command", choices=tuple(COMMANDS),
                        help="then its own arguments (mitune shapes COMMAND --help)")
    parser.parse_args(argv[:1])  # --help: exit 0; no or an unknown command: usage, exit 2
    return 2
