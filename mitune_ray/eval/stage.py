"""A Ray Data stage that scores (image PNG bytes, prompt) rows with the evaluation metrics.

Each actor of the pool loads the metric models once (from local folders: see each metric's
module) and adds one float64 column per metric to every batch:

    ds = ray.data.from_items(rows, override_num_blocks=8)   # rows: {"png": bytes, "prompt": str}
    specs = [ScorerSpec("hpsv2", "/models/hps-v2"), ScorerSpec("blipvqa", "/models/blip-vqa")]
    scored = score_dataset(ds, specs, actors=4, num_gpus_per_actor=1, num_cpus_per_actor=2,
                           batch_size=32)

Small datasets are one block, which one actor would take alone: create them with
`override_num_blocks` (at least `actors`) so that every actor gets work. On a machine with few
CPUs give actors fractional CPUs (e.g. 0.5), or the read tasks starve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from mitune_ray.errors import MituneError

MetricKind = Literal["blipvqa", "clipscore", "hpsv2"]
METRIC_KINDS = ("blipvqa", "clipscore", "hpsv2")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ScorerSpec:
    """Which metric to compute, from which local folder, into which column.

    Args:
        kind: "blipvqa", "clipscore" or "hpsv2".
        folder: the metric's local weights folder.
        column: output column name (default: `kind`).
        device: "auto" (GPU when visible), "cpu", "cuda", "cuda:1", ...
        dtype: model dtype.
        options: extra keyword arguments of the scorer's `from_folder` (e.g. {"weight": 2.5}
            for CLIPScore, {"image_size": 384} for BLIP-VQA).
    """

    kind: MetricKind
    folder: str
    column: str = ""
    device: str = "auto"
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in METRIC_KINDS:
            raise MituneError(
                f"metric kind {self.kind!r} in ScorerSpec is unknown: use one of {METRIC_KINDS}"
            )
        if self.dtype not in DTYPES:
            raise MituneError(f"dtype {self.dtype!r} in ScorerSpec is unknown: use one of {DTYPES}")
        if not self.column:
            object.__setattr__(self, "column", self.kind)


def build_scorer(spec: ScorerSpec):
    """The scorer a spec names, loaded from its folder; every scorer has `score(images, prompts)`.

    Example:
        >>> build_scorer(ScorerSpec("clipscore", "/models/clip"))  # doctest: +SKIP
    """
    kwargs = dict(device=spec.device, dtype=spec.dtype, **spec.options)
    if spec.kind == "blipvqa":
        from mitune_ray.metrics.blipvqa import BlipVqaScorer

        return BlipVqaScorer.from_folder(spec.folder, **kwargs)
    from mitune_ray.metrics.clipscore import ClipScorer, HpsV2Scorer

    cls = ClipScorer if spec.kind == "clipscore" else HpsV2Scorer
    return cls.from_folder(spec.folder, **kwargs)


class ScorerUDF:
    """Ray Data callable class: loads the scorers once per actor, scores each batch."""

    def __init__(self, specs: Sequence[ScorerSpec], image_column: str, prompt_column: str):
        from mitune_ray.metrics._weights import decode_png

        self._decode = decode_png
        self.specs = list(specs)
        self.scorers = [build_scorer(spec) for spec in self.specs]
        self.image_column, self.prompt_column = image_column, prompt_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [self._decode(bytes(data)) for data in batch[self.image_column]]
        prompts = [str(p) for p in batch[self.prompt_column]]
        for spec, scorer in zip(self.specs, self.scorers):
            batch[spec.column] = np.asarray(scorer.score(images, prompts), dtype=np.float64)
        return batch


def score_dataset(
    ds,
    scorer_spec: ScorerSpec | Sequence[ScorerSpec],
    *,
    actors: int = 1,
    num_gpus_per_actor: float = 0.0,
    num_cpus_per_actor: float = 1.0,
    batch_size: int = 16,
    image_column: str = "png",
    prompt_column: str = "prompt",
):
    """Add one metric column per spec to a dataset of (PNG bytes, prompt) rows.

    Args:
        ds: a `ray.data.Dataset` with `image_column` (encoded image bytes) and `prompt_column`.
        scorer_spec: one spec or several (each gets its own column; images are decoded once).
        actors: size of the actor pool; each actor holds its own copy of the models.
        num_gpus_per_actor, num_cpus_per_actor: resources each actor reserves.
        batch_size: rows per scorer call.

    Returns:
        A lazy `ray.data.Dataset` with the input columns and the metric columns.
    """
    import ray

    specs = [scorer_spec] if isinstance(scorer_spec, ScorerSpec) else list(scorer_spec)
    columns = [s.column for s in specs]
    if not specs or len(set(columns)) != len(columns):
        raise MituneError(
            f"score_dataset got metric columns {columns}: pass at least one ScorerSpec, each with "
            "its own column name"
        )
    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if int(value) < 1:
            raise MituneError(f"score_dataset {name}={value} is not positive: pass 1 or more")
    return ds.map_batches(
        ScorerUDF,
        fn_constructor_kwargs=dict(
            specs=specs, image_column=image_column, prompt_column=prompt_column
        ),
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus_per_actor,
        num_cpus=num_cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
    )
