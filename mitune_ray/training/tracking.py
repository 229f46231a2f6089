"""Per-step training metrics: the run's own table, and opt-in TensorBoard and MLflow.

Every optimizer step makes one row (`STEP_COLUMNS`; the checkpoint columns are null between
checkpoints). Rank 0 of the training keeps the rows in a `MetricsLog`, which

- writes the table as JSON lines to the round's `train/metrics.jsonl` (`layout.TRAIN_METRICS`)
  at every checkpoint: the rows so far. They travel in the checkpoint too, so a training that
  resumes from a checkpoint continues its table and every step appears once;
- with `tracking.tensorboard`, adds each row to TensorBoard event files as it comes: into a local
  folder directly, into an s3:// one through a local folder uploaded at every checkpoint. A
  resumed training purges the steps after its checkpoint (TensorBoard's `purge_step`);
- with `tracking.mlflow_tracking_uri`, logs each row to an MLflow run, one per round, found
  again by its `mitune.training` tag when the training resumes (MLflow keeps the steps redone
  after a resume twice: it cannot delete a metric's points; the table is the exact record).

Ray Train's reports (`ray.train.report`, one a checkpoint) carry that step's row. `read_table`
reads the table back (the report's loss curve). The driver resolves the settings into a
`TrackingSpec` (`tracking_spec`), which fails on a bad setting before any worker starts.

Example:
    >>> rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    >>> parse_table(table_bytes(rows)) == rows
    True
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

from mitune_ray import layout
from mitune_ray.config import TrackingSection
from mitune_ray.errors import MituneError
from mitune_ray.storage import Store, is_s3

# The table's columns: every step, then at checkpoints only (null in between).
STEP_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "seconds", "time")
CHECKPOINT_COLUMNS = ("validation_mi", "fixed_batch_loss")
# Column -> the scalar's name in TensorBoard and MLflow.
SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
           "samples_per_s": "train/samples_per_s", "validation_mi": "validation/mi",
           "fixed_batch_loss": "validation/fixed_batch_loss"}
MLFLOW_DB = "mlflow.db"  # a folder given as the MLflow tracking URI holds this SQLite store
MLFLOW_ARTIFACTS = "artifacts"
TRAINING_TAG = "mitune.training"  # identifies one round's training across attempts
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class TrackingSpec:
    """Where a training's metrics go, resolved on the driver (sent to the workers)."""

    out: Store  # the round folder: the table at `layout.TRAIN_METRICS`
    tensorboard: Store | None = None  # the event files' folder
    mlflow_uri: str | None = None
    mlflow_experiment: str = "mitune"
    mlflow_artifacts: str | None = None  # the experiment's artifact location (local stores)
    run_name: str = ""  # the MLflow run's name
    key: str = ""  # the MLflow run's `mitune.training` tag
    params: dict[str, str] = field(default_factory=dict)


def tracking_spec(section: TrackingSection, out: Store, run_name: str,
                  params: dict[str, object]) -> TrackingSpec:
    """Resolve `tracking.*` for the training `run_name` of the round folder `out`.

    Example:
        >>> spec = tracking_spec(TrackingSection(), Store("runs/demo/round-001"), "train-round-001", {})
        >>> spec.tensorboard is None and spec.mlflow_uri is None
        True
    """
    tensorboard = None
    if section.tensorboard:
        _require("tensorboard", "tracking.tensorboard=true")
        tensorboard = (Store(section.tensorboard_dir, endpoint_url=out.endpoint_url,
                             region=out.region).child(run_name)
                       if section.tensorboard_dir else out.child(layout.TRAIN_TENSORBOARD))
    uri, artifacts = None, None
    if section.mlflow_tracking_uri:
        _require("mlflow", "tracking.mlflow_tracking_uri")
        uri, artifacts = resolve_mlflow_uri(section.mlflow_tracking_uri)
    parts = out.uri.rstrip("/").split("/")
    return TrackingSpec(out=out, tensorboard=tensorboard, mlflow_uri=uri,
                        mlflow_experiment=section.mlflow_experiment, mlflow_artifacts=artifacts,
                        run_name="/".join(parts[-2:]), key=out.child_uri(run_name),
                        params={k: str(v) for k, v in params.items()})


def _require(module: str, setting: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MituneError(f"{setting} needs the {module} package, which is not installed; "
                          "install it with pip install 'mitune_ray[tracking]'")


def resolve_mlflow_uri(value: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location) of `tracking.mlflow_tracking_uri`: a local folder
    becomes a SQLite store in it, a relative sqlite:/// path absolute; servers pass as they are.

        >>> resolve_mlflow_uri("http://mlflow:5000")
        ('http://mlflow:5000', None)
        >>> resolve_mlflow_uri("/srv/mlflow")
        ('sqlite:////srv/mlflow/mlflow.db', '/srv/mlflow/artifacts')
    """
    where = f"tracking.mlflow_tracking_uri = {value!r}"
    if value.startswith("file:"):
        raise MituneError(f"{where}: MLflow 3 refuses its file store (maintenance mode); give a "
                          "folder (a local SQLite store in it), sqlite:///PATH or a server's http(s):// URI")
    if is_s3(value):
        raise MituneError(f"{where}: an MLflow tracking store cannot live in S3; give a tracking "
                          "server's http(s):// URI or a local folder")
    if value.startswith("sqlite:///"):
        path = value[len("sqlite:///"):]
        path = path if path.startswith("/") else os.path.abspath(path)
        return f"sqlite:///{path}", os.path.join(os.path.dirname(path), MLFLOW_ARTIFACTS)
    if _SCHEME.match(value) or value == "databricks":  # MLflow's name for a Databricks workspace
        return value, None
    folder = os.path.abspath(value)
    return f"sqlite:///{folder}/{MLFLOW_DB}", os.path.join(folder, MLFLOW_ARTIFACTS)


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def table_bytes(rows: list[dict]) -> bytes:
    """The table as JSON lines (non-finite numbers as null: every line is strict JSON)."""
    clean = ({k: (_finite(v) if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    return "".join(json.dumps(row, sort_keys=False) + "\n" for row in clean).encode("utf-8")


def parse_table(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def read_table(out: Store) -> list[dict] | None:
    """A round folder's metrics table (None: not written yet)."""
    if not out.exists(layout.TRAIN_METRICS):
        return None
    return parse_table(out.read_bytes(layout.TRAIN_METRICS))


class MetricsLog:
    """Rank 0's outlets for a training's rows: the table, TensorBoard and MLflow."""

    def __init__(self, spec: TrackingSpec, *, resumed_from: int):
        self.spec = spec
        self.tensorboard = (_TensorBoard(spec.tensorboard, purge_step=resumed_from + 1)
                            if spec.tensorboard else None)
        self.mlflow = _MLflow(spec) if spec.mlflow_uri else None

    def add(self, row: dict) -> None:
        """One step's row, to TensorBoard and MLflow as it comes."""
        if self.tensorboard:
            self.tensorboard.write(row)
        if self.mlflow:
            self.mlflow.write(row)

    def save(self, rows: list[dict]) -> None:
        """Write the table (every row so far) and make the event files visible: at a checkpoint."""
        self.spec.out.write_bytes(layout.TRAIN_METRICS, table_bytes(rows))
        if self.tensorboard:
            self.tensorboard.flush()

    def close(self, *, finished: bool) -> None:
        if self.tensorboard:
            self.tensorboard.close()
        if self.mlflow and finished:
            self.mlflow.finish()


def _scalars(row: dict):
    for column, name in SCALARS.items():
        value = _finite(row.get(column))
        if value is not None:
            yield name, value


class _TensorBoard:
    """Event files: written in place to a local folder, or locally and uploaded to s3://."""

    def __init__(self, store: Store, *, purge_step: int):
        from torch.utils.tensorboard import SummaryWriter  # the optional `tracking` extra

        self.store = store
        self.local = tempfile.mkdtemp(prefix="mitune-tb-") if is_s3(store.uri) else store.path()
        # purge_step: TensorBoard hides the events of earlier attempts from this step on.
        self.writer = SummaryWriter(self.local, purge_step=purge_step, flush_secs=10)

    def write(self, row: dict) -> None:
        for name, value in _scalars(row):
            self.writer.add_scalar(name, value, global_step=row["step"], walltime=row.get("time"))

    def flush(self) -> None:
        self.writer.flush()
        if is_s3(self.store.uri):
            self.store.upload_dir(self.local, "")

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if is_s3(self.store.uri):
            shutil.rmtree(self.local, ignore_errors=True)


class _MLflow:
    """One MLflow run per round's training, created once and found again on a resume."""

    def __init__(self, spec: TrackingSpec):
        from mlflow import MlflowClient  # the optional `tracking` extra

        for name in ("mlflow", "alembic"):  # schema migrations log a line per revision
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=spec.mlflow_uri)
        experiment = self.client.get_experiment_by_name(spec.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None else
                         self.client.create_experiment(spec.mlflow_experiment,
                                                       artifact_location=spec.mlflow_artifacts))
        key = spec.key.replace("\\", "\\\\").replace("'", "\\'")
        found = self.client.search_runs([experiment_id], f"tags.`{TRAINING_TAG}` = '{key}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = self.client.create_run(experiment_id, run_name=spec.run_name,
                                         tags={TRAINING_TAG: spec.key, "mitune.round": spec.out.uri})
            self.run_id = run.info.run_id
            for name, value in spec.params.items():
                self.client.log_param(self.run_id, name, value)

    def write(self, row: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * row.get("time", 0.0))
        metrics = [Metric(name, value, stamp, row["step"]) for name, value in _scalars(row)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")
