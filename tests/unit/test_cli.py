"""The `mitune` command line in-process: every --help, `config show` (the demo, a run's stored
config) and `status` in pipeline order. The CLI end to end (runs, errors) is
tests/integration/test_cli.py."""

import argparse
from importlib import resources

import pytest
import yaml

from mitune_ray import cli
from mitune_ray.config import load_config
from mitune_ray.manifest import Manifest
from mitune_ray.storage import Store

COMMANDS = [[], ["run"], ["config"], ["plan"], ["generate"], ["train"], ["score"], ["status"],
            ["export"], ["eval"], ["report"], ["prompts"], ["bench"], ["shapes"],
            ["shapes", "train"], ["shapes", "bench"], ["shapes", "pool"]]


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """The arguments (and sub-commands) of a parser that have no help text."""
    missing = []
    for action in parser._actions:  # argparse lists them nowhere public
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"command {c.dest}" for c in action._choices_actions if not c.help]
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "mitune")
def test_every_help_exits_0_and_documents_every_argument(command, monkeypatch, capsys):
    parsers = []
    parse = argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: mitune")
    assert parsers
    for parser in parsers:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        inner = [p for a in subs for name, p in a.choices.items()
                 if name not in ("bench", "shapes")]  # their own parsers: checked on their own
        for each in [parser, *inner]:
            assert undocumented(each) == [], each.prog


def show(capsys, *args) -> tuple[int, str]:
    code = cli.main(["config", "show", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_config_show_without_a_file_is_what_mitune_run_runs(capsys):
    code, out = show(capsys)
    with resources.as_file(resources.files("mitune_ray.assets").joinpath(cli.DEMO)) as demo:
        assert code == 0 and out == load_config(demo).to_yaml()
    code, out = show(capsys, "run.rounds=5")
    assert code == 0 and yaml.safe_load(out)["run"]["rounds"] == 5
    assert yaml.safe_load(out)["model"]["path"] == "bundled:shapes"


def test_config_show_of_a_run_is_its_stored_config(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.uri={run}", "generate.candidates=8", "train.grad_accum=50"])
    Manifest(Store(str(run))).create_or_check(cfg.to_dict(), cfg.fingerprint(), allow_change=False)
    for where in (run, run / "manifest.json"):
        code, out = show(capsys, str(where))
        assert code == 0 and out.startswith(f"# the stored config of the run at {run}")
        assert yaml.safe_load(out) == cfg.to_dict()
    code, out = show(capsys, str(run), "generate.candidates=4")
    assert code == 2 and out.count("\n") == 1 and "takes no key=value overrides" in out
    (tmp_path / "empty").mkdir()
    code, out = show(capsys, str(tmp_path / "empty"))
    assert code == 2 and out.count("\n") == 1 and "no run at" in out


def test_status_lists_stages_in_pipeline_order(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(None, [f"run.uri={run}", "run.rounds=2"])
    manifest = Manifest(Store(str(run)))
    manifest.create_or_check(cfg.to_dict(), cfg.fingerprint(), allow_change=False)
    generated = {"rows": 4, "candidates": 8, "mi_mean": 0.5}
    trained = {"adapter": "a", "result": {"steps": 2}}
    evaluated = {"summary": {"prompts": 2, "images": 4, "metrics": {"mi": 0.1}}}
    for name, entry in [("prompts", {"train": {"kept": 5, "train": 4, "val": 1}}),
                        ("round-001/generate", generated), ("round-001/train", trained),
                        ("eval-base/evaluate", evaluated), ("round-001/evaluate", evaluated),
                        ("round-002/generate", generated)]:
        manifest.commit(name, **entry)
    assert cli.main(["status", str(run)]) == 0
    shown = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert shown == ["prompts", "round-001/generate", "round-001/train", "eval-base/evaluate",
                     "round-001/evaluate", "round-002/generate"]
