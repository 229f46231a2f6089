"""The evaluation stage: score a model version's evaluation images with the configured metrics.

Every model version draws the same candidates (seeds from the prompt id and candidate index,
round 0 for all), so base and tuned images of a prompt are paired. The driver generates a
version's images with the generation stage (`generation_settings`: every candidate kept, none
pruned) into `<version>/eval/selected/*.parquet`; `score_version` then writes per-image metric
values to `<version>/eval/scores.parquet` and means (overall and per category, e.g.
T2I-CompBench's color/shape/...) to `metrics.json`, with `metric_info`: what a metric model says
about how it scored (BLIP-VQA: `{"noun_phrase_chunker": "rules"}`, or spaCy's model and version).
At another classifier-free guidance G (`mitune eval RUN --guidance G`) the folder is
`<version>/eval-guidance-G/`: whether a gain at the run's guidance is better alignment or only a
tolerance of that guidance (`mitune_ray.layout`).

Metrics: `mi` (the model's own trajectory MI), `blip_vqa`, `clip_score`, `hps` (from local weights,
through `score_dataset`), and any registered evaluation metric (`mitune_ray.registry`; ShapesWorld
registers `shapes`, the exact checker).

`score_dataset` is a Ray Data stage that scores (image PNG bytes, prompt) rows with the metric
models. Each actor of the pool loads the metric models once (from local folders: see each
metric's module in `mitune_ray.metrics`) and adds one float64 column per metric to every batch:

    ds = ray.data.from_items(rows, override_num_blocks=8)   # rows: {"png": bytes, "prompt": str}
    specs = [ScorerSpec("hpsv2", "/models/hps-v2"), ScorerSpec("blipvqa", "/models/blip-vqa")]
    scored = score_dataset(ds, specs, actors=4, num_gpus_per_actor=1, num_cpus_per_actor=2,
                           batch_size=32)

Small datasets are one block, which one actor would take alone: create them with
`override_num_blocks` (at least `actors`) so that every actor gets work. On a machine with few
CPUs give actors fractional CPUs (e.g. 0.5), or the read tasks starve.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mitune_ray import layout, registry
from mitune_ray.config import EvalSection, GenerateSection
from mitune_ray.errors import MituneError
from mitune_ray.records import to_parquet_bytes
from mitune_ray.storage import Store

# eval.metrics computed here; any other is a registered evaluation metric (`mitune_ray.registry`)
BUILTIN_METRICS = ("mi", "blip_vqa", "clip_score", "hps")


def check_guidance(guidance: float, where: str) -> None:
    """A classifier-free guidance to evaluate at must be finite and above 0 (1: unguided).

        >>> check_guidance(0.0, "--guidance")
        Traceback (most recent call last):
        ...
        mitune_ray.errors.MituneError: --guidance 0.0: classifier-free guidance must be a finite number above 0 (1: unguided; the run's own is generate.guidance)
    """
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance) and guidance > 0):
        raise MituneError(f"{where} {guidance!r}: classifier-free guidance must be a finite "
                          "number above 0 (1: unguided; the run's own is generate.guidance)")


def category_of(source: str) -> str:
    """T2I-CompBench's category from a prompt file name: '.../color_val.txt' -> 'color'."""
    stem = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"_(val|train|test)(_.*)?$", "", stem) or "all"


@dataclass(frozen=True)
class EvalPrompts:
    """The evaluation prompts of a run: their prepared shards, and the ones evaluated."""

    store: Store  # the prepared evaluation corpus (`prompts/eval`)
    shards: list[str]
    categories: dict[str, str]  # prompt id -> category, of the prompts evaluated
    excluded: frozenset[str]  # prompt ids beyond eval.max_prompts

    @classmethod
    def read(cls, store: Store, shards: list[str], cap: int | None) -> EvalPrompts:
        """The first `cap` prompts of the shards (all with None) and their categories."""
        categories: dict[str, str] = {}
        every: set[str] = set()
        for shard in shards:
            table = pq.read_table(store.path(shard), columns=["prompt_id", "source"],
                                  filesystem=store.filesystem)
            for pid, source in zip(table.column("prompt_id").to_pylist(),
                                   table.column("source").to_pylist()):
                every.add(pid)
                if cap is None or len(categories) < cap:
                    categories[pid] = category_of(source)
        return cls(store, list(shards), categories, frozenset(every - set(categories)))


def evaluation_guidance(gen: GenerateSection, ev: EvalSection,
                        guidance: float | None = None) -> float:
    """The guidance of evaluation images: `guidance` (`mitune eval --guidance`), else the run's
    evaluation guidance, `eval.guidance`, else `generate.guidance`."""
    if guidance is not None:
        return guidance
    return gen.guidance if ev.guidance is None else ev.guidance


def generation_settings(gen: GenerateSection, ev: EvalSection,
                        guidance: float | None = None) -> GenerateSection:
    """The generation stage's settings for evaluation images: `eval.candidates` per prompt, all
    kept, nothing pruned or judged, at `evaluation_guidance`."""
    return gen.model_copy(update={"candidates": ev.candidates, "keep": ev.candidates,
                                  "gallery_prompts": 0, "select_by": "mi", "pool_metric": "none",
                                  "guidance": evaluation_guidance(gen, ev, guidance),
                                  "prune": gen.prune.model_copy(update={"enabled": False})})


def metric_columns(table: pa.Table, ev: EvalSection, *,
                   cpus_per_actor: float) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Per-image values of every configured metric (rows in `table` order), and what the metric
    models report about how they scored (`ScorerUDF`'s info: e.g. BLIP-VQA's noun-phrase
    chunker), by metric."""
    out: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    if "mi" in ev.metrics:
        out["mi"] = table.column("mi").to_pylist()
    for metric in ev.metrics:
        if metric not in BUILTIN_METRICS:
            columns = registry.load(registry.entry(registry.EVAL_METRICS, metric,
                                                   where="eval.metrics"))
            out.update(columns(table.column("prompt").to_pylist(), table.column("png").to_pylist()))
    specs = [ScorerSpec(kind, path, column=metric)
             for metric, kind, path in (("blip_vqa", "blipvqa", ev.blip_path),
                                        ("clip_score", "clipscore", ev.clip_path),
                                        ("hps", "hpsv2", ev.hps_path))
             if metric in ev.metrics]
    if specs:
        import ray

        from mitune_ray.runtime import gpus_per_actor

        gpus = gpus_per_actor(ev.gpus_per_actor)
        rows = table.select(["png", "prompt"]).append_column(
            "row", pa.array(range(table.num_rows), pa.int64()))
        ds = ray.data.from_arrow(rows).repartition(max(1, 2 * ev.actors))
        scored = score_dataset(ds, specs, actors=ev.actors, num_gpus_per_actor=gpus,
                               num_cpus_per_actor=cpus_per_actor, with_info=True)
        got = pa.concat_tables(list(scored.drop_columns(["png"]).iter_batches(
            batch_format="pyarrow", batch_size=None))).sort_by("row")
        for spec in specs:
            out[spec.column] = got.column(spec.column).to_pylist()
            if info_column(spec.column) in got.column_names:
                info[spec.column] = merged_info(got.column(info_column(spec.column)).to_pylist())
    return out, info


def _summarise(values: dict[str, list[float]], categories: list[str]) -> tuple[dict, dict]:
    overall = {k: float(np.nanmean(v)) if v else math.nan for k, v in values.items()}
    by_cat: dict[str, dict[str, float]] = defaultdict(dict)
    for cat in sorted(set(categories)):
        idx = [i for i, c in enumerate(categories) if c == cat]
        for k, v in values.items():
            by_cat[cat][k] = float(np.nanmean([v[i] for i in idx]))
    return overall, dict(by_cat)


def score_version(*, name: str, adapters: list[str], out: Store, prompts: EvalPrompts,
                  ev: EvalSection, guidance: float, cpus_per_actor: float, log=print) -> dict:
    """Score the evaluation images of model version `name` (generated at `guidance` into `out`,
    its evaluation folder), write `scores.parquet` and `metrics.json` there, return the summary."""
    table = out.read_parquet(layout.SELECTED, columns=["prompt_id", "prompt", "candidate", "seed",
                                                       "mi", "png"])
    if table is None:
        raise MituneError(f"evaluation of {name} wrote no images to "
                          f"{out.child_uri(layout.SELECTED)}")
    table = table.sort_by([("prompt_id", "ascending"), ("candidate", "ascending")])
    values, info = metric_columns(table, ev, cpus_per_actor=cpus_per_actor)
    cats = [prompts.categories[p] for p in table.column("prompt_id").to_pylist()]
    scores = table.drop_columns(["png"]).append_column("category", pa.array(cats))
    for k, v in values.items():
        if k != "mi":
            scores = scores.append_column(k, pa.array(v, pa.float64()))
    out.write_bytes(layout.EVAL_SCORES, to_parquet_bytes(scores))
    overall, by_cat = _summarise(values, cats)
    result = {"version": name, "adapters": adapters, "prompts": len(prompts.categories),
              "images": table.num_rows, "guidance": guidance, "metrics": overall,
              "by_category": by_cat, "metric_info": info}
    out.write_json(layout.EVAL_METRICS, result)
    log(f"[{name}, guidance {guidance:g}] " + ", ".join(f"{k} {v:.4g}" for k, v in overall.items()))
    return result


# -- the metric models on Ray Data ------------------------------------------------------------

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


INFO_SUFFIX = "__info"  # a metric column's companion: JSON of its scorer's `info`, per row


def info_column(column: str) -> str:
    """The column holding what the scorer of metric `column` reports about itself."""
    return column + INFO_SUFFIX


def merged_info(values: Sequence[str]) -> dict:
    """One metric's info from its rows' JSON: every key with its one value, or the sorted list
    of values where actors differed (e.g. spaCy installed on some nodes only).

        >>> merged_info(['{"noun_phrase_chunker": "rules"}'] * 2)
        {'noun_phrase_chunker': 'rules'}
        >>> merged_info(['{"noun_phrase_chunker": "rules"}', '{"noun_phrase_chunker": "spacy"}'])
        {'noun_phrase_chunker': ['rules', 'spacy']}
    """
    seen: dict[str, set] = defaultdict(set)
    for value in set(values):
        for key, item in json.loads(value).items():
            seen[key].add(item)
    return {k: next(iter(v)) if len(v) == 1 else sorted(v) for k, v in sorted(seen.items())}


class ScorerUDF:
    """Ray Data callable class: loads the scorers once per actor, scores each batch. With
    `with_info`, a scorer with an `info` dict (BLIP-VQA: its noun-phrase chunker) also fills
    `info_column(column)`."""

    def __init__(self, specs: Sequence[ScorerSpec], image_column: str, prompt_column: str,
                 with_info: bool = False):
        from mitune_ray.imaging import decode_png

        self._decode = decode_png
        self.specs = list(specs)
        self.scorers = [build_scorer(spec) for spec in self.specs]
        self.image_column, self.prompt_column = image_column, prompt_column
        self.with_info = with_info

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [self._decode(bytes(data)) for data in batch[self.image_column]]
        prompts = [str(p) for p in batch[self.prompt_column]]
        for spec, scorer in zip(self.specs, self.scorers):
            batch[spec.column] = np.asarray(scorer.score(images, prompts), dtype=np.float64)
            info = getattr(scorer, "info", None) if self.with_info else None
            if info:
                batch[info_column(spec.column)] = np.asarray(
                    [json.dumps(info, sort_keys=True)] * len(prompts), dtype=object)
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
    with_info: bool = False,
):
    """Add one metric column per spec to a dataset of (PNG bytes, prompt) rows.

    Args:
        ds: a `ray.data.Dataset` with `image_column` (encoded image bytes) and `prompt_column`.
        scorer_spec: one spec or several (each gets its own column; images are decoded once).
        actors: size of the actor pool; each actor holds its own copy of the models.
        num_gpus_per_actor, num_cpus_per_actor: resources each actor reserves.
        batch_size: rows per scorer call.
        with_info: also add `info_column(column)` for scorers that describe themselves (JSON of
            their `info`, e.g. BLIP-VQA's noun-phrase chunker), read back with `merged_info`.

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
            specs=specs, image_column=image_column, prompt_column=prompt_column,
            with_info=with_info,
        ),
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus_per_actor,
        num_cpus=num_cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
    )
