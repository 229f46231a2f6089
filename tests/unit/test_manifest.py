"""Run manifest: atomic stage commits, config check, the lease."""

import json
import os
import subprocess
import sys
import time

import pytest

from mitune_ray.config import load_config
from mitune_ray.errors import MituneError
from mitune_ray.layout import MANIFEST
from mitune_ray.manifest import Manifest
from mitune_ray.storage import Store


def test_commit_is_the_last_write_and_survives_reload(tmp_path):
    store = Store(str(tmp_path))
    m = Manifest(store)
    m.create_or_check({"a": 1}, "f1", allow_change=False)
    assert m.stage("round-001/generate") is None
    m.commit("round-001/generate", rows=4)
    again = Manifest(store)
    assert again.stage("round-001/generate")["rows"] == 4
    assert json.loads((tmp_path / MANIFEST).read_text())["fingerprint"] == "f1"


def cfg(*overrides):
    return load_config(None, list(overrides))


def check(store, config, *, allow=False):
    m = Manifest(store)
    m.create_or_check(config.to_dict(), config.fingerprint(), allow_change=allow)
    return m


def hold_once(manifest):
    """Take and give back the lease: the checked config is written while it is held."""
    manifest.acquire()
    manifest.release()


def test_a_config_that_changes_results_is_refused_naming_what_changed_unless_allowed(tmp_path):
    store = Store(str(tmp_path))
    check(store, cfg("train.lr=1e-4"))
    with pytest.raises(MituneError) as err:
        check(store, cfg("train.lr=2e-4", "generate.seed=3"))
    message = str(err.value)
    assert "\n" not in message and "run.allow_config_change=true" in message
    assert "generate.seed: 0 -> 3, train.lr: 0.0001 -> 0.0002" in message
    first = Manifest(store).data["fingerprint"]
    m = check(store, cfg("train.lr=2e-4"), allow=True)
    assert m.data["fingerprint"] == cfg("train.lr=2e-4").fingerprint()
    assert m.data["config_history"][0]["fingerprint"] == first


def test_a_stored_fingerprint_is_recomputed_by_the_current_rules(tmp_path):
    # A run started by an older version stored a fingerprint by older rules: it resumes, since
    # its stored config has the same results under today's.
    store = Store(str(tmp_path))
    old = cfg()
    Manifest(store).create_or_check(old.to_dict(), "0ld0ld0ld0ld0ld0", allow_change=False)
    hold_once(check(store, old))
    assert Manifest(store).data["fingerprint"] == old.fingerprint()


def test_where_and_how_it_runs_replaces_the_stored_config(tmp_path):
    store = Store(str(tmp_path))
    check(store, cfg("generate.actors=2", "train.grad_accum=50"))
    moved = cfg("generate.actors=8", "generate.max_batch=16", "train.workers=2",
                "train.grad_accum=25", "train.gradient_checkpointing=true")
    hold_once(check(store, moved))
    assert Manifest(store).data["config"] == moved.to_dict()


def test_settings_outside_the_fingerprint_replace_the_stored_config(tmp_path):
    store = Store(str(tmp_path))
    check(store, cfg("run.rounds=1"))
    m = check(store, cfg("run.rounds=3"))  # extended, same results
    # Not written before the lease is held: another driver may still be running the run.
    assert Manifest(store).data["config"]["run"]["rounds"] == 1
    hold_once(m)
    again = Manifest(store)
    assert again.data["config"]["run"]["rounds"] == 3 and "config_history" not in again.data


def test_second_driver_is_refused_while_the_lease_is_held(tmp_path):
    store = Store(str(tmp_path))
    first = Manifest(store)
    first.create_or_check({}, "f", allow_change=False)
    first.acquire()
    second = Manifest(store)
    with pytest.raises(MituneError, match="held by another driver"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_the_lease_of_a_dead_driver_on_this_host_is_taken_over(tmp_path):
    store = Store(str(tmp_path))
    Manifest(store).create_or_check({}, "f", allow_change=False)
    code = ("import sys; from mitune_ray.manifest import Manifest; from mitune_ray.storage import "
            f"Store; m = Manifest(Store({str(tmp_path)!r})); m.acquire(); print('held', flush=True);"
            " import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(MituneError, match="held by another driver"):
        Manifest(store).acquire()
    proc.kill()
    proc.wait()
    m = Manifest(store)
    m.acquire()  # the holder's pid is gone: the lease is stale
    assert m.data["lease"]["pid"] == os.getpid()
    m.release()
