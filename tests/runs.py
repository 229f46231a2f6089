"""Helpers for end-to-end runs: a minimal tiny-model config and the `mitune` CLI as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mitune_ray.config import MISection

# Four shared re-noising draws, not the default 32: the tests that use it check the loop, not the MI.
FAST_MI = MISection(renoise_draws=4)

PROMPTS = [
    "a red cube on a wooden table", "a blue ball next to a green box", "two yellow flowers",
    "a purple car under a bridge", "an orange cat on a sofa", "a white horse in a field",
    "a black umbrella in the rain", "a small brown dog", "a pink lamp beside a bed",
    "a silver spoon in a cup",
]


def tiny_run_config(tmp: Path, uri: str, *, rounds: int = 2, **sections) -> Path:
    """A whole run of tiny models that finishes in about a minute per round on 2 cores."""
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    eval_prompts = tmp / "eval_prompts.txt"
    eval_prompts.write_text("a green square\na red circle to the left of a blue triangle\n")
    cfg = {
        "run": {"uri": uri, "rounds": rounds},
        "model": {"path": "tiny:sd"},
        "prompts": {"train": [str(prompts)], "eval": [str(eval_prompts)], "val_fraction": 0.2},
        "generate": {"candidates": 2, "keep": 1, "steps": 3, "max_batch": 8,
                     "prompts_per_batch": 1, "actors": 1, "cpus_per_actor": 0.5,
                     "gallery_prompts": 1},
        "train": {"rank": 4, "batch_size": 2, "grad_accum": 1, "steps": 2, "workers": 2,
                  "cpus_per_worker": 0.5, "checkpoint_every": 1, "validation_prompts": 1,
                  "validation_candidates": 1},
        "eval": {"candidates": 1},
        "mi": {"renoise_draws": FAST_MI.renoise_draws},
        "ray": {"num_cpus": 4},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(args: list[str], *, cwd: Path, env: dict | None = None, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "mitune_ray.cli", *args], cwd=cwd,
                            env=dict(os.environ, **(env or {})), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def run_cli(args, *, cwd, env=None, log, timeout=900) -> int:
    proc = start(args, cwd=cwd, env=env, log=log)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the driver (no handler runs) and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(predicate, *, timeout: float = 600, proc: subprocess.Popen | None = None,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stages(manifest: dict) -> dict:
    return {k: v for k, v in manifest.get("stages", {}).items() if v.get("status") == "committed"}


def read_manifest(store) -> dict:
    return store.read_json("manifest.json") if store.exists("manifest.json") else {}


def dump(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


__all__ = ["PROMPTS", "dump", "json", "kill", "read_manifest", "run_cli", "stages", "start",
           "tiny_run_config", "wait_for"]
