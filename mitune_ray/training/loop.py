"""The Ray Train worker: DoRA on a frozen denoiser under DeepSpeed, checkpointed and validated.

Recipe, per worker: `setup()` (model, adapters, DeepSpeed, restore), `train()` (optimizer steps
until the budget, a checkpoint every `train.checkpoint_every` and at the end), then `metrics()`.
Rank-0-only work (logging, writing adapter files) is gated in `_Worker.log` / `_Worker.export`;
everything that touches ZeRO-3 parameters (forward passes, gathering) runs on every rank.

Every optimizer step makes a row of the metrics table (loss, lr, grad norm, samples/s; see
`tracking.py`), which rank 0 sends to TensorBoard and MLflow when they are configured (only a
checkpoint's row goes to Ray Train, with the checkpoint: see `record`). At each checkpoint, in this order: validation MI
of the held-out prompts (every rank scores its share of them) and the loss of the fixed batch,
both into the step's row, the adapter exported to `<out>/<adapters_rel>/step-NNNNNN/` (rank 0),
the metrics table written (rank 0), the DeepSpeed state saved by every rank into its own
temporary folder (safetensors, see `checkpoint.py`; the table's rows in it), and
`ray.train.report` of the row with it, which merges the ranks' folders into the run's checkpoint
in storage.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from mitune_ray.config import GenerateSection, MISection, TrainSection
from mitune_ray.sampling import Prompt, derive_seed
from mitune_ray.storage import Store, is_s3
from mitune_ray.training.engine import Schedule
from mitune_ray.training.feed import WorkerFeed
from mitune_ray.training.tracking import MetricsLog, TrackingSpec

_logger = logging.getLogger(__name__)
SHUFFLE_BUFFER_ROWS = 256  # rows mixed across neighbouring shards (a shard holds ~8 rows)
FAULT_SETTLE_S = 5.0  # test hook: > 2 polls of Ray Train's controller (one per 2 s)


@dataclass(frozen=True)
class LoopSpec:
    """Everything a worker needs, resolved on the driver (sent once, pickled by Ray)."""

    model_path: str  # resolved on each worker: s3:// models go to each node's cache
    family: str
    resolution: int | None
    endpoint_url: str | None
    region: str | None
    train: TrainSection
    schedule: Schedule
    generate: GenerateSection  # the validation sampler's steps, guidance, scheduler, batch
    mi: MISection
    use_gpu: bool
    vae_factor: int
    out: Store
    adapters_rel: str  # each checkpoint's adapter: <out>/<adapters_rel>/step-NNNNNN/
    fixed_batch: dict[str, np.ndarray]
    init_adapter: str | None = None
    base_adapters: tuple[str, ...] = ()
    validation_prompts: tuple[Prompt, ...] = ()
    tracking: TrackingSpec | None = None  # where rank 0 records each step's metrics
    deepspeed_extra: dict = field(default_factory=dict)  # test hook: config overrides
    # Test hook: after each of these optimizer steps (and its checkpoint, if any), raise once,
    # remembered by a marker file `failed-at-<step>` in `fail_marker_dir`.
    fail_once_at_steps: tuple[int, ...] = ()
    fail_marker_dir: str | None = None


def step_dir(step: int) -> str:
    return f"step-{step:06d}"


def train_loop(config: dict) -> dict:
    """Ray Train's `train_loop_per_worker`: config = {"spec": LoopSpec, "feed": the driver's
    console (`feed.WorkerFeed`, optional)}. Rank 0's return value (`Result.return_value`) is the
    run's summary, also when it resumed at its final checkpoint."""
    _quiet_ray_train_reports()
    worker = _Worker(config["spec"], config.get("feed"))
    worker.setup()
    worker.train()
    return worker.metrics()


def _quiet_ray_train_reports() -> None:
    """Ray Train logs "Checkpoint successfully created at: ..." and "Reporting training result
    N: TrainingReport(...)" at INFO from every worker; our own "checkpoint at step N" line says it
    once, with the loss. (Ray's lines reached the driver's console late, after the run summary.)"""
    names = ["ray.train.v2._internal.execution.storage"]
    try:  # this module names its logger by its file path
        from ray.train.v2._internal.execution import context

        names.append(context.__file__)
    except ImportError:  # another Ray layout: its lines stay, nothing breaks
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


class _Worker:
    def __init__(self, spec: LoopSpec, feed: WorkerFeed | None = None):
        import ray.train

        self.spec, self.feed = spec, feed
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        if spec.use_gpu:
            import ray.train.torch

            self.device, self.dtype = ray.train.torch.get_device(), torch.bfloat16
        else:
            self.device, self.dtype = torch.device("cpu"), torch.float32
        self.history: list[dict] = []  # one entry per checkpoint: step, loss, validation_mi
        self.rows: list[dict] = []  # one per optimizer step: the metrics table (tracking.py)
        self.tracker: MetricsLog | None = None
        self.initial_loss: float | None = None
        self.resumed_from = 0
        self.samples = 0
        self.train_seconds = 0.0

    def log(self, message: str) -> None:
        # The one place that decides who logs: rank 0, to the driver's console through the feed.
        # Without one, to the process's own stdout, which Ray forwards to the driver when
        # verbose (not `print`: Ray Train patches it into its logger, which echoes it twice).
        if self.rank != 0:
            return
        if self.feed is not None:
            self.feed.line(message)
        else:
            sys.__stdout__.write(message + "\n")
            sys.__stdout__.flush()

    def show_step(self, loss: float, lr: float, samples: int, seconds: float) -> None:
        """A step on the driver's console: its progress display, or a line without a feed."""
        if self.rank == 0 and self.feed is not None:
            self.feed.step(self.step, loss=loss, lr=lr, samples=samples, seconds=seconds)
        else:
            self.log(f"step {self.step}/{self.spec.schedule.steps} loss {loss:.5f} lr {lr:.3g} "
                     f"{samples / max(seconds, 1e-9):.2f} samples/s")

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        from mitune_ray.adapters import add_dora_adapter, load_adapter_weights, load_adapters
        from mitune_ray.families import denoiser, load_pipeline
        from mitune_ray.models import resolve_model_path
        from mitune_ray.training.engine import build_engine, deepspeed_config
        from mitune_ray.training.loss import DenoisingLoss

        spec = self.spec
        folder = resolve_model_path(spec.model_path, endpoint_url=spec.endpoint_url)
        pipe, fam = load_pipeline(folder, family=spec.family, dtype=self.dtype, device="cpu")
        self.fam = fam
        self.cond = self._encode_validation_prompts(pipe)
        load_adapters(pipe, fam, [self._local(a) for a in spec.base_adapters], fuse=True)
        net = denoiser(pipe, fam)
        net.requires_grad_(False)
        torch.manual_seed(spec.train.seed)  # the same Gaussian init on every rank
        add_dora_adapter(net, fam, spec.train)  # train.dora_impl's forward (fused by default)
        if spec.init_adapter:
            load_adapter_weights(net, fam, self._local(spec.init_adapter))
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module) and component is not net:
                component.to("meta")  # free the weights, keep the configs the sampler reads
        if spec.train.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        net.train()
        self.net = net
        self.engine = build_engine(net, deepspeed_config(
            spec.train, spec.schedule, use_gpu=spec.use_gpu, extra=spec.deepspeed_extra))
        self.loss = DenoisingLoss(fam, dict(pipe.scheduler.config), vae_factor=spec.vae_factor,
                                  device=self.device, dtype=self.dtype,
                                  weight_cap=spec.train.loss_weight_cap,
                                  min_timestep=spec.train.min_timestep)
        self.sampler = self._validation_sampler(pipe) if self.cond is not None else None
        self._restore()

    def _local(self, uri: str) -> str:
        """A local folder for an adapter: s3:// folders are downloaded (they are small)."""
        if not is_s3(uri):
            return uri
        local = tempfile.mkdtemp(prefix="mitune-adapter-")
        Store(uri, endpoint_url=self.spec.endpoint_url, region=self.spec.region).download_dir("", local)
        return local

    def _encode_validation_prompts(self, pipe):
        from mitune_ray.families import Conditioning, encode_prompts

        prompts = self.spec.validation_prompts
        if not prompts:
            return None
        cond = encode_prompts(pipe, self.fam, [p.text for p in prompts], "cpu")
        move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        return Conditioning(move(cond.embeds), move(cond.null_embeds), move(cond.pooled),
                            move(cond.null_pooled))

    def _validation_sampler(self, pipe):
        from mitune_ray.sampling import CandidateSampler

        spec = self.spec
        gen = spec.generate.model_copy(update={
            "candidates": spec.train.validation_candidates, "keep": 1, "select_by": "mi",
            "prune": spec.generate.prune.model_copy(update={"enabled": False})})
        return CandidateSampler(pipe, self.fam, gen, spec.mi, device=self.device,
                                dtype=self.dtype, resolution=spec.resolution)

    def _restore(self) -> None:
        import ray.train

        from mitune_ray.training.elastic import restore_resized, saved_world_size

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            saved_world = saved_world_size(folder)
            if saved_world is not None and saved_world != self.world:  # other train.workers
                path, client = folder, restore_resized(self.engine, folder,
                                                       saved_world=saved_world, rank=self.rank)
                self.log(f"re-partitioned the checkpoint of {saved_world} workers for {self.world}")
            else:
                path, client = self.engine.load_checkpoint(folder, load_module_strict=False)
        if path is None:
            raise RuntimeError(f"Ray Train's checkpoint {checkpoint.path} holds no DeepSpeed state")
        state = client["mitune"]
        self.history, self.initial_loss = state["history"], state["initial_loss"]
        self.samples, self.train_seconds = state["samples"], state["train_seconds"]
        self.rows = state.get("rows", [])
        self.resumed_from = self.engine.global_steps
        self.log(f"resumed from the checkpoint at step {self.resumed_from}")

    # -- training -------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.engine.global_steps

    def train(self) -> None:
        import ray.train

        spec, engine = self.spec, self.engine
        total = spec.schedule.steps
        if self.initial_loss is None:
            self.initial_loss = self.fixed_loss()
            self.log(f"fixed-batch loss before training: {self.initial_loss:.5f}")
        if self.rank == 0 and spec.tracking is not None:
            self.tracker = MetricsLog(spec.tracking, resumed_from=self.resumed_from)
        shard = ray.train.get_dataset_shard("train")
        epoch = 0
        micro, window_loss, window_start = 0, torch.zeros((), device=self.device), time.perf_counter()
        while self.step < total:
            shuffle_seed = derive_seed("shuffle", spec.train.seed, self.rank, epoch, self.step)
            batches = shard.iter_torch_batches(
                batch_size=spec.train.batch_size, drop_last=True, dtypes=torch.float32,
                local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=shuffle_seed % 2**31)
            seen = 0
            for batch in self._lockstep(batches):
                seen += 1
                generator = torch.Generator().manual_seed(
                    derive_seed("noise", spec.train.seed, self.rank, self.step, micro))
                loss = self.loss(engine, batch, generator)
                engine.backward(loss)
                boundary = engine.is_gradient_accumulation_boundary()
                lr = engine.get_lr()[0]  # this step's (the scheduler moves on in engine.step)
                engine.step()
                micro += 1
                window_loss += loss.detach()
                if not boundary:
                    continue
                row = self._after_step(window_loss / micro, time.perf_counter() - window_start,
                                       lr, epoch)
                micro, window_loss = 0, torch.zeros((), device=self.device)
                if self.step % spec.train.checkpoint_every == 0 or self.step >= total:
                    self.checkpoint(row)
                else:
                    self.record(row)
                self._maybe_fail()
                window_start = time.perf_counter()
                if self.step >= total:
                    break
            if seen == 0:
                raise RuntimeError(f"rank {self.rank} got no full batch of {spec.train.batch_size} "
                                   "rows in an epoch: the selected set is too small for "
                                   "train.workers x train.batch_size")
            epoch += 1
        if self.tracker is not None:
            self.tracker.close(finished=True)

    def _lockstep(self, batches):
        """Yield batches while every rank has one: an uneven split would otherwise hang the
        collectives of the rank that has one more (Ray's equal split makes this a no-op)."""
        flag = torch.ones(1, device=self.device)
        for batch in batches:
            flag.fill_(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if flag.item() == 0:
                _logger.warning("rank %d dropped a batch the other ranks did not have: the "
                                "dataset split is uneven", self.rank)
                return
            yield batch
        flag.fill_(0)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)

    def _after_step(self, mean_loss: torch.Tensor, seconds: float, lr: float, epoch: int) -> dict:
        """The step's row of the metrics table (`tracking.STEP_COLUMNS`; the checkpoint columns
        are filled at a checkpoint), logged by rank 0."""
        spec = self.spec
        samples = spec.train.batch_size * self.world * spec.schedule.grad_accum
        self.samples += samples
        self.train_seconds += seconds
        dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)  # gloo has no AVG
        norm = self.engine.get_global_grad_norm()  # None where DeepSpeed computes none (ZeRO-0, fp32)
        row = {"step": self.step, "epoch": epoch, "loss": mean_loss.item() / self.world,
               "lr": float(lr), "grad_norm": None if norm is None else float(norm),
               "samples_per_s": samples / max(seconds, 1e-9), "seconds": seconds,
               "time": time.time(), "validation_mi": None, "fixed_batch_loss": None}
        self.show_step(row["loss"], lr, samples, seconds)
        return row

    def record(self, row: dict) -> None:
        """Keep a step's row (the metrics table, the trackers). Only checkpoints report to Ray
        Train: a worker's report waits for the controller to take the previous one off its
        one-slot queue, which it polls every 2 s (Ray 2.60), so a report a step throttled every
        step to 2 s (600 ShapesWorld steps: 20 minutes instead of 4)."""
        self.rows.append(row)
        if self.tracker is not None:
            self.tracker.add(row)

    def _maybe_fail(self) -> None:
        spec = self.spec
        if self.step not in spec.fail_once_at_steps or spec.fail_marker_dir is None:
            return
        marker = os.path.join(spec.fail_marker_dir, f"failed-at-{self.step}")
        pending = not os.path.exists(marker)  # read by every rank before rank 0 writes it
        # Ray Train registers a checkpoint once every rank's report of it is in and the
        # controller has polled them (every 2 s): fail only after that, as a real crash a
        # step later would, so that the test's expectations do not depend on timing.
        dist.barrier()
        if pending and self.rank == 0:
            time.sleep(FAULT_SETTLE_S)
            with open(marker, "w") as f:
                f.write(str(self.resumed_from))
            raise RuntimeError(f"injected failure after step {self.step} (test hook)")

    # -- evaluation and checkpoints -------------------------------------------------------------

    @torch.no_grad()
    def fixed_loss(self) -> float:
        """The loss of the fixed batch with fixed draws (every rank: ZeRO-3 forwards are collective)."""
        batch = {k: torch.tensor(v) for k, v in self.spec.fixed_batch.items()}
        generator = torch.Generator().manual_seed(derive_seed("fixed", self.spec.train.seed))
        return float(self.loss(self.engine, batch, generator))

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean trajectory MI of the held-out prompts' candidates, the same seeds at every
        checkpoint. Prompts are dealt to ranks round-robin; a rank short of one repeats a prompt
        (not counted) so that all ranks run the same number of denoiser calls."""
        prompts = self.spec.validation_prompts
        if not prompts:
            return None
        n, per = len(prompts), math.ceil(len(prompts) / self.world)
        mine = list(range(self.rank, n, self.world))
        counted = len(mine)
        mine += [mine[0] if mine else 0] * (per - len(mine))
        rows = [(pos, c) for pos in range(per) for c in range(self.spec.train.validation_candidates)]
        totals = torch.zeros(per, dtype=torch.float64)
        size = self.sampler.gen.max_batch
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            seeds = [derive_seed("validation", self.spec.train.seed, prompts[mine[p]].prompt_id, c)
                     for p, c in chunk]
            index = torch.tensor([mine[p] for p, _ in chunk], device=self.cond.embeds.device)
            _, _, acc = self.sampler.sample(seeds, self.cond.rows(index))
            totals.index_add_(0, torch.tensor([p for p, _ in chunk]), acc.mi.double().cpu())
        per_prompt = totals[:counted] / self.spec.train.validation_candidates
        summed = torch.tensor([per_prompt.sum().item(), float(counted)], device=self.device)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed[0].item() / summed[1].item()

    def export(self, rel: str) -> None:
        """The adapter in diffusers' format at `<out>/<rel>/`, gathered under ZeRO-3, by rank 0."""
        import deepspeed

        from mitune_ray.adapters import export_adapter

        params = [p for p in self.net.parameters() if p.requires_grad]
        gathered = (deepspeed.zero.GatheredParameters(params, modifier_rank=None)
                    if self.spec.train.zero_stage == 3 else nullcontext())
        with gathered:
            if self.rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    export_adapter(self.net, self.fam, tmp)
                    self.spec.out.upload_dir(tmp, rel)

    def checkpoint(self, row: dict) -> None:
        """Score the step (validation MI, fixed-batch loss: into its row), export the adapter,
        write the metrics table, save the DeepSpeed state and report the row with it."""
        import ray.train
        from ray.train import Checkpoint

        entry = {"step": self.step, "validation_mi": self.validate(), "loss": self.fixed_loss()}
        self.history.append(entry)
        row.update(validation_mi=entry["validation_mi"], fixed_batch_loss=entry["loss"])
        self.rows.append(row)
        mi = entry["validation_mi"]
        self.log(f"checkpoint at step {self.step}: fixed-batch loss {entry['loss']:.5f}"
                 + ("" if mi is None else f", validation MI {mi:.4f}"))
        self.export(f"{self.spec.adapters_rel}/{step_dir(self.step)}")
        if self.tracker is not None:
            self.tracker.add(row)
            self.tracker.save(self.rows)
        with tempfile.TemporaryDirectory(prefix="mitune-ckpt-") as tmp:
            state = {"history": self.history, "initial_loss": self.initial_loss,
                     "samples": self.samples, "train_seconds": self.train_seconds,
                     "rows": self.rows}
            self.engine.save_checkpoint(tmp, client_state={"mitune": state},
                                        exclude_frozen_parameters=True)
            ray.train.report(row, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=step_dir(self.step))

    def metrics(self) -> dict:
        return {"step": self.step, "history": self.history,
                "initial_loss": self.initial_loss, "resumed_from": self.resumed_from,
                "samples_per_s": self.samples / self.train_seconds if self.train_seconds > 0 else 0.0}
