"""Run manifest: atomic stage commits, config check, the lease."""

import json
import os
import subprocess
import sys
import time

import pytest

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


def test_a_different_config_is_refused_unless_allowed(tmp_path):
    store = Store(str(tmp_path))
    Manifest(store).create_or_check({"a": 1}, "f1", allow_change=False)
    with pytest.raises(MituneError, match="different config.*run.allow_config_change=true"):
        Manifest(store).create_or_check({"a": 2}, "f2", allow_change=False)
    m = Manifest(store)
    m.create_or_check({"a": 2}, "f2", allow_change=True)
    assert m.data["fingerprint"] == "f2" and m.data["config_history"][0]["fingerprint"] == "f1"


def test_settings_outside_the_fingerprint_replace_the_stored_config(tmp_path):
    store = Store(str(tmp_path))
    Manifest(store).create_or_check({"run": {"rounds": 1}}, "f1", allow_change=False)
    m = Manifest(store)
    m.create_or_check({"run": {"rounds": 3}}, "f1", allow_change=False)  # extended, same results
    # Not written before the lease is held: another driver may still be running the run.
    assert Manifest(store).data["config"] == {"run": {"rounds": 1}}
    m.acquire()
    m.release()
    again = Manifest(store)
    assert again.data["config"] == {"run": {"rounds": 3}} and "config_history" not in again.data


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
