"""`mitune`: the command line.

    mitune run [CONFIG.yaml] [key=value ...]     a whole run (no config: the built-in demo)
    mitune config show [CONFIG.yaml] [key=value ...] | mitune config show RUN
    mitune plan [CONFIG.yaml] [key=value ...]    the work and GPU-hours, before anything runs
    mitune generate [CONFIG] --round N [k=v]     one round's generation stage
    mitune train [CONFIG] --round N [k=v]        one round's fine-tuning stage
    mitune score --images PATH --out URI [CONFIG] [k=v]
    mitune status RUN_URI
    mitune export RUN_URI --round N DIR
    mitune eval RUN_URI [--guidance G] | mitune report RUN_URI [--out DIR]
    mitune prompts list|dir                      the bundled prompt lists: names / folder
    mitune bench [...] | mitune shapes train|bench|pool [...]
    mitune --verbose COMMAND ...                 Ray's own progress and logs, workers' output

Bad input ends with one line on stderr and exit status 2; nothing is committed.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources

from mitune_ray import __version__, shapes
from mitune_ray.errors import MituneError
from mitune_ray.layout import MANIFEST
from mitune_ray.runtime import configure_console
from mitune_ray.runtime import verbose as runtime_verbose
from mitune_ray.storage import is_s3

DEMO = "demo.yaml"
VERBOSE_FLAGS = ("-v", "--verbose")  # global: before the command (`mitune --verbose run`)


def _config(args) -> "Config":  # noqa: F821 - imported lazily to keep --help fast
    from mitune_ray.config import load_config

    path = args.config
    if path is not None and "=" in path and not os.path.exists(path):
        args.overrides.insert(0, path)  # `mitune run key=value` with no config file
        path = None
    if path is None and getattr(args, "demo_default", False):
        with resources.as_file(resources.files("mitune_ray.assets").joinpath(DEMO)) as demo:
            return load_config(demo, args.overrides)
    return load_config(path, args.overrides)


def _add_config_args(p: argparse.ArgumentParser, *, demo: bool = False,
                     config_help: str | None = None) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG", help=config_help or (
        "YAML config file" + (" (default: the built-in demo, mitune_ray/assets/demo.yaml)"
                              if demo else " (default: the library defaults)")))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, section.key=value, e.g. run.rounds=2 or "
                        "prompts.train=[a.txt,b.txt]")
    p.set_defaults(demo_default=demo)


def _is_run(source: str) -> bool:
    """A run (an s3:// URI, a folder, or its manifest.json), not a YAML file."""
    return is_s3(source) or os.path.isdir(source) or os.path.basename(source) == MANIFEST


def cmd_run(args) -> int:
    from mitune_ray.driver import run

    run(_config(args))
    return 0


def cmd_config(args) -> int:
    if args.config is None or not _is_run(args.config):
        print(_config(args).to_yaml(), end="")
        return 0
    from mitune_ray.config import stored_config
    from mitune_ray.manifest import read_run

    uri = args.config
    if not is_s3(uri) and os.path.basename(uri) == MANIFEST:
        uri = os.path.dirname(uri) or "."
    if args.overrides:
        raise MituneError(f"mitune config show {args.config} shows the run's stored config and "
                          f"takes no key=value overrides (got {args.overrides[0]}); show a YAML "
                          "file with overrides instead")
    store, manifest = read_run(uri)
    cfg = stored_config(manifest.get("config"))
    if cfg is None:
        raise MituneError(f"the config stored in {store.child_uri(MANIFEST)} does not validate "
                          "with this version of mitune_ray; read it in the manifest itself")
    print(f"# the stored config of the run at {store.uri} (fingerprint "
          f"{manifest.get('fingerprint')}): family defaults filled in, as it runs")
    print(cfg.to_yaml(), end="")
    return 0


def cmd_plan(args) -> int:
    from mitune_ray.estimate import plan_text

    print(plan_text(_config(args), args.config or "(the built-in demo)"))
    return 0


def cmd_stage(args) -> int:
    from mitune_ray.driver import run_single_stage

    run_single_stage(_config(args), args.command, args.round)
    return 0


def cmd_score(args) -> int:
    from mitune_ray.stages.score import score_images

    score_images(_config(args), args.images, args.out)
    return 0


def cmd_status(args) -> int:
    from mitune_ray.driver import status_text
    from mitune_ray.manifest import read_run

    store, manifest = read_run(args.run_uri)
    print(status_text(manifest, store.uri))
    return 0


def cmd_export(args) -> int:
    from mitune_ray.report.export import export_round

    path = export_round(args.run_uri, args.round, args.dir)
    print(f"adapter of round {args.round} written to {path}; load it with "
          f"pipe.load_lora_weights({str(path)!r})")
    return 0


def cmd_eval(args) -> int:
    from mitune_ray.driver import evaluate_run

    evaluate_run(args.run_uri, overrides=args.overrides, guidance=args.guidance)
    return 0


def cmd_report(args) -> int:
    from mitune_ray.report.page import write_report

    print(f"report written to {write_report(args.run_uri, args.out)}")
    return 0


def cmd_prompts(args) -> int:
    from mitune_ray.prompts import BUNDLED_PROMPTS, bundled_prompt_names

    print(BUNDLED_PROMPTS if args.action == "dir" else "\n".join(bundled_prompt_names()))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mitune", description="MI-TUNE on Ray: self-supervised "
                                  "text-to-image alignment by point-wise mutual information.")
    top.add_argument("--version", action="version", version=f"mitune_ray {__version__}")
    top.add_argument("-v", "--verbose", action="store_true",
                     help="also show Ray's progress and INFO lines, the output of Ray's workers "
                          "and third-party warnings (off by default)")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run or resume a multi-round MI-TUNE run")
    _add_config_args(p, demo=True)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("config", help="show the resolved configuration, or a run's stored one")
    p.add_argument("action", choices=["show"], help="show: print it as YAML")
    _add_config_args(p, demo=True, config_help=(
        "YAML config file (default: the built-in demo, what `mitune run` runs), or a run: its "
        "folder, s3:// URI or manifest.json, whose stored config is shown"))
    p.set_defaults(fn=cmd_config)
    p = sub.add_parser("plan", help="the work a config asks for and its GPU-hours, before "
                       "anything runs (prompts, candidates, denoiser rows, training samples)")
    _add_config_args(p, demo=True)
    p.set_defaults(fn=cmd_plan)
    for name, text in (("generate", "generate one round's candidates and selected set"),
                       ("train", "fine-tune one round's DoRA adapter")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--round", type=int, default=1, metavar="N",
                       help="the round, 1..run.rounds (default 1); earlier rounds must be trained")
        _add_config_args(p, demo=True)
        p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("score", help="MI of existing (image, prompt) pairs")
    p.add_argument("--images", required=True, help="image folder with metadata.jsonl, or parquet")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    _add_config_args(p)
    p.set_defaults(fn=cmd_score)
    p = sub.add_parser("status", help="what each round and stage of a run did, in pipeline order")
    p.add_argument("run_uri", metavar="RUN_URI", help="the run: its folder or s3:// URI (run.uri)")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("export", help="copy a round's adapter into a diffusers-loadable folder")
    p.add_argument("run_uri", metavar="RUN_URI", help="the run: its folder or s3:// URI (run.uri)")
    p.add_argument("--round", type=int, required=True, metavar="N",
                   help="the trained round whose adapter to export")
    p.add_argument("dir", metavar="DIR", help="the folder to write (local)")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("eval", help="score each round's adapter on the evaluation prompts")
    p.add_argument("run_uri", metavar="RUN_URI", help="the run: its folder or s3:// URI (run.uri)")
    p.add_argument("--guidance", type=float, default=None, metavar="G",
                   help="evaluate every version again at this classifier-free guidance, into "
                        "<version>/eval-guidance-G (default: the run's, into <version>/eval)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides on the run's stored config, e.g. "
                        "eval.metrics=[mi,blip_vqa] eval.blip_path=DIR")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("report", help="write a static HTML report of a run")
    p.add_argument("run_uri", metavar="RUN_URI", help="the run: its folder or s3:// URI (run.uri)")
    p.add_argument("--out", default=None, help="folder (default: <run>/report)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("prompts", help="the prompt lists shipped in the package: their "
                       "bundled:CORPUS/NAME sources (list) or their folder (dir)")
    p.add_argument("action", choices=["list", "dir"],
                   help="list: the bundled:CORPUS/NAME sources; dir: the folder holding them")
    p.set_defaults(fn=cmd_prompts)
    sub.add_parser("bench", help="throughput benchmarks (mitune bench --help)", add_help=False)
    sub.add_parser("shapes", add_help=False,
                   help="ShapesWorld: train the bundled model, benchmark MI-TUNE, or measure "
                        "selection (train|bench|pool)")
    return top


def register_plugins() -> None:
    """The composition root wires the testbeds into the framework's registries (ShapesWorld's
    prompt source, selector and metrics); no framework module imports a testbed."""
    shapes.register()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = bool(argv) and argv[0] in VERBOSE_FLAGS
    argv = argv[1:] if verbose else argv
    configure_console(verbose_output=verbose or runtime_verbose())
    register_plugins()
    try:
        if argv[:1] == ["bench"]:  # own flags, which argparse's REMAINDER would not pass on
            from mitune_ray.bench import main as bench_main

            return bench_main(argv[1:])
        if argv[:1] == ["shapes"]:
            from mitune_ray.shapes.cli import main as shapes_main

            return shapes_main(argv[1:])
        args = parser().parse_args(argv)
        return args.fn(args)
    except MituneError as err:
        print(f"mitune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mitune: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
