"""Scoring-only mode: MI of existing (image, prompt) pairs by the re-noising estimator, on Ray Data.

Inputs: a parquet file/folder with `prompt` and `image` (or `png`) bytes columns, or an image
folder with `metadata.jsonl` lines `{"file_name": ..., "prompt": ...}` (Hugging Face's imagefolder
layout; `text` is accepted for `prompt`). Every image of a prompt is re-noised with the same draws
(seeded by the prompt id), so scores of one prompt's images are directly comparable.

Example:
    $ mitune score --images ./generated --out ./scores model.path=/models/sd21-base
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from mitune_ray.config import Config
from mitune_ray.errors import MituneError
from mitune_ray.models import ModelSpec, load_model
from mitune_ray.prompts import normalize_prompt, prompt_id
from mitune_ray.storage import Store

SCORE_SCHEMA = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()),
                          ("source", pa.string()), ("mi", pa.float64()),
                          ("mi_stderr", pa.float64())])


class PairScorer:
    """One loaded model that scores (image, prompt) pairs by re-noising MI: the scoring stage's
    per-batch work, also usable in one process (`mitune_ray.api.score_pairs`).

    Images are resized to the model's resolution and VAE-encoded; every image of one prompt is
    re-noised with the same draws, seeded by (`generate.seed`, the prompt's id), so a pair's
    score does not depend on which other pairs share its batch (up to float rounding).

    Example:
        >>> cfg = load_config(None, ["mi.renoise_draws=4"])  # doctest: +SKIP
        >>> scorer = PairScorer(ModelSpec("tiny:sd"), cfg)  # doctest: +SKIP
        >>> scorer.score([image], ["a red cube"])  # doctest: +SKIP
        (array([0.37...]), array([0.05...]))
    """

    def __init__(self, model: ModelSpec, cfg: Config, *, device=None):
        from mitune_ray.sampling import CandidateSampler

        pipe, fam, device, dtype = load_model(model, device=device)
        self.pipe, self.fam = pipe, fam
        gen = cfg.generate.model_copy(update={"select_by": "mi"})
        self.sampler = CandidateSampler(pipe, fam, gen, cfg.mi, device=device,
                                        dtype=dtype, resolution=model.resolution)
        self.seed = cfg.generate.seed

    def score(self, images: Sequence, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """MI and its standard error (over the re-noising draws) of each `PIL.Image` for its
        prompt, in input order (float64 arrays). Prompts are normalised as corpora are."""
        import torch
        from PIL import Image

        from mitune_ray.families import encode_images, encode_prompts
        from mitune_ray.sampling import derive_seed

        if len(images) != len(prompts):
            raise MituneError(f"got {len(images)} images for {len(prompts)} prompts; pass one "
                              "prompt per image")
        size = self.sampler.height
        mi_out, se_out = np.zeros(len(images)), np.zeros(len(images))
        by_prompt: dict[str, list[int]] = {}
        for i, text in enumerate(prompts):
            by_prompt.setdefault(normalize_prompt(text), []).append(i)
        for text, idx in by_prompt.items():
            rgb = [np.array(images[i].convert("RGB").resize((size, size), Image.BICUBIC))
                   for i in idx]  # (size, size, 3) uint8 each
            pixels = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255
            z0 = encode_images(self.pipe, pixels.to(self.sampler.device)).float()
            cond = encode_prompts(self.pipe, self.fam, [text], self.sampler.device)
            mi, se = self.sampler.score_latents(
                z0, cond.rows(torch.zeros(len(idx), dtype=torch.long)),
                draw_seed=derive_seed("score", self.seed, prompt_id(text)))
            mi_out[idx], se_out[idx] = mi.double().cpu().numpy(), se.double().cpu().numpy()
        return mi_out, se_out


class ScoreUDF:
    """Ray Data actor: a `PairScorer` over batches of (PNG bytes, prompt, source) rows."""

    def __init__(self, model: ModelSpec, cfg: Config):
        self.scorer = PairScorer(model, cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mitune_ray.imaging import decode_png

        rows = batch.to_pylist()
        mi, se = self.scorer.score([decode_png(r["image"]) for r in rows],
                                   [r["prompt"] for r in rows])
        out = [{"prompt_id": prompt_id(r["prompt"]), "prompt": r["prompt"], "source": r["source"],
                "mi": float(m), "mi_stderr": float(e)} for r, m, e in zip(rows, mi, se)]
        return pa.Table.from_pylist(out, schema=SCORE_SCHEMA)


def _folder_items(folder: str) -> list[dict]:
    meta = os.path.join(folder, "metadata.jsonl")
    if not os.path.isfile(meta):
        raise MituneError(f"image folder {folder} has no metadata.jsonl; add lines "
                          '{"file_name": "x.png", "prompt": "..."} or pass a parquet file')
    items = []
    with open(meta, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise MituneError(f"{meta} line {n} is not JSON; fix that line") from None
            name, text = rec.get("file_name"), rec.get("prompt", rec.get("text"))
            if not isinstance(name, str) or not isinstance(text, str):
                raise MituneError(f"{meta} line {n} needs string file_name and prompt fields")
            path = os.path.normpath(os.path.join(folder, name))
            if not path.startswith(os.path.normpath(folder) + os.sep) or not os.path.isfile(path):
                raise MituneError(f"{meta} line {n}: image {name!r} is not a file inside {folder}")
            with open(path, "rb") as img:
                items.append({"prompt": normalize_prompt(text), "image": img.read(), "source": name})
    if not items:
        raise MituneError(f"{meta} lists no images; nothing to score")
    return items


def _parquet_rows(t: pa.Table, image: str, source: str) -> pa.Table:
    return pa.table({"prompt": [normalize_prompt(p or "") for p in t.column("prompt").to_pylist()],
                     "image": t.column(image),
                     "source": [str(v) for v in t.column(source).to_pylist()]})


@dataclass(frozen=True)
class ScoreSummary:
    pairs: int
    seconds: float
    mi_mean: float
    output: str

    def line(self) -> str:
        return (f"scored {self.pairs} (image, prompt) pairs in {self.seconds:.1f}s, "
                f"MI mean {self.mi_mean:.4g}; written to {self.output}")


def score_images(cfg: Config, images: str, out: str, *, log=print) -> ScoreSummary:
    """Score every (image, prompt) pair of `images` and write one parquet row per pair to `out`."""
    import ray
    import pyarrow.parquet as pq

    from mitune_ray.records import to_parquet_bytes
    from mitune_ray.runtime import ensure_ray, gpus_per_actor

    if os.path.isdir(images) and os.path.isfile(os.path.join(images, "metadata.jsonl")):
        items = _folder_items(images)  # validated before Ray starts
        ensure_ray(cfg.ray)
        ds = ray.data.from_items(items)
    else:
        store = Store(images, endpoint_url=cfg.storage.endpoint_url)
        try:
            schema = pq.read_schema(store.filesystem.open_input_file(store.path()))
        except (OSError, pa.ArrowInvalid):
            raise MituneError(f"--images {images} is neither an image folder with metadata.jsonl "
                              "nor a readable parquet file") from None
        column = "image" if "image" in schema.names else "png" if "png" in schema.names else None
        if "prompt" not in schema.names or column is None:
            raise MituneError(f"{images} needs a 'prompt' and an 'image' (or 'png') column; it has "
                              f"{', '.join(schema.names)}")
        name = next((c for c in ("file_name", "image_name", "id") if c in schema.names), None)
        ensure_ray(cfg.ray)
        ds = ray.data.read_parquet(store.path(), filesystem=store.filesystem,
                                   columns=["prompt", column] + ([name] if name else []),
                                   include_paths=name is None)
        ds = ds.map_batches(_parquet_rows, fn_kwargs={"image": column, "source": name or "path"},
                            batch_format="pyarrow")
    gpus = gpus_per_actor(cfg.generate.gpus_per_actor)
    model = ModelSpec(cfg.model.path, cfg.model.family, cfg.model.dtype, cfg.model.resolution,
                      endpoint_url=cfg.storage.endpoint_url)
    ds = ds.repartition(max(1, 2 * cfg.generate.actors)).map_batches(
        ScoreUDF, fn_constructor_kwargs={"model": model, "cfg": cfg}, batch_format="pyarrow",
        batch_size=cfg.generate.max_batch, num_gpus=gpus, num_cpus=cfg.generate.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=cfg.generate.actors))
    start = time.perf_counter()
    table = pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))
    seconds = time.perf_counter() - start
    dest = Store(out, endpoint_url=cfg.storage.endpoint_url)
    dest.write_bytes("scores.parquet", to_parquet_bytes(table))
    mi = np.asarray(table.column("mi").to_pylist(), dtype=float)
    summary = ScoreSummary(table.num_rows, seconds, float(mi.mean()) if len(mi) else float("nan"),
                           dest.child_uri("scores.parquet"))
    log(summary.line())
    return summary
