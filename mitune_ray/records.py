"""The selected set on disk: one parquet row per kept candidate (pure: pyarrow + safetensors).

Tensors travel as one safetensors blob per row (`tensors` column: `latent`, `embeds`, and
`pooled` where the family has it), so a shard is self-describing, loads without Ray, and never
holds a pickle. Shards are named by a hash of the prompt ids they hold, so a rerun of the same
work writes the same name, and a shard's existence means all k rows of each of its prompts are
there (it is written whole, atomically).
"""

from __future__ import annotations

import hashlib
import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mitune_ray.errors import MituneError

SELECTED_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("round", pa.int32()),
    ("candidate", pa.int32()),
    ("seed", pa.int64()),
    ("rank", pa.int32()),
    ("mi", pa.float64()),
    ("mi_stderr", pa.float64()),
    ("family", pa.string()),
    ("tensors", pa.binary()),
    ("png", pa.binary()),
])

SCORES_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("round", pa.int32()),
    ("mi", pa.list_(pa.float64())),  # every candidate's MI by index (NaN: pruned early)
    ("mi_stderr", pa.list_(pa.float64())),
    ("selected", pa.list_(pa.int32())),
    # every candidate's correctness by `generate.pool_metric` (NaN: none, or pruned early)
    ("pool_metric", pa.list_(pa.float64())),
])

GALLERY_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("round", pa.int32()),
    ("candidate", pa.int32()),
    ("mi", pa.float64()),
    ("selected", pa.bool_()),
    ("png", pa.binary()),
])

TENSOR_KEYS = ("latent", "embeds", "pooled")


def shard_name(prompt_ids: list[str]) -> str:
    """A deterministic file name for the work on these prompts (order-independent)."""
    digest = hashlib.sha256("\n".join(sorted(prompt_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def pack_tensors(latent: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor | None) -> bytes:
    tensors = {"latent": latent.contiguous().float().cpu(), "embeds": embeds.contiguous().float().cpu()}
    if pooled is not None:
        tensors["pooled"] = pooled.contiguous().float().cpu()
    return st_save(tensors)


def unpack_tensors(blob: bytes, *, where: str = "a selected-set row") -> dict[str, torch.Tensor]:
    try:
        tensors = st_load(blob)
    except Exception:  # noqa: BLE001 - any parse failure means a damaged row
        raise MituneError(f"{where} holds no valid safetensors blob; regenerate that round") from None
    if "latent" not in tensors or "embeds" not in tensors:
        raise MituneError(f"{where} lacks latent/embeds tensors; regenerate that round")
    return tensors


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def selected_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SELECTED_SCHEMA)


def scores_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)


def gallery_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=GALLERY_SCHEMA)


def finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else float("nan")
