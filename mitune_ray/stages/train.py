"""The Ray Train + DeepSpeed stage: fine-tune a DoRA adapter on one round's selected set.

    from mitune_ray.stages.train import train_adapter
    result = train_adapter(cfg, model_path="tiny:sd", selected=[".../part-ab12.parquet"],
                           out=Store("runs/demo/round-1"), run_name="round-1-train")

What lands in the round folder `out` (local or s3://):

    adapter/pytorch_lora_weights.safetensors  the exported adapter, diffusers' LoRA format
    adapter/train_result.json                 the TrainResult, written last: "training is done"
    train/inputs.json                         what this training was asked to do
    train/adapters/step-NNNNNN/               the adapter of every checkpoint (the export's pool)
    train/metrics.jsonl                       one row per optimizer step (training/tracking.py)
    train/tensorboard/                        event files, with tracking.tensorboard=true
    <run_name>/                               Ray Train's run: per-rank DeepSpeed checkpoints

Restarts: a failed worker group restarts from its latest checkpoint (`train.max_failures`
times), and calling `train_adapter` again with the same `out` and `run_name` resumes the run from
there (Ray Train V2 keeps a run's checkpoints under storage_path/name). A call whose
`adapter/train_result.json` exists returns that result without starting Ray; one whose inputs
differ from `train/inputs.json` is refused instead of mixing two trainings.

Which checkpoint is exported: the one with the highest mean validation MI on the held-out
training-split prompts (MI-TUNE's own alignment measure; the later one on ties), or the last one
when no validation prompts are given.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from pydantic import BaseModel, ValidationError

from mitune_ray import layout
from mitune_ray.adapters import ADAPTER_FILE, check_adapter, meta_denoiser
from mitune_ray.config import Config, GenerateSection, MISection, TrainSection, section_identity
from mitune_ray.errors import MituneError, user_error_in
from mitune_ray.families import resolve_family
from mitune_ray.models import resolve_model_path
from mitune_ray.progress import ProgressFactory, silent_progress
from mitune_ray.sampling import Prompt
from mitune_ray.storage import Store, is_s3
from mitune_ray.training.data import (
    check_fits_model, fixed_batch, make_dataset, model_shapes, open_selected,
)
from mitune_ray.training.engine import resolve_schedule
from mitune_ray.training.feed import WorkerFeed, driver_feed
from mitune_ray.training.loop import LoopSpec, step_dir, train_loop
from mitune_ray.training.tracking import tracking_spec

ADAPTER_REL = f"{layout.ADAPTER}/{ADAPTER_FILE}"
RESULT_REL = layout.TRAIN_RESULT
INPUTS_REL = layout.TRAIN_INPUTS
ADAPTERS_REL = layout.TRAIN_ADAPTERS
CHECKPOINT_DIR = re.compile(r"(^|/)step-\d+/")  # Ray Train's checkpoints (loop.step_dir)
CHECKPOINTS_KEPT = 2  # DeepSpeed states kept in storage: the latest, and one in case it is bad
TEST_HOOKS_ENV = "MITUNE_TRAIN_TEST_HOOKS"  # tests only; JSON: deepspeed, fail_once_at_steps, fail_marker_dir


@dataclass(frozen=True)
class CheckpointScore:
    step: int
    loss: float  # on the fixed training batch, with fixed noise and timesteps
    validation_mi: float | None  # mean trajectory MI of the validation prompts' candidates


@dataclass(frozen=True)
class TrainResult:
    """What a training produced; stored as `adapter/train_result.json`."""

    adapter: str  # relative to `out`
    steps: int  # optimizer steps done
    initial_loss: float  # fixed-batch loss before the first step
    final_loss: float  # fixed-batch loss after the last step
    checkpoints: tuple[CheckpointScore, ...]
    exported_step: int
    export_reason: str
    samples_per_s: float  # training throughput of all workers (checkpoint time excluded)
    resumed_from: int  # optimizer step the last attempt started from (0: from scratch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainResult:
        fields = dict(data)
        fields["checkpoints"] = tuple(CheckpointScore(**c) for c in data["checkpoints"])
        return cls(**fields)


def train_adapter(cfg: Config, *, model_path: str, selected: Sequence[str], out: Store,
                  run_name: str, init_adapter: str | None = None, base_adapters: Sequence[str] = (),
                  validation_prompts: Sequence[Prompt] = (), log: Callable[[str], None] = print,
                  progress: ProgressFactory = silent_progress) -> TrainResult:
    """Fine-tune a DoRA adapter of `model_path` on the selected-set shards, on Ray Train.

    Args:
        cfg: the run's config (`train.*`; `generate.*` and `mi.*` for validation sampling).
        model_path: `model.path` form: a diffusers folder, s3:// folder, `tiny:<family>`, ...
        selected: the selected set, as shard URIs (local paths or `s3://bucket/key`, one store).
        out: the round's folder; see the module docstring for what is written there.
        run_name: Ray Train's run name, the same for every attempt at this round's training.
        init_adapter: an adapter folder to continue training (`run.chaining=continue`).
        base_adapters: adapter folders fused into the base model, in order, before the new
            adapter is added (`run.merge_previous`).
        validation_prompts: held-out prompts of the training split (never evaluation prompts),
            the first `train.validation_prompts` of which score every checkpoint.
        log: the driver's progress lines; rank 0's lines (checkpoints) come here too, through a
            Ray queue (`training/feed.py`).
        progress: the progress display of the optimizer steps (step, loss, smoothed samples/s,
            ETA; `mitune_ray.progress`).

    Example:
        >>> res = train_adapter(cfg, model_path="tiny:sd", selected=shards, out=Store("/r/1"),
        ...                     run_name="round-1-train")  # doctest: +SKIP
        >>> res.adapter, res.steps  # doctest: +SKIP
        ('adapter/pytorch_lora_weights.safetensors', 300)
    """
    train = cfg.train
    prompts = tuple(validation_prompts)[: train.validation_prompts]
    inputs = _inputs(cfg, model_path, selected, run_name, init_adapter, base_adapters, prompts)
    stored = stored_inputs(out, inputs)
    if stored is not None and out.exists(RESULT_REL):
        result = TrainResult.from_dict(out.read_json(RESULT_REL))
        log(f"training {out.child_uri(run_name)} already finished; its adapter is "
            f"{out.child_uri(result.adapter)}")
        return result

    # Everything that can be wrong with the inputs fails here, before a worker starts.
    folder = resolve_model_path(model_path, endpoint_url=cfg.storage.endpoint_url)
    fam = resolve_family(cfg.model.family, folder)
    schedule = resolve_schedule(train, fam)
    sel = open_selected(list(selected), fam, endpoint_url=cfg.storage.endpoint_url,
                        region=cfg.storage.region)
    shapes = model_shapes(folder, fam, cfg.model.resolution)
    check_fits_model(sel, shapes, fam, model_path, cfg.model.resolution)
    _check_adapters(cfg, fam, folder, init_adapter, base_adapters)
    if sel.rows < train.workers * train.batch_size:
        raise MituneError(f"the selected set has {sel.rows} rows, fewer than train.workers x "
                          f"train.batch_size = {train.workers * train.batch_size}: no worker "
                          "would get a full batch; lower train.batch_size or generate more")
    tracking = tracking_spec(cfg.tracking, out, run_name, {
        "model_path": model_path, "family": fam.name, "rank": train.rank,
        "alpha": train.alpha or train.rank, "lr": schedule.lr, "steps": schedule.steps,
        "grad_accum": schedule.grad_accum, "batch_size": train.batch_size,
        "workers": train.workers, "zero_stage": train.zero_stage,
        "max_grad_norm": schedule.max_grad_norm, "warmup_steps": schedule.warmup_steps})
    if stored is not None and stored != inputs:  # resumed with other workers or resources
        _check_resize(out, stored, train, run_name)
    if stored != inputs:
        out.write_json(INPUTS_REL, inputs)

    use_gpu = _connect(cfg, log)
    hooks = json.loads(os.environ.get(TEST_HOOKS_ENV, "{}"))
    spec = LoopSpec(
        model_path=model_path, family=fam.name, resolution=cfg.model.resolution,
        endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region, train=train,
        schedule=schedule, generate=cfg.generate, mi=cfg.mi, use_gpu=use_gpu,
        vae_factor=shapes.vae_factor, out=out, adapters_rel=ADAPTERS_REL,
        fixed_batch=fixed_batch(sel, train.batch_size), init_adapter=init_adapter,
        base_adapters=tuple(base_adapters), validation_prompts=prompts,
        tracking=tracking,
        deepspeed_extra=hooks.get("deepspeed", {}),
        fail_once_at_steps=tuple(hooks.get("fail_once_at_steps", ())),
        fail_marker_dir=hooks.get("fail_marker_dir"))
    log(f"training a rank-{train.rank} DoRA adapter of {model_path} on {sel.rows} rows: "
        f"{schedule.steps} steps of {train.workers} x {train.batch_size} x {schedule.grad_accum} "
        f"samples, lr {schedule.lr:g}, ZeRO-{train.zero_stage}, {'GPU' if use_gpu else 'CPU'}")
    dataset = make_dataset(sel)  # read and decoded once here when it fits the object store
    with driver_feed(log, progress, schedule.steps) as feed:
        summary = _fit(spec, dataset, run_name, out, use_gpu, feed)
    return _finish(out, summary, log)


def _inputs(cfg: Config, model_path, selected, run_name, init_adapter, base_adapters,
            prompts) -> dict:
    """What determines this training's result: stored with the first attempt, compared later."""
    return {
        "run_name": run_name, "model_path": model_path, "family": cfg.model.family,
        "resolution": cfg.model.resolution, "selected": sorted(selected),
        "init_adapter": init_adapter, "base_adapters": list(base_adapters),
        "train": cfg.train.model_dump(mode="json"),
        "validation_prompts": [p.prompt_id for p in prompts],
        "validation_sampling": {"generate": cfg.generate.model_dump(mode="json"),
                                "mi": cfg.mi.model_dump(mode="json")} if prompts else None,
    }


def stored_inputs(out: Store, inputs: dict) -> dict | None:
    """The stored inputs of an earlier attempt (None: first attempt); refuses ones that would
    give another result (`config.section_identity`: other worker counts, batch sizes and
    resources are the same training). Stored sections are read by this version's rules, so a
    setting added since (at its default) does not refuse a training an older version began."""
    if not out.exists(INPUTS_REL):
        return None
    stored = out.read_json(INPUTS_REL)
    if _result_inputs(stored) != _result_inputs(inputs):
        key = _first_difference(_result_inputs(stored), _result_inputs(inputs))
        raise MituneError(f"{out.child_uri(INPUTS_REL)} records a training of this round with "
                          f"another '{key}'; use a new round folder, or delete "
                          f"{out.child_uri(layout.TRAIN_WORK)} and {out.child_uri(inputs['run_name'])} "
                          "to retrain")
    return stored


def _result_inputs(inputs: dict) -> dict:
    """Inputs as far as they decide the result: placement settings out (`config.PLACEMENT`),
    train.grad_accum and train.workers as their effective batch, every section with this
    version's defaults for keys it lacks."""
    out = dict(inputs, train=section_identity("train", _current(TrainSection, inputs["train"])))
    sampling = inputs.get("validation_sampling")
    if sampling:
        out["validation_sampling"] = dict(
            sampling, mi=_current(MISection, sampling["mi"]),
            generate=section_identity("generate", _current(GenerateSection, sampling["generate"])))
    return out


def _current(section: type[BaseModel], values: dict) -> dict:
    """A stored section as this version reads it (defaults for keys added since), or as stored
    where it no longer validates (a key since removed: compared as it is, so it refuses)."""
    try:
        return section.model_validate(values).model_dump(mode="json")
    except ValidationError:
        return values


def _check_resize(out: Store, stored: dict, train, run_name: str) -> None:
    """A training part-way under ZeRO-3 resumes on as many workers as wrote its checkpoints
    (other stages re-partition theirs: `training/elastic.py`)."""
    before = stored["train"].get("workers")
    if train.zero_stage != 3 or before in (None, train.workers):
        return
    if any(CHECKPOINT_DIR.search(path) for path in out.list(run_name)):
        raise MituneError(f"this round's training is part-way with train.workers={before} under "
                          f"ZeRO-3 (train.zero_stage=3), whose checkpoints cannot be "
                          f"re-partitioned; resume it with train.workers={before} (later rounds "
                          "may use other counts)")


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return path or "(inputs)"


def _check_adapters(cfg: Config, fam, folder, init_adapter, base_adapters) -> None:
    import tempfile

    if not init_adapter and not base_adapters:
        return
    model = meta_denoiser(folder, fam)
    with tempfile.TemporaryDirectory(prefix="mitune-check-") as tmp:
        def local(uri: str, i: int) -> str:
            if not is_s3(uri):
                return uri
            dest = os.path.join(tmp, str(i))
            Store(uri, endpoint_url=cfg.storage.endpoint_url, region=cfg.storage.region
                  ).download_dir("", dest)
            return dest

        for i, uri in enumerate(base_adapters):
            check_adapter(local(uri, i), fam, model=model)
        if init_adapter:
            info = check_adapter(local(init_adapter, -1), fam, rank=cfg.train.rank, model=model)
            if not info.dora:
                raise MituneError(f"init adapter {init_adapter} is plain LoRA (no "
                                  "lora_magnitude_vector keys); continue from a DoRA adapter")
            alpha = cfg.train.alpha or cfg.train.rank
            if info.alpha is not None and info.alpha != alpha:
                raise MituneError(f"init adapter {init_adapter} was trained with alpha "
                                  f"{info.alpha:g} but train.alpha resolves to {alpha}; set "
                                  f"train.alpha={info.alpha:g} to continue it unchanged")


def _connect(cfg: Config, log) -> bool:
    """Join (or start) the Ray cluster; whether training uses GPUs."""
    import ray

    from mitune_ray.runtime import ensure_ray

    ensure_ray(cfg.ray)
    resources = ray.cluster_resources()
    train = cfg.train
    free = resources.get("CPU", 0) - train.workers * train.cpus_per_worker
    if free < 1:
        log(f"warning: train.workers={train.workers} x train.cpus_per_worker="
            f"{train.cpus_per_worker} leaves {free:g} of the cluster's {resources.get('CPU', 0):g} "
            "CPUs for reading the selected set; Ray Data may wait forever: lower "
            "train.cpus_per_worker")
    return train.use_gpu if train.use_gpu is not None else resources.get("GPU", 0) > 0


def _fit(spec: LoopSpec, dataset, run_name: str, out: Store, use_gpu: bool,
         feed: WorkerFeed | None = None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    try:
        from ray.train import TrainingFailedError
    except ImportError:  # pragma: no cover - older Ray
        from ray.train.v2.api.exceptions import TrainingFailedError

    train = spec.train
    resources = {"CPU": train.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    run_config = RunConfig(
        name=run_name, storage_path=out.path(),
        storage_filesystem=out.filesystem if is_s3(out.uri) else None,
        failure_config=FailureConfig(max_failures=train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT))
    trainer = TorchTrainer(
        train_loop, train_loop_config={"spec": spec, "feed": feed}, datasets={"train": dataset},
        scaling_config=ScalingConfig(num_workers=train.workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"), run_config=run_config)
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        user_error = user_error_in(exc)
        if user_error is not None:
            raise user_error from None
        raise
    return result.return_value


def _finish(out: Store, summary: dict, log) -> TrainResult:
    """Pick the checkpoint to export, copy its adapter, and write the result (last: the marker)."""
    history = [CheckpointScore(**h) for h in summary["history"]]
    if not history:
        raise RuntimeError("the training reported no checkpoint")  # the loop always writes one
    scored = [h for h in history if h.validation_mi is not None]
    if scored:
        chosen = max(reversed(scored), key=lambda h: h.validation_mi)
        reason = (f"highest mean validation MI ({chosen.validation_mi:.4f}) of "
                  f"{len(scored)} checkpoints")
    else:
        chosen, reason = history[-1], "the last checkpoint (no validation prompts)"
    source = f"{ADAPTERS_REL}/{step_dir(chosen.step)}/{ADAPTER_FILE}"
    out.write_bytes(ADAPTER_REL, out.read_bytes(source))
    result = TrainResult(
        adapter=ADAPTER_REL, steps=summary["step"], initial_loss=summary["initial_loss"],
        final_loss=history[-1].loss, checkpoints=tuple(history), exported_step=chosen.step,
        export_reason=reason, samples_per_s=summary["samples_per_s"],
        resumed_from=summary["resumed_from"])
    out.write_json(RESULT_REL, result.to_dict())
    log(f"exported the adapter of step {chosen.step} ({reason}) to {out.child_uri(ADAPTER_REL)}")
    return result
