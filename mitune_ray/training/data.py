"""The selected set as training data: checked on the driver, streamed to workers by Ray Data.

`selected` is a list of shard URIs, each a local path or `s3://bucket/key` (all of one kind; S3
settings from `storage.*` and the AWS chain), as the generation stage writes them, e.g.
`[store.child_uri(p) for p in store.list("round-1/selected", suffix=".parquet")]`.

Before any training starts, `open_selected` reads every shard's parquet footer (columns, rows)
and decodes the first row, so an empty set, a malformed shard or latents of another model are
one-line errors; rows past the first are checked as they are decoded, on the workers.

`make_dataset` reads and decodes the set once, into Ray's object store, when the decoded arrays
fit `CACHE_FRACTION` of it (Ray Train's advice for data that fits): every pass then iterates the
cached blocks (a set up to `DRIVER_DECODE_BYTES` is read and decoded by the driver itself, which
is faster than Ray Data's read tasks at that size). A larger set streams from its shards, once
per pass.
"""

from __future__ import annotations

import json
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mitune_ray.errors import MituneError
from mitune_ray.families import Family
from mitune_ray.records import unpack_tensors
from mitune_ray.storage import Store, is_s3

REQUIRED_COLUMNS = ("prompt_id", "family", "tensors")
FOOTER_READERS = 16  # concurrent footer reads: many small S3 shards are latency-bound
CACHE_FRACTION = 0.25  # of the cluster's object store: a decoded selected set up to this is cached
DRIVER_DECODE_BYTES = 64 * 2**20  # a decoded selected set up to this is decoded by the driver
DECODE_BATCH = 64  # rows decoded at a time, one block of the cached set


@dataclass(frozen=True)
class SelectedSet:
    uris: tuple[str, ...]
    store: Store  # the filesystem the shards live on (a bucket, or the local root)
    paths: tuple[str, ...]  # the shards' filesystem paths, for pyarrow / Ray Data
    rows: int
    shapes: dict[str, tuple[int, ...]]  # per-row tensor shapes: latent, embeds(, pooled)


@dataclass(frozen=True)
class ModelShapes:
    """What a model folder's configs say its training rows must look like."""

    latent: tuple[int, int, int]  # (channels, h, w)
    embed_dim: int
    pooled_dim: int | None
    vae_factor: int  # pixels per latent cell (SD-XL's time ids are in pixels)


def _store_for(uris: list[str], endpoint_url: str | None, region: str | None) -> Store:
    kinds = {is_s3(u) for u in uris}
    if len(kinds) > 1:
        raise MituneError(f"selected shards mix s3:// and local paths ({uris[0]!r}, ...); "
                          "keep a run's selected set in one store")
    if kinds == {True}:
        buckets = {u[len("s3://"):].split("/", 1)[0] for u in uris}
        if len(buckets) > 1:
            raise MituneError(f"selected shards span buckets {sorted(buckets)}; keep them in one")
        return Store(f"s3://{buckets.pop()}", endpoint_url=endpoint_url, region=region)
    return Store("/")


def _path(uri: str) -> str:
    return uri[len("s3://"):] if is_s3(uri) else str(Path(uri).resolve())


def open_selected(uris: list[str], fam: Family, *, endpoint_url: str | None = None,
                  region: str | None = None) -> SelectedSet:
    """Check the shards (existence, columns, family, rows, first row) and describe them."""
    if not uris:
        raise MituneError("the selected set is empty: no shards were given to train on; "
                          "run the generation stage first (or check the round's selected/ folder)")
    uris = list(uris)
    store = _store_for(uris, endpoint_url, region)
    fs = store.filesystem
    paths = [_path(u) for u in uris]
    with ThreadPoolExecutor(FOOTER_READERS) as pool:
        footers = list(pool.map(lambda up: _footer(fs, *up), zip(uris, paths)))
    rows, shapes = 0, None
    for uri, path, meta in zip(uris, paths, footers):
        names = set(meta.schema.names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise MituneError(f"selected shard {uri} lacks column(s) {', '.join(missing)}; it is "
                              "not a selected-set shard (records.SELECTED_SCHEMA): regenerate it")
        rows += meta.num_rows
        if shapes is None and meta.num_rows:
            shapes = _first_row_shapes(store, uri, path, fam)
    if rows == 0 or shapes is None:
        raise MituneError(f"the selected set has no rows ({len(uris)} shard(s), first {uris[0]}); "
                          "generation kept nothing: check its output before training")
    return SelectedSet(tuple(uris), store, tuple(paths), rows, shapes)


def _footer(fs: pafs.FileSystem, uri: str, path: str) -> pq.FileMetaData:
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise MituneError(f"selected shard {uri} does not exist; regenerate that round")
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        if _unreadable_store(str(exc)):
            raise MituneError(f"cannot read selected shard {uri}: {str(exc).splitlines()[0]}; "
                              "check the store and its credentials") from None
        raise MituneError(f"selected shard {uri} is not a parquet file (damaged or "
                          "truncated); regenerate that round") from None


def _unreadable_store(message: str) -> bool:
    flat = message.lower()
    return any(s in flat for s in ("access denied", "accessdenied", "403", "nosuchbucket",
                                   "connection", "timed out", "curl"))


def _first_row_shapes(store: Store, uri: str, path: str, fam: Family) -> dict[str, tuple[int, ...]]:
    with store.filesystem.open_input_file(path) as f:
        table = pq.ParquetFile(f).read_row_group(0, columns=["family", "tensors"]).slice(0, 1)
    family = table.column("family")[0].as_py()
    if family != fam.name:
        raise MituneError(f"selected shard {uri} was generated by a {family} model, but the "
                          f"model being tuned is {fam.name}; train on this model's selected set")
    tensors = unpack_tensors(table.column("tensors")[0].as_py(), where=f"the first row of {uri}")
    if fam.pooled and "pooled" not in tensors:
        raise MituneError(f"the first row of {uri} has no pooled embeddings, which {fam.name} "
                          "needs; regenerate that round with this model")
    return {k: tuple(v.shape) for k, v in tensors.items() if k in ("latent", "embeds", "pooled")}


def model_shapes(model_folder: str | Path, fam: Family, resolution: int | None) -> ModelShapes:
    """The row shapes a model folder trains on, from its configs (no weights are read)."""
    folder = Path(model_folder)
    net = json.loads((folder / fam.denoiser / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    side = resolution // factor if resolution else net["sample_size"]
    if fam.denoiser == "transformer":
        return ModelShapes((net["in_channels"], side, side), net["joint_attention_dim"],
                           net["pooled_projection_dim"], factor)
    cross = net["cross_attention_dim"]
    cross = cross if isinstance(cross, int) else cross[0]
    pooled = None
    if fam.time_ids:  # SD-XL: the add embedding takes pooled text + 6 time ids
        pooled = net["projection_class_embeddings_input_dim"] - 6 * net["addition_time_embed_dim"]
    return ModelShapes((net["in_channels"], side, side), cross, pooled, factor)


def check_fits_model(sel: SelectedSet, want: ModelShapes, fam: Family, model: str,
                     resolution: int | None) -> None:
    """The selected rows' shapes against the model's: one line naming both if they differ."""
    latent = sel.shapes["latent"]
    if tuple(latent) != want.latent:
        setting = f"model.resolution={resolution}" if resolution else "the model's default resolution"
        raise MituneError(f"selected set {sel.uris[0]} holds latents of shape {tuple(latent)}, but "
                          f"the {fam.name} model {model} at {setting} takes {want.latent}; "
                          "train on a selected set generated by this model at this resolution")
    if sel.shapes["embeds"][-1] != want.embed_dim:
        raise MituneError(f"selected set {sel.uris[0]} holds text embeddings of width "
                          f"{sel.shapes['embeds'][-1]}, but the model {model} takes "
                          f"{want.embed_dim}; train on a selected set generated by this model")
    if want.pooled_dim is not None and sel.shapes.get("pooled", (None,))[-1] != want.pooled_dim:
        raise MituneError(f"selected set {sel.uris[0]} holds pooled embeddings of shape "
                          f"{sel.shapes.get('pooled')}, but the model {model} takes width "
                          f"{want.pooled_dim}; train on a selected set generated by this model")


def fixed_batch(sel: SelectedSet, size: int) -> dict[str, np.ndarray]:
    """The first `size` rows (from the first shards): the batch whose loss the result reports."""
    rows: list[bytes] = []
    for uri, path in zip(sel.uris, sel.paths):
        with sel.store.filesystem.open_input_file(path) as f:
            column = pq.read_table(f, columns=["tensors"]).column("tensors")
        rows += [column[i].as_py() for i in range(min(len(column), size - len(rows)))]
        if len(rows) >= size:
            break
    return decode_rows(rows, where=f"selected set {sel.uris[0]}")


def decode_rows(blobs: list[bytes], *, where: str, ids: list[str] | None = None
                ) -> dict[str, np.ndarray]:
    """Safetensors blobs -> stacked float32 arrays `latent`, `embeds` (and `pooled`)."""
    names = [f"the row of prompt {i!r} in {where}" for i in ids] if ids else [f"a row of {where}"] * len(blobs)
    decoded = [unpack_tensors(b, where=name) for b, name in zip(blobs, names)]
    out = {}
    for key in ("latent", "embeds", "pooled"):
        if key not in decoded[0]:
            continue
        shapes = {tuple(d[key].shape) for d in decoded if key in d}
        if len(shapes) != 1 or any(key not in d for d in decoded):
            raise MituneError(f"rows of {where} hold {key} tensors of different shapes "
                              f"{sorted(shapes)}; a selected set must come from one model and size")
        out[key] = np.stack([d[key].float().numpy() for d in decoded])
    return out


def _decode_batch(batch: pa.Table) -> dict[str, np.ndarray]:
    return decode_rows(batch.column("tensors").to_pylist(), where="the selected set",
                       ids=batch.column("prompt_id").to_pylist())


def decoded_bytes(sel: SelectedSet) -> int:
    """The selected set's size once decoded (float32 latents and embeddings)."""
    return sel.rows * sum(4 * math.prod(shape) for shape in sel.shapes.values())


def fits_cache(sel: SelectedSet, object_store_bytes: float) -> bool:
    """Whether `make_dataset` reads and decodes the set once and keeps it in the object store.

        >>> sel = SelectedSet((), Store("/"), (), 1000, {"latent": (4, 64, 64), "embeds": (77, 1024)})
        >>> decoded_bytes(sel), fits_cache(sel, 2e9), fits_cache(sel, 1e9)
        (380928000, True, False)
    """
    return decoded_bytes(sel) <= CACHE_FRACTION * object_store_bytes


def _read(sel: SelectedSet):
    import ray.data

    return ray.data.read_parquet(list(sel.paths), filesystem=sel.store.filesystem,
                                 columns=["prompt_id", "tensors"])


def make_dataset(sel: SelectedSet):
    """The selected set as a Ray Dataset of decoded, fixed-shape float32 arrays: cached in the
    object store when it fits (`fits_cache`), else streamed from the shards at every pass."""
    import ray
    import ray.data

    from ray.data.block import BlockAccessor

    # Shards are a handful of rows each: shuffling the blocks' order gives each pass a new order
    # at no cost; a local shuffle buffer in the loop mixes rows across neighbouring blocks.
    if decoded_bytes(sel) <= DRIVER_DECODE_BYTES:
        # A small set (the demo, tests, a few hundred rows): read and decoded here. Ray Data's
        # read tasks start worker processes that cost more than such a read (17 s for 7 rows on
        # 2 cores), and the set is cached in the object store all the same.
        table = sel.store.read_tables([posixpath.relpath(p, sel.store.root) for p in sel.paths],
                                      columns=["prompt_id", "tensors"])
        blocks = [BlockAccessor.batch_to_block(_decode_batch(table.slice(start, DECODE_BATCH)))
                  for start in range(0, table.num_rows, DECODE_BATCH)]
        ds = ray.data.from_blocks(blocks).randomize_block_order()
    elif fits_cache(sel, ray.cluster_resources().get("object_store_memory", 0)):
        # Read and decoded once, here: re-reading at every pass made training wait on it most of
        # the time when passes are short (a few steps), and its samples/s swung 50-fold.
        ds = _read(sel).map_batches(_decode_batch, batch_format="pyarrow",
                                    batch_size=DECODE_BATCH).materialize()
        ds = ds.randomize_block_order()
    else:
        ds = _read(sel).randomize_block_order().map_batches(
            _decode_batch, batch_format="pyarrow", batch_size=DECODE_BATCH)
    # Every pass of every worker's shard would log Ray Data's progress every few seconds
    # (thousands of lines in a driver's log): the training shows its own progress.
    ds.context.enable_progress_bars = False
    return ds
