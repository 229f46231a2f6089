"""`mitune bench`: throughput of MI-scored generation and DoRA training, per model family.

    mitune bench                                   # CPU: tiny-model checks, ~3 min; GPU: real sizes
    mitune bench --gpu-suite --json bench.json     # one H100, < 8 min, everything that matters
    mitune bench --family sd --baseline --compile --fuse-qkv --one-at-a-time --json sd.json
    mitune bench --prune --model bundled:shapes    # successive halving vs full sampling
    mitune bench --device cpu --tiny --gpu-suite --quick   # the GPU suite's code paths, on a CPU

Generation is timed with the generation stage's own `CandidateSampler` loop (MI on the device) on
random conditioning at the real architecture sizes (configs in mitune_ray/assets/archs, random
weights, nothing downloaded) or a model folder's denoiser (`--model`). Text encoding and VAE
decoding are excluded: they run once per prompt or per kept image, not per CFG step. Rates are
images/s per 100 CFG steps. Shares of peak are against the matmul peak measured in the same run.
The table goes to stdout, progress to stderr, every number to `--json PATH`.
"""

from __future__ import annotations

import argparse
import sys

from mitune_ray.errors import MituneError

SUITE_BUDGET_S = 360.0  # the GPU suite, imports included, must end well inside 8 minutes


def parser() -> argparse.ArgumentParser:
    from mitune_ray.levers import COMPILE_MODES

    p = argparse.ArgumentParser(prog="mitune bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to measure (default: all that fit the device)")
    what.add_argument("--gpu-suite", action="store_true",
                      help="the bounded one-GPU suite (see --budget-s)")
    for name, text in (("peak", "the device's matmul peak (bf16 on GPU, fp32 on CPU)"),
                       ("flops", "FLOPs of one denoiser forward and parameter counts"),
                       ("generate", "MI-scored generation, images/s per 100 CFG steps"),
                       ("train", "DoRA training steps, samples/s"),
                       ("mi-overhead", "MI accumulation's cost over plain CFG sampling"),
                       ("prune", "successive-halving pruning vs full sampling"),
                       ("ray", "the Ray Data stage vs the same work in one process")):
        what.add_argument(f"--{name}", action="store_true", help=text)
    model = p.add_argument_group("models")
    model.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where to measure (auto: the GPU if torch sees one, else the CPU)")
    model.add_argument("--family", help="comma list of sd, sdxl, sd3 (default: all)")
    model.add_argument("--tiny", action="store_true", help="tiny random models (default on CPU)")
    model.add_argument("--real", action="store_true",
                       help="the real architecture sizes on a CPU too (slow: minutes per image)")
    model.add_argument("--model", help="a diffusers folder (or s3://, bundled:shapes, tiny:sd): "
                       "its denoiser and weights instead of the random real-size ones")
    model.add_argument("--text-tokens", type=int, help="text length for --model (default 77; "
                       "SD3: 333 with T5, 154 without)")
    work = p.add_argument_group("workload")
    work.add_argument("--prompts", type=int, help="prompts (default 1 real, 2 tiny)")
    work.add_argument("--candidates", type=int, help="candidates per prompt (default 50 SD-2.1, "
                      "8 SD-XL / SD3.5, 16 tiny)")
    work.add_argument("--steps", type=int, help="CFG steps (default 100 real, 20 tiny)")
    work.add_argument("--batch", type=int, help="candidates per denoiser call (default 64 "
                      "SD-2.1, 16 SD-XL / SD3.5, 32 tiny)")
    work.add_argument("--repeats", type=int, help="paired repeats for --mi-overhead (default 8)")
    work.add_argument("--quick", action="store_true", help="smallest workloads (tests, smoke runs)")
    lev = p.add_argument_group("levers (generation)")
    lev.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                     help="auto: bf16 on GPU, fp32 on CPU")
    lev.add_argument("--baseline", action="store_true",
                     help="also the reference's style (fp32, host sync + gc + empty_cache each "
                     "step, one prompt per batch), and print the speed-up")
    lev.add_argument("--compile", action="store_true", help="torch.compile (warm-up not timed)")
    lev.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                     help="reduce-overhead: with CUDA graphs")
    lev.add_argument("--compile-backend", default="inductor", help="eager: trace only (tests)")
    lev.add_argument("--compile-cache-dir", help="TORCHINDUCTOR_CACHE_DIR shared across runs")
    lev.add_argument("--channels-last", action="store_true", help="NHWC convolutions (UNets)")
    lev.add_argument("--fuse-qkv", action="store_true", help="diffusers fuse_qkv_projections")
    lev.add_argument("--no-sdpa", action="store_true", help="classic attention (UNets only)")
    lev.add_argument("--one-at-a-time", action="store_true",
                     help="measure each lever alone against eager (default: all together)")
    tr = p.add_argument_group("training")
    tr.add_argument("--train-batch", type=int, help="default 8 (tiny: 4)")
    tr.add_argument("--train-steps", type=int, help="timed steps (default 4)")
    tr.add_argument("--grad-checkpointing", action="store_true",
                    help="recompute activations in the backward pass (less memory, more time)")
    tr.add_argument("--lora", action="store_true", help="plain LoRA instead of DoRA")
    pr = p.add_argument_group("pruning (--prune)")
    pr.add_argument("--prune-at", type=float, default=0.5, help="fraction of the steps")
    pr.add_argument("--prune-keep", type=float, default=0.5, help="fraction of candidates kept")
    pr.add_argument("--shapes-prompts", action="store_true",
                    help="ShapesWorld training prompts (the default with --model bundled:shapes; "
                    "other models get synthetic two-object prompts)")
    ry = p.add_argument_group("Ray Data (--ray)")
    ry.add_argument("--ray-actors", help="comma list of actor counts (default 2)")
    out = p.add_argument_group("output and limits")
    out.add_argument("--json", help="write every number to this file")
    out.add_argument("--threads", type=int,
                     help="torch threads on CPU (default 1: steady timings on shared machines)")
    out.add_argument("--budget-s", type=float,
                     help=f"total time budget; later measurements are skipped once spent "
                     f"(default {SUITE_BUDGET_S:.0f} with --gpu-suite, else none)")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("prompts", "candidates", "steps", "batch", "repeats", "train_batch",
                 "train_steps", "threads", "text_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise MituneError(f"--{name.replace('_', '-')}={value} must be at least 1")
    for name in ("prune_at", "prune_keep"):
        value = getattr(args, name)
        if not 0.0 < value <= 1.0 or (name == "prune_at" and value == 1.0):
            raise MituneError(f"--{name.replace('_', '-')}={value} must be in (0, 1)")
    if args.tiny and args.real:
        raise MituneError("--tiny and --real contradict each other; pick one")
    if args.gpu_suite and args.model:
        raise MituneError("--gpu-suite times the real architectures; drop --model, or use "
                          "--generate/--train with --model")


def main(argv: list[str]) -> int:
    """Run the benchmark the flags ask for; print the table; write `--json`. Returns 0.

    Example:
        >>> main(["--device", "cpu", "--quick", "--json", "/tmp/bench.json"])  # doctest: +SKIP
        0
    """
    import torch

    from mitune_ray.bench.plans import Bench, default_plan, gpu_suite
    from mitune_ray.bench.recorder import Recorder, environment, table, write_json

    if argv[:1] == ["--"]:  # `mitune bench -- --flag ...`
        argv = argv[1:]
    args = parser().parse_args(argv)
    _check(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MituneError("--device cuda but torch sees no GPU; use --device cpu (or auto)")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    import diffusers

    threads_before = torch.get_num_threads()
    verbosity = diffusers.utils.logging.get_verbosity()
    # Casting a model with .to(dtype) logs a warning per build: the bench builds many.
    diffusers.utils.logging.set_verbosity_error()
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    try:
        budget = args.budget_s or (SUITE_BUDGET_S if args.gpu_suite else None)
        recorder = Recorder(device, budget_s=budget, log=lambda line: print(line, file=sys.stderr))
        env = environment(device, torch.get_num_threads())
        print(f"mitune bench on {env['device_name']} ({device}), torch {env['torch']}",
              file=sys.stderr)
        bench = Bench(args, device, recorder)
        try:
            (gpu_suite if args.gpu_suite else default_plan)(bench)
        except ValueError as err:
            raise MituneError(str(err)) from None
        print(table(recorder.measurements))
        if args.json:
            write_json(args.json, env, recorder.measurements)
            print(f"wrote {args.json}", file=sys.stderr)
    finally:
        torch.set_num_threads(threads_before)
        diffusers.utils.logging.set_verbosity(verbosity)
    return 0
