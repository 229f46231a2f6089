"""Per-step training metrics without Ray: the table's format, the tracking settings, and the real
TensorBoard event files and MLflow runs a training writes, read back with TensorBoard's
EventAccumulator and MLflow's client, across a resume."""

from __future__ import annotations

import math
import os

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mitune_ray.config import TrackingSection, load_config
from mitune_ray.errors import MituneError
from mitune_ray.storage import Store
from mitune_ray.training.tracking import (
    TRAINING_TAG, MetricsLog, parse_table, read_table, resolve_mlflow_uri, table_bytes,
    tracking_spec,
)


def row(step: int, loss: float, *, checkpoint: bool = False) -> dict:
    out = {"step": step, "epoch": 0, "loss": loss, "lr": 1e-3 * step, "grad_norm": 0.5 / step,
           "samples_per_s": 10.0 + step, "seconds": 0.25, "time": 1_700_000_000.0 + step,
           "validation_mi": None, "fixed_batch_loss": None}
    if checkpoint:
        out |= {"validation_mi": 2.0 + step, "fixed_batch_loss": loss / 2}
    return out


def test_the_table_is_strict_json_lines():
    rows = [row(1, 0.5), row(2, float("nan"), checkpoint=True) | {"grad_norm": float("inf")}]
    data = table_bytes(rows)
    assert data.count(b"\n") == 2 and b"NaN" not in data and b"Infinity" not in data
    back = parse_table(data)
    assert back[0] == rows[0]
    assert back[1]["loss"] is None and back[1]["grad_norm"] is None
    assert back[1]["validation_mi"] == 4.0


def test_mlflow_uris_resolve_or_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_mlflow_uri("https://mlflow.example:5000") == ("https://mlflow.example:5000", None)
    assert resolve_mlflow_uri("databricks") == ("databricks", None)
    assert resolve_mlflow_uri("store") == (f"sqlite:///{tmp_path}/store/mlflow.db",
                                           f"{tmp_path}/store/artifacts")
    assert resolve_mlflow_uri("sqlite:///db/m.db") == (f"sqlite:///{tmp_path}/db/m.db",
                                                       f"{tmp_path}/db/artifacts")
    assert resolve_mlflow_uri("sqlite:////abs/m.db")[0] == "sqlite:////abs/m.db"
    for bad, fragment in (("file:///tmp/mlruns", "refuses its file store"),
                          ("s3://bucket/mlflow", "cannot live in S3")):
        with pytest.raises(MituneError, match=fragment) as err:
            resolve_mlflow_uri(bad)
        assert "\n" not in str(err.value) and repr(bad) in str(err.value)


def test_tracking_spec_places_event_files_per_round(tmp_path):
    out = Store(str(tmp_path / "demo" / "round-002"))
    spec = tracking_spec(TrackingSection(), out, "train-round-002", {"lr": 1e-4})
    assert spec.tensorboard is None and spec.mlflow_uri is None
    assert spec.run_name == "demo/round-002" and spec.key == out.child_uri("train-round-002")
    assert spec.params == {"lr": "0.0001"}
    on = tracking_spec(TrackingSection(tensorboard=True), out, "train-round-002", {})
    assert on.tensorboard.uri == out.child_uri("train/tensorboard")
    elsewhere = load_config(None, ["tracking.tensorboard=true",
                                   f"tracking.tensorboard_dir={tmp_path / 'tb'}"]).tracking
    spec = tracking_spec(elsewhere, out, "train-round-002", {})
    assert spec.tensorboard.uri == str(tmp_path / "tb" / "train-round-002")


def test_tracking_settings_are_checked_and_never_change_a_runs_fingerprint():
    with pytest.raises(MituneError, match=r"tracking.tensorboard_dir is set but tracking.tensorboard "
                                          r"is false; set tracking.tensorboard=true") as err:
        load_config(None, ["tracking.tensorboard_dir=tb"])
    assert "\n" not in str(err.value)
    with pytest.raises(MituneError, match="tracking.mlflow_experiment"):
        load_config(None, ["tracking.mlflow_experiment="])
    on = load_config(None, ["tracking.tensorboard=true", "tracking.mlflow_tracking_uri=mlruns"])
    assert on.fingerprint() == load_config(None, []).fingerprint()  # switched on at a resume


def test_event_files_and_mlflow_runs_hold_every_step_once_across_a_resume(tmp_path):
    out = Store(str(tmp_path / "run" / "round-001"))
    section = TrackingSection(tensorboard=True, mlflow_tracking_uri=str(tmp_path / "mlflow"),
                              mlflow_experiment="tiny")
    spec = tracking_spec(section, out, "train-round-001", {"lr": 0.001, "steps": 4})

    # First attempt: steps 1-3, a checkpoint at 2, then it dies (no close).
    first = MetricsLog(spec, resumed_from=0)
    rows = []
    for step, loss in ((1, 0.9), (2, 0.8), (3, 0.7)):
        rows.append(row(step, loss, checkpoint=step == 2))
        first.add(rows[-1])
        if step == 2:
            first.save(rows)
    first.tensorboard.writer.flush()  # what its background thread would have written by then
    assert read_table(out) == rows[:2]

    # The restart resumes from step 2's checkpoint and redoes step 3 with another loss.
    again = MetricsLog(spec, resumed_from=2)
    rows = rows[:2] + [row(3, 0.6), row(4, 0.5, checkpoint=True)]
    for r in rows[2:]:
        again.add(r)
    again.save(rows)
    again.close(finished=True)
    assert read_table(out) == rows

    events = EventAccumulator(out.path("train/tensorboard"))
    events.Reload()
    loss = [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")]
    assert loss == [(1, 0.9), (2, 0.8), (3, 0.6), (4, 0.5)]  # step 3 of the dead attempt purged
    assert [e.step for e in events.Scalars("validation/mi")] == [2, 4]
    assert {"train/lr", "train/grad_norm", "train/samples_per_s",
            "validation/fixed_batch_loss"} <= set(events.Tags()["scalars"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.artifact_location.endswith(os.path.join("mlflow", "artifacts"))
    (run,) = client.search_runs([experiment.experiment_id])  # the restart found its run again
    assert run.info.run_name == "run/round-001" and run.info.status == "FINISHED"
    assert run.data.tags[TRAINING_TAG] == out.child_uri("train-round-001")
    assert run.data.params == {"lr": "0.001", "steps": "4"}
    history = sorted((m.step, round(m.value, 6))
                     for m in client.get_metric_history(run.info.run_id, "train/loss"))
    # MLflow cannot delete points: the dead attempt's step 3 stays beside the redone one.
    assert history == [(1, 0.9), (2, 0.8), (3, 0.6), (3, 0.7), (4, 0.5)]
    mi = client.get_metric_history(run.info.run_id, "validation/mi")
    assert sorted((m.step, m.value) for m in mi) == [(2, 4.0), (4, 6.0)]
    assert all(math.isclose(m.timestamp, 1000 * (1_700_000_000 + m.step)) for m in mi)
