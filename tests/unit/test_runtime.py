"""What reaches the console: `mitune --verbose` and the quiet default (mitune_ray/runtime.py)."""

import logging
import os
import warnings

import pytest

from mitune_ray import cli
from mitune_ray.runtime import DEEPSPEED_LOGGER, VERBOSE_ENV, configure_console, errors_only, verbose


@pytest.fixture
def clean_env(monkeypatch):
    for name in (VERBOSE_ENV, "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        monkeypatch.setenv(name, "")  # restored (or removed) after the test, whatever it sets
        monkeypatch.delenv(name)
    with warnings.catch_warnings():  # configure_console changes this process's filters
        yield
    logging.getLogger(DEEPSPEED_LOGGER).removeFilter(errors_only)


def test_quiet_by_default_hides_third_party_deprecations(clean_env):
    configure_console(verbose_output=False)
    assert not verbose()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("old API", FutureWarning)
        warnings.warn("older API", DeprecationWarning)
        warnings.warn("something else", UserWarning)
    assert [w.category for w in seen] == [UserWarning]
    deepspeed = logging.getLogger(DEEPSPEED_LOGGER)
    assert not deepspeed.filter(deepspeed.makeRecord(
        DEEPSPEED_LOGGER, logging.WARNING, "real_accelerator.py", 213, "Setting accelerator to CPU",
        None, None))
    assert deepspeed.filter(deepspeed.makeRecord(
        DEEPSPEED_LOGGER, logging.ERROR, "engine.py", 1, "out of memory", None, None))


def test_verbose_is_recorded_for_ray_and_child_processes(clean_env):
    configure_console(verbose_output=True)
    assert verbose() and os.environ[VERBOSE_ENV] == "1"
    assert "TRANSFORMERS_VERBOSITY" not in os.environ
    configure_console(verbose_output=False)
    assert not verbose()


@pytest.mark.parametrize("flag", ["--verbose", "-v"])
def test_the_global_flag_comes_before_the_command(clean_env, capsys, flag):
    assert cli.main([flag, "prompts", "list"]) == 0
    assert verbose()
    assert "bundled:" in capsys.readouterr().out


def test_without_the_flag_the_console_is_quiet(clean_env, capsys):
    assert cli.main(["prompts", "list"]) == 0
    assert not verbose()
    assert "-v, --verbose" in cli.parser().format_help()
