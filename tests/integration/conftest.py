"""Fixtures of the integration tier: one finished run that several tests read."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runs import dump, run_cli, tiny_run_config


@dataclass(frozen=True)
class FinishedRun:
    folder: Path  # the test's folder: the config, the log, the trackers' stores
    uri: str  # the run
    log: Path  # everything `mitune run` printed
    seconds: float  # how long it ran


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory) -> FinishedRun:
    """One round of tiny models through the CLI with its evaluation and both trackers on
    (TensorBoard, MLflow in a local store), its output logged to a file. One run serves the
    console test (what it printed) and the report test (what it wrote)."""
    folder = tmp_path_factory.mktemp("tracked-run")
    uri = str(folder / "run")
    config = tiny_run_config(folder, uri, rounds=1, run={"evaluate": True}, tracking={
        "tensorboard": True, "mlflow_tracking_uri": str(folder / "mlflow"),
        "mlflow_experiment": "tiny-run"})
    log = folder / "run.log"
    start = time.monotonic()
    # (killed before pytest's own timeout, which would leave it running)
    code = run_cli(["run", str(config)], cwd=folder, log=log, timeout=840)
    assert code == 0, dump(log)
    return FinishedRun(folder, uri, log, time.monotonic() - start)
