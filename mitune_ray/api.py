"""The Python API, for notebooks and scripts: run a config, score (image, prompt) pairs by MI.

Everything here is what the `mitune` command does, returned as Python objects instead of printed:

- `run_config(config, overrides)`: `mitune run` (run or resume a whole run); returns a
  `RunResult` with the run's URI, the rounds trained, their adapters and evaluation metrics.
- `score_pairs(images, prompts, ...)`: the MI of in-memory `PIL.Image`s for their prompts, with
  the standard error over the re-noising draws: `mitune score` without files or Ray.
- `load_scorer(...)`: the model loaded once, for scoring many batches (`PairScorer.score`).
- `export_round(run_uri, round, dir)`: `mitune export`.

`import mitune_ray` is light (no torch, Ray or diffusers): these names are re-exported from the
package and import this module on first use.

Example:
    >>> import mitune_ray as mt
    >>> result = mt.run_config("jobs/sd21_base_compbench.yaml", {"run.rounds": 1})  # doctest: +SKIP
    >>> result.uri, result.trained, result.adapters[1]  # doctest: +SKIP
    ('s3://my-bucket/runs/sd21-base-compbench-v1', (1,), 's3://.../round-001/adapter')
    >>> scores = mt.score_pairs(images, "a red cube", model="tiny:sd")  # doctest: +SKIP
    >>> [(round(s.mi, 3), round(s.stderr, 3)) for s in scores]  # doctest: +SKIP
    [(0.412, 0.051), (0.127, 0.048)]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from mitune_ray import layout
from mitune_ray.cli import DEMO, register_plugins
from mitune_ray.config import Config, load_config
from mitune_ray.driver import run, status_text
from mitune_ray.errors import MituneError
from mitune_ray.models import ModelSpec
from mitune_ray.report.export import export_round
from mitune_ray.stages.score import PairScorer
from mitune_ray.storage import Store

__all__ = ["PairScore", "RunResult", "export_round", "load_run_config", "load_scorer",
           "run_config", "score_pairs"]

Overrides = Sequence[str] | Mapping[str, Any]


def override_strings(overrides: Overrides | None) -> list[str]:
    """`key=value` strings from a list of them or a mapping (values written as JSON, which the
    config reads as YAML: numbers, strings, booleans, null and lists keep their type).

    Example:
        >>> override_strings({"run.rounds": 2, "prompts.train": ["a.txt"], "run.evaluate": True})
        ['run.rounds=2', 'prompts.train=["a.txt"]', 'run.evaluate=true']
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise MituneError(f"overrides {overrides!r} is one string; pass a list of key=value "
                          "strings or a mapping {'section.key': value}")
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def load_run_config(config: str | os.PathLike | None = None,
                    overrides: Overrides | None = None) -> Config:
    """The validated config of a YAML file (None: the built-in demo, as `mitune run`) with
    overrides applied; bad input is a one-line `MituneError` naming the key and its source."""
    items = override_strings(overrides)
    if config is None:
        with resources.as_file(resources.files("mitune_ray.assets").joinpath(DEMO)) as demo:
            return load_config(demo, items)
    return load_config(config, items)


@dataclass(frozen=True)
class RunResult:
    """What `run_config` did: the run's URI and, from its manifest, the rounds trained, their
    adapters (load one with `pipe.load_lora_weights` after `export_round`) and the evaluation
    metrics of each evaluated version ('eval-base', 'round-001', ...). `str()` is
    `mitune status`."""

    uri: str
    rounds: int  # configured
    trained: tuple[int, ...]
    adapters: dict[int, str]  # round -> the adapter folder's URI inside the run
    metrics: dict[str, dict[str, float]]  # version -> metric means, at the run's guidance
    manifest: dict = field(repr=False)

    @property
    def status(self) -> str:
        return status_text(self.manifest, self.uri)

    def __str__(self) -> str:
        return self.status


def run_config(config: str | os.PathLike | None = None, overrides: Overrides | None = None, *,
               log=print) -> RunResult:
    """Run (or resume) the run a config describes, as `mitune run CONFIG key=value ...` does.

    Args:
        config: a YAML file; None runs the built-in demo (ShapesWorld's bundled model).
        overrides: `["run.rounds=2", ...]` or `{"run.rounds": 2, ...}`.
        log: where progress lines go (`print` by default; `lambda line: None` for silence).

    Ray is started (or joined: `ray.address`, `$RAY_ADDRESS`) in this process and stays
    connected afterwards; `ray.shutdown()` stops a local one.

    Example:
        >>> result = run_config(None, {"run.uri": "runs/demo", "run.rounds": 1})  # doctest: +SKIP
        >>> result.trained  # doctest: +SKIP
        (1,)
    """
    register_plugins()
    cfg = load_run_config(config, overrides)
    manifest = run(cfg, log=log)
    stages = manifest.get("stages", {})
    trained = tuple(sorted(layout.round_of(name) for name in stages
                           if layout.stage_kind(name) == "train"))
    store = Store(cfg.run.uri, endpoint_url=cfg.storage.endpoint_url)
    adapters = {r: store.child_uri(stages[layout.train_stage(r)]["adapter"]) for r in trained}
    metrics = {}
    for r in (0, *trained):
        version = layout.version_dir(r)
        entry = stages.get(layout.evaluate_stage(version))
        if entry:
            metrics[version] = dict(entry.get("summary", {}).get("metrics", {}))
    return RunResult(uri=store.uri, rounds=cfg.run.rounds, trained=trained, adapters=adapters,
                     metrics=metrics, manifest=manifest)


@dataclass(frozen=True)
class PairScore:
    """One (image, prompt) pair's MI (nats) and its standard error over the re-noising draws."""

    prompt: str
    mi: float
    stderr: float


def load_scorer(config: str | os.PathLike | None = None, overrides: Overrides | None = None, *,
                model: str | None = None, adapters: Sequence[str] = (),
                device: str | None = None) -> PairScorer:
    """A model loaded for scoring (image, prompt) pairs by MI: `scorer.score(images, prompts)`
    returns (mi, stderr) arrays. Load it once and score many batches.

    Args:
        config: a YAML file whose `model`, `mi` and `generate.seed` settings are used; None: the
            defaults (unlike `run_config`, not the demo).
        overrides: as in `run_config`, e.g. `{"mi.renoise_draws": 16}`.
        model: sets `model.path` (a diffusers folder, `s3://...`, `bundled:shapes`, `tiny:sd`).
        adapters: adapter folders (an export, or a run's `round-00r/adapter`, local or
            `s3://`), fused into the model in order.
        device: "cpu", "cuda", "cuda:1", ...; None: the GPU when one is visible.

    Example:
        >>> scorer = load_scorer(model="/models/sd21", adapters=["./round-3"])  # doctest: +SKIP
        >>> mi, stderr = scorer.score(images, prompts)  # doctest: +SKIP
    """
    register_plugins()
    items = override_strings(overrides) + ([f"model.path={json.dumps(model)}"] if model else [])
    cfg = load_config(config, items)
    spec = ModelSpec(cfg.model.path, cfg.model.family, cfg.model.dtype, cfg.model.resolution,
                     tuple(str(a) for a in adapters), cfg.storage.endpoint_url)
    return PairScorer(spec, cfg, device=device)


def score_pairs(images, prompts: str | Sequence[str], *,
                config: str | os.PathLike | None = None, overrides: Overrides | None = None,
                model: str | None = None, adapters: Sequence[str] = (),
                device: str | None = None) -> list[PairScore]:
    """The MI of each image for its prompt, with its standard error, in input order.

    The scoring stage's estimator (`mitune score`, `mitune_ray.stages.score`): the re-noising
    point-wise MI with `mi.renoise_draws` draws shared by all images of one prompt, so images
    of the same prompt are compared on the same draws.

    Args:
        images: `PIL.Image`s (any mode and size: converted to RGB, resized to the model's), or one.
        prompts: one prompt per image, or one prompt for all of them.
        config, overrides, model, adapters, device: as in `load_scorer`.

    Example:
        >>> score_pairs([red, blue], "a red cube", model="tiny:sd")  # doctest: +SKIP
        [PairScore(prompt='a red cube', mi=0.41, stderr=0.05), PairScore(...)]
    """
    images = [images] if hasattr(images, "convert") else list(images)
    texts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(texts) != len(images):
        raise MituneError(f"score_pairs got {len(images)} images for {len(texts)} prompts; pass "
                          "one prompt per image, or one prompt for all")
    bad = next((i for i, im in enumerate(images) if not hasattr(im, "convert")), None)
    if bad is not None:
        raise MituneError(f"score_pairs: images[{bad}] is a {type(images[bad]).__name__}, not a "
                          "PIL.Image; open files with PIL.Image.open(path)")
    scorer = load_scorer(config, overrides, model=model, adapters=adapters, device=device)
    mi, stderr = scorer.score(images, texts)
    return [PairScore(t, float(m), float(s)) for t, m, s in zip(texts, np.asarray(mi),
                                                                 np.asarray(stderr))]
