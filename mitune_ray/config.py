"""Typed, validated configuration: YAML files plus `key=value` overrides, unknown keys rejected.

Every section is a pydantic model that forbids unknown keys and checks ranges, so a typo or a bad
value is one line naming the key, the value, where it came from and the fix. Values left `None`
take the model family's defaults (`families.py`) when the config is resolved against a model.

Example:
    >>> cfg = load_config(None, ["generate.candidates=8", "run.rounds=2"])
    >>> cfg.generate.candidates, cfg.run.rounds
    (8, 2)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mitune_ray.errors import MituneError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    uri: str = "runs/demo"  # local folder or s3://bucket/prefix holding the whole run
    rounds: int = Field(3, ge=1)  # the paper tunes for several rounds
    # fresh: a new adapter on the base model each round (the reference); continue: train on from
    # the previous round's adapter.
    chaining: Literal["fresh", "continue"] = "fresh"
    accumulate: bool = False  # train round r on the selected sets of rounds 1..r
    merge_previous: bool = False  # fuse the previous adapter into the base before generating
    evaluate: bool = False  # score each round's adapter on the evaluation prompts
    allow_config_change: bool = False  # resume a run whose stored config differs


class ModelSection(Section):
    # A diffusers folder, local or s3://; "bundled:shapes" (the ShapesWorld model shipped in the
    # package) or "tiny:sd" / "tiny:sdxl" / "tiny:sd3" (random tiny models, for tests and benches).
    path: str = "bundled:shapes"
    family: Literal["auto", "sd", "sdxl", "sd3"] = "auto"  # auto: from model_index.json
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 GPU, fp32 CPU
    resolution: int | None = Field(None, ge=8)  # pixels; None: the model's own default


class PromptsSection(Section):
    train: list[str] = Field(default_factory=list)  # corpora tuned on (train/validation split)
    eval: list[str] = Field(default_factory=list)  # evaluation prompts: never tuned on
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # held out of tuning, by prompt id
    # Cap: a seeded uniform sample of N training prompts from the whole corpus, in one streaming
    # pass (the N smallest hashes of (sample_seed, prompt id)); the same N on every rerun.
    max_prompts: int | None = Field(None, ge=1)
    sample_seed: int = 0
    on_undecodable: Literal["error", "skip"] = "error"  # a non-UTF-8 line: stop, or skip + count
    shard_size: int = Field(256, ge=1)  # prompts per corpus shard (the unit of resumable work)


class MISection(Section):
    # How MI is evaluated. renoise (default): each finished candidate is noised again at K levels
    # shared by a prompt's candidates; trajectory: the CFG pair the sampler computes anyway is
    # accumulated along the way (the paper's Algorithm 2; free, but only the paper's form).
    estimator: Literal["renoise", "trajectory"] = "renoise"
    # What each level measures. standard (default): kappa * (||eps - eps_u||^2 - ||eps - eps_c||^2)
    # against the draw's own target (noise, v or velocity), the point-wise MI log p(z|p) - log p(z)
    # of each candidate; orthogonal: the paper's kappa * ||eps_c - eps_u||^2 (RFMI's velocity term),
    # equal to it only on average over images and ranking a prompt's candidates against it
    # (Gaussian ground truth: Kendall tau -0.7; docs/estimators.md).
    form: Literal["standard", "orthogonal"] = "standard"
    kappa: Literal["paper", "reference"] = "paper"  # reference drops alpha_t (~1.2% off)
    t_min: int = Field(50, ge=0, lt=1000)  # discrete: keep t > t_min (reference: 50)
    sigma_min: float = Field(0.05, gt=0.0, lt=1.0)  # flow: keep sigma > sigma_min (reference)
    velocity: Literal["conditional", "guided"] = "conditional"  # RFMI paper vs reference code
    reduction: Literal["integral", "mean"] = "integral"  # nats, or the reference's step average
    renoise_draws: int = Field(32, ge=2)  # K shared (t, eps) draws per prompt
    renoise_sampling: Literal["uniform", "importance"] = "uniform"

    @classmethod
    def paper(cls, **changes) -> MISection:
        """MI-TUNE's own estimator (Algorithm 2): the paper's form, accumulated along the sampling
        trajectory at no extra denoiser call.

        Example:
            >>> (MISection.paper().estimator, MISection.paper(t_min=0).form)
            ('trajectory', 'orthogonal')
        """
        return cls(estimator="trajectory", form="orthogonal", **changes)

    @model_validator(mode="after")
    def _standard_needs_renoise(self):
        if self.form == "standard" and self.estimator != "renoise":
            raise ValueError(
                f"mi.form=standard (the default) needs mi.estimator=renoise (got "
                f"{self.estimator!r}): only a re-noising draw knows the noise it added; for the "
                "paper's trajectory estimator set mi.form=orthogonal too")
        return self


class PruneSection(Section):
    """Successive halving: after `at` of the steps keep the best `keep` fraction by MI so far."""

    enabled: bool = False
    at: float = Field(0.5, gt=0.0, lt=1.0)
    keep: float = Field(0.5, gt=0.0, le=1.0)


class GenerateSection(Section):
    candidates: int = Field(50, ge=1)  # M per prompt (paper: 50)
    keep: int = Field(1, ge=1)  # top-k kept per prompt (reference: 1)
    steps: int = Field(100, ge=1)  # reference: 100 DDPM steps
    guidance: float = Field(7.5, ge=0.0)  # reference: 7.5
    # The sampler of DDPM-trained families: ddpm (the reference's ancestral sampler), ddim (eta 0)
    # or dpmsolver (DPM-Solver++, 2nd order multistep): fast solvers for fewer steps; model: the
    # folder's own scheduler. Rectified-flow families (SD3.5) always use their own Euler sampler.
    scheduler: Literal["ddpm", "ddim", "dpmsolver", "model"] = "ddpm"
    max_batch: int = Field(64, ge=1)  # candidates per denoiser call (CFG doubles it)
    prompts_per_batch: int = Field(8, ge=1)  # prompts per Ray Data batch (one output shard each)
    actors: int = Field(1, ge=1)  # generation actors (one pipeline each)
    gpus_per_actor: float | None = Field(None, ge=0.0)  # None: 1 if the cluster has GPUs, else 0
    cpus_per_actor: float = Field(1.0, gt=0.0)  # fractional on small CPU clusters (reads need CPU)
    seed: int = 0  # base of every candidate's seed
    gallery_prompts: int = Field(4, ge=0)  # prompts whose every candidate is kept for reports
    # Judge every candidate, not only the kept ones, so a run shows whether selection helps: the
    # kept images' correctness against the pool's mean and the best candidate's. shapes: the exact
    # ShapesWorld checker (fully correct or not; decodes every candidate). auto: shapes for the
    # bundled ShapesWorld model, none otherwise.
    pool_metric: Literal["auto", "none", "shapes"] = "auto"
    # What ranks the candidates: MI (MI-TUNE); mi_filter (MI as a filter: the candidates with
    # the lowest MI, a `filter_drop` share of them, are never kept, and the kept ones are drawn at
    # random among the rest; on ShapesWorld's validation prompts MI tells the better half of a
    # pool from the worse, not the best candidate from the next: docs/shapes.md, search 3); or the
    # controls of the ShapesWorld benchmark: random (a seeded draw), checker (the exact
    # ShapesWorld checker: an oracle upper bound) and anti (the checker reversed: the least
    # correct candidates, an anti-oracle lower bound).
    select_by: Literal["mi", "mi_filter", "random", "checker", "anti"] = "mi"
    filter_drop: float = Field(0.5, ge=0.0, lt=1.0)  # select_by=mi_filter: the share dropped
    # Throughput levers (see `mitune bench`): measured one at a time, off unless they pay.
    compile: bool = False  # torch.compile the denoiser (warm-up per batch size, cache per node)
    fuse_qkv: bool = False  # one matmul for Q, K and V (after adapters are fused)
    channels_last: bool = False  # NHWC convolutions (UNets)
    prune: PruneSection = Field(default_factory=PruneSection)
    # A folder (local or s3://) where the base model's candidates and their MI are kept, so that
    # runs that differ only in how they select (select_by, keep, filter_drop) sample them once:
    # the arms of a ShapesWorld series (mitune_ray/candidate_cache.py). None: nothing is cached.
    candidate_cache: str | None = None

    @model_validator(mode="after")
    def _keep_at_most_candidates(self):
        if self.keep > self.candidates:
            raise ValueError(
                f"generate.keep={self.keep} exceeds generate.candidates={self.candidates}; "
                "keep at most as many as are generated"
            )
        return self


DoraImpl = Literal["fused", "peft"]


class TrainSection(Section):
    rank: int = Field(32, ge=1)  # DoRA rank (reference: 32)
    alpha: int | None = Field(None, ge=1)  # None: = rank (reference)
    lr: float | None = Field(None, gt=0.0)  # None: family default (1e-4 SD/SD-XL, 5e-6 SD3.5)
    batch_size: int = Field(8, ge=1)  # per-worker micro-batch
    grad_accum: int | None = Field(None, ge=1)  # None: family default (50 SD/SD-XL, 5 SD3.5)
    max_grad_norm: float | None = Field(None, gt=0.0)  # None: family default (1.0, 5e-3 SD3.5)
    steps: int | None = Field(None, ge=1)  # optimizer steps; None: family default (300, 2000)
    warmup_steps: int | None = Field(None, ge=0)  # None: family default (0, 400 SD3.5)
    # None: the family's plain MSE. A number C (SD/SD-XL only): each sample's epsilon-unit error
    # weighted by min(1 / abar_t, C), v-prediction's weighting capped, for layout (high noise).
    loss_weight_cap: float | None = Field(None, ge=1.0)
    # SD/SD-XL only: train on timesteps min_timestep..999 (0: all). Where a layout is decided
    # (high noise), not the low-noise detail where a small model's samples differ from real
    # images most (ShapesWorld's sweep: fine-tuning on its own samples there unlearns).
    min_timestep: int = Field(0, ge=0, lt=1000)
    zero_stage: int = Field(2, ge=0, le=3)  # DeepSpeed ZeRO stage
    offload_optimizer: bool = False  # ZeRO optimizer states on the host
    gradient_checkpointing: bool = False
    # DoRA's forward: fused (mitune_ray/training/dora.py: peft's outputs and gradients without
    # the per-step full weight product) or peft's own. Both export the same adapter file.
    dora_impl: DoraImpl = "fused"
    workers: int = Field(1, ge=1)  # Ray Train workers (one GPU each when use_gpu)
    use_gpu: bool | None = None  # None: if the cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps between checkpoints
    max_failures: int = Field(2, ge=0)  # worker-group restarts from the latest checkpoint
    validation_prompts: int = Field(4, ge=0)  # held-out training-split prompts scored per checkpoint
    validation_candidates: int = Field(4, ge=1)
    seed: int = 0


class EvalSection(Section):
    # mi: the model's own MI; shapes: the exact ShapesWorld checker (bundled model only);
    # blip_vqa / clip_score / hps: T2I-CompBench's BLIP-VQA, CLIPScore, HPS v2 (local weights).
    metrics: list[Literal["mi", "shapes", "blip_vqa", "clip_score", "hps"]] = Field(
        default_factory=lambda: ["mi"]
    )
    candidates: int = Field(2, ge=1)  # images per evaluation prompt and round
    # Classifier-free guidance of the evaluation images; None: generate.guidance (the
    # candidates'). Set, every version is judged at one guidance whatever guidance the candidates
    # are sampled at (ShapesWorld's bench: candidates at low guidance, judged at the primary one).
    guidance: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    max_prompts: int | None = Field(None, ge=1)
    blip_path: str | None = None  # transformers BLIP-VQA folder
    clip_path: str | None = None  # transformers CLIP folder (CLIPScore)
    hps_path: str | None = None  # CLIP folder converted from the HPS v2 checkpoint
    actors: int = Field(1, ge=1)
    gpus_per_actor: float | None = Field(None, ge=0.0)  # None: 1 if the cluster has GPUs

    @model_validator(mode="after")
    def _weights_for_metrics(self):
        need = {"blip_vqa": self.blip_path, "clip_score": self.clip_path, "hps": self.hps_path}
        for metric, path in need.items():
            if metric in self.metrics and not path:
                key = {"blip_vqa": "blip_path", "clip_score": "clip_path", "hps": "hps_path"}[metric]
                raise ValueError(f"eval.metrics has {metric} but eval.{key} is not set; point it "
                                 "at a local weights folder (docs/configuration.md, evaluation "
                                 "with real weights)")
        return self


class StorageSection(Section):
    # Credentials come from the standard AWS chain (env, profile, instance role), never from here.
    endpoint_url: str | None = None  # S3-compatible store; default: $AWS_ENDPOINT_URL
    region: str | None = None


class RaySection(Section):
    address: str | None = None  # None: $RAY_ADDRESS, else a local cluster
    num_cpus: int | None = Field(None, ge=1)  # local cluster only


class TrackingSection(Section):
    # Where per-step training metrics go besides the run's own table (round-00r/train/
    # metrics.jsonl, always written) and Ray Train's reports; neither changes what a run computes.
    tensorboard: bool = False  # TensorBoard event files, one folder per round
    tensorboard_dir: str | None = None  # None: each round's train/tensorboard/; else DIR/train-round-00r
    # None: off. A folder (a local SQLite store DIR/mlflow.db), sqlite:///..., http(s)://...
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = Field("mitune", min_length=1)

    @model_validator(mode="after")
    def _dir_needs_tensorboard(self):
        if self.tensorboard_dir and not self.tensorboard:
            raise ValueError("tracking.tensorboard_dir is set but tracking.tensorboard is false; "
                             "set tracking.tensorboard=true to write event files there")
        return self


class Config(Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    prompts: PromptsSection = Field(default_factory=PromptsSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    mi: MISection = Field(default_factory=MISection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    ray: RaySection = Field(default_factory=RaySection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity(self) -> dict[str, Any]:
        """The settings that determine a run's results, as nested dicts (what `fingerprint`
        hashes): everything in `model`, `prompts`, `generate`, `mi`, `train` and `run`, less
        where and how it runs (`PLACEMENT`), with train.grad_accum and train.workers folded into
        the effective batch they make (`effective_batch`).

        Left out as well: evaluation settings (they never change what a round trains, so a run
        can be evaluated later with other metrics), and the number of rounds (round r is the same
        in a run of 3 or of 5, so `run.rounds=5` on a finished run resumes at round 4).

            >>> a = load_config(None, ["train.grad_accum=50"])
            >>> b = load_config(None, ["train.grad_accum=25", "train.workers=2", "generate.actors=8"])
            >>> a.identity()["train"]["effective_batch"], a.fingerprint() == b.fingerprint()
            (400, True)
        """
        data = self.to_dict()
        out = {name: section_identity(name, data[name]) for name in IDENTITY_SECTIONS}
        out["run"] = {k: v for k, v in data["run"].items() if k not in RUN_OUTSIDE_IDENTITY}
        return out

    def fingerprint(self) -> str:
        """A hash of the settings that determine a run's results (`identity`), not of where and
        how it runs: a run resumes under another fingerprint only with run.allow_config_change."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


# What a run's identity (`Config.identity`, `Config.fingerprint`) leaves out: settings of where
# and how the work runs, which a resumed run may change (docs/configuration.md, elastic resume).
# Batch sizes and throughput levers change float rounding only (seeds derive from the prompt and
# candidate, not the batch); train.workers comes with the effective batch (`keep_effective_batch`).
# train.zero_stage and offload_optimizer stay in: they change the layout of DeepSpeed's states.
PLACEMENT = (
    "generate.actors", "generate.gpus_per_actor", "generate.cpus_per_actor", "generate.max_batch",
    "generate.prompts_per_batch", "generate.compile", "generate.fuse_qkv",
    "generate.channels_last", "generate.candidate_cache",
    "train.use_gpu", "train.cpus_per_worker", "train.gradient_checkpointing", "train.dora_impl",
    "train.max_failures",
)
IDENTITY_SECTIONS = ("model", "prompts", "generate", "mi", "train")
RUN_OUTSIDE_IDENTITY = ("allow_config_change", "evaluate", "uri", "rounds")


def section_identity(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """One section's part of `Config.identity` (its keys as a dict, e.g. a stored one): less
    `PLACEMENT`, for `train` grad_accum and workers as their effective batch, and for `generate`
    filter_drop only where it selects (select_by=mi_filter).

        >>> section_identity("train", {"lr": 1e-4, "batch_size": 8, "grad_accum": 25, "workers": 2})
        {'lr': 0.0001, 'batch_size': 8, 'effective_batch': 400}
    """
    out = {k: v for k, v in values.items() if f"{name}.{k}" not in PLACEMENT}
    if name == "generate" and out.get("select_by") != "mi_filter":
        out.pop("filter_drop", None)
    if name == "train" and out.get("grad_accum") is not None:  # unset: a family default, as is
        out["effective_batch"] = out["batch_size"] * out.pop("grad_accum") * out.pop("workers")
    return out


def effective_batch(train: TrainSection) -> int | None:
    """Samples per optimizer step: batch_size x grad_accum x workers (None: grad_accum unset)."""
    return None if train.grad_accum is None else train.batch_size * train.grad_accum * train.workers


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def stored_config(data: Any) -> Config | None:
    """A config stored in a run's manifest, read by this version's rules (None: it no longer
    validates, e.g. written by an older version with keys since removed)."""
    try:
        return Config.model_validate(data)
    except ValidationError:
        return None


def identity_changes(old: Config, new: Config) -> list[str]:
    """What differs between two configs' identities, as `key: old -> new` (sorted by key).

        >>> old, new = load_config(None, ["train.lr=1e-4"]), load_config(None, ["train.lr=2e-4"])
        >>> identity_changes(old, new)
        ['train.lr: 0.0001 -> 0.0002']
    """
    a, b = _flatten(old.identity()), _flatten(new.identity())
    return [f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def keep_effective_batch(cfg: Config, stored: Config) -> tuple[Config, str | None]:
    """A resumed run with another train.workers keeps its effective batch (batch_size x
    grad_accum x workers): grad_accum is scaled to match where it divides, and a one-line error
    names the values and the fix where it does not. Returns the config and a line saying what
    changed (None: nothing). Where grad_accum or batch_size changed too, the config is returned
    as it is: its identity differs, and the run refuses it (`Manifest.create_or_check`).

        >>> stored = load_config(None, ["train.grad_accum=50"])
        >>> two = load_config(None, ["train.grad_accum=50", "train.workers=2"])
        >>> cfg, note = keep_effective_batch(two, stored)
        >>> cfg.train.grad_accum, note
        (25, 'train.workers 1 -> 2: train.grad_accum 50 -> 25 keeps 400 samples per optimizer step')
    """
    old, new = stored.train, cfg.train
    if (new.workers == old.workers or None in (old.grad_accum, new.grad_accum)
            or new.grad_accum != old.grad_accum or new.batch_size != old.batch_size):
        return cfg, None
    want = effective_batch(old)
    per_step = new.batch_size * new.workers
    if want % per_step:
        counts = [w for w in range(1, want // new.batch_size + 1)
                  if (want // new.batch_size) % w == 0]
        raise MituneError(
            f"train.workers={new.workers} cannot keep this run's {want} samples per optimizer step "
            f"(train.batch_size={old.batch_size} x train.grad_accum={old.grad_accum} x "
            f"train.workers={old.workers}): {want} is not a multiple of {new.batch_size} x "
            f"{new.workers}; use train.workers={' or '.join(map(str, counts))}, or pass "
            f"run.allow_config_change=true to go on with {effective_batch(new)} samples per step")
    accum = want // per_step
    return (cfg.model_copy(update={"train": new.model_copy(update={"grad_accum": accum})}),
            f"train.workers {old.workers} -> {new.workers}: train.grad_accum {new.grad_accum} -> "
            f"{accum} keeps {want} samples per optimizer step")


def _format_error(err: ValidationError, sources: dict[str, str]) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    # Attribute the error to the override or file that set this key (or a key below it).
    source = next((src for k, src in reversed(sources.items()) if k == key or k.startswith(key + ".")
                   or key.startswith(k + ".")), sources.get("", "the defaults"))
    if first["type"] == "extra_forbidden":
        return (f"unknown config key '{key}' (from {source}); "
                "run 'mitune config show' to list the valid keys")
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    if isinstance(value, dict):  # a check across keys of one section
        return f"config section '{key}' (from {source}) is invalid: {msg}"
    shown = json.dumps(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__
    return f"config key '{key}' = {shown} (from {source}) is invalid: {msg}"


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MituneError(f"config key '{dotted}' (from {source}): '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`"generate.candidates=8"` -> `("generate.candidates", 8)`; values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise MituneError(f"override {text!r} is not key=value; write e.g. generate.candidates=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults) and apply `key=value` overrides, validating both."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MituneError(f"config file {path} does not exist; pass the path of a YAML file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise MituneError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
        if not isinstance(data, dict):
            raise MituneError(
                f"config file {path} must hold a mapping of sections, not {type(data).__name__}"
            )
    sources = {"": str(path) if path is not None else "the defaults"}
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, key, value, f"override {text!r}")
        sources[key] = f"override {text!r}"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise MituneError(_format_error(err, sources)) from None
