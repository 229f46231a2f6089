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
    scheduler: Literal["ddpm", "model"] = "ddpm"  # ddpm (reference) or the folder's own scheduler
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
    # What ranks the candidates: MI (MI-TUNE), or the controls of the ShapesWorld benchmark:
    # random (a seeded draw) and checker (the exact ShapesWorld checker: an oracle upper bound).
    select_by: Literal["mi", "random", "checker"] = "mi"
    # Throughput levers (see `mitune bench`): measured one at a time, off unless they pay.
    compile: bool = False  # torch.compile the denoiser (warm-up per batch size, cache per node)
    fuse_qkv: bool = False  # one matmul for Q, K and V (after adapters are fused)
    channels_last: bool = False  # NHWC convolutions (UNets)
    prune: PruneSection = Field(default_factory=PruneSection)

    @model_validator(mode="after")
    def _keep_at_most_candidates(self):
        if self.keep > self.candidates:
            raise ValueError(
                f"generate.keep={self.keep} exceeds generate.candidates={self.candidates}; "
                "keep at most as many as are generated"
            )
        return self


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

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self, sections: tuple[str, ...] | None = None) -> str:
        """A hash of the settings that determine a run's results (not where it runs)."""
        data = self.to_dict()
        # Evaluation settings are left out: they never change what a round trains, so a run can
        # be evaluated later with other metrics without being refused as a different run. So is
        # the number of rounds: round r is the same in a run of 3 or of 5, so a finished run can
        # be extended (`run.rounds=5` on the same run.uri) and resumes at round 4.
        keep = sections or ("model", "prompts", "generate", "mi", "train")
        data = {k: data[k] for k in keep}
        data["run"] = {k: v for k, v in self.run.model_dump().items()
                       if k not in ("allow_config_change", "evaluate", "uri", "rounds")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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
