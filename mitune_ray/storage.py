"""Where a run lives: a local folder or `s3://bucket/prefix`, through one small API.

All access goes through pyarrow's filesystems (the same ones Ray Data and Ray Train use), with the
standard AWS credential chain and an endpoint override for S3-compatible stores. Writes are atomic:
a local file is written beside its target and renamed; an S3 object appears whole with its PUT.
Transient S3 failures are retried with backoff for up to `RETRY_WINDOW_S`; after that the error
names the URI (never a credential) and what to check.

Example:
    >>> store = Store("/tmp/run")
    >>> store.write_json("manifest.json", {"rounds": 1})
    >>> store.read_json("manifest.json")
    {'rounds': 1}
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow.fs as pafs

from mitune_ray.errors import MituneError

# How long an unreachable store is retried before the run stops ($MITUNE_STORAGE_RETRY_S).
RETRY_WINDOW_S = float(os.environ.get("MITUNE_STORAGE_RETRY_S", "60"))
_T = TypeVar("_T")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _kind(message: str) -> str | None:
    """Errors that retrying cannot fix: a missing bucket or refused credentials."""
    flat = message.replace("_", "").lower()
    if "nosuchbucket" in flat:
        return "bucket"
    if any(s in flat for s in ("signaturedoesnotmatch", "invalidaccesskeyid", "accessdenied",
                               "http status 403", "forbidden")):
        return "denied"
    return None


class Store:
    """A storage root; every path argument is relative to it (posix separators)."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None, region: str | None = None,
                 retry_window_s: float = RETRY_WINDOW_S):
        if not uri:
            raise MituneError("an empty storage URI was given; use a local folder or s3://bucket/prefix")
        self.uri = uri.rstrip("/") if uri != "/" else uri
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.retry_window_s = retry_window_s
        self._fs: pafs.FileSystem | None = None
        if is_s3(self.uri):
            self.root = self.uri[len("s3://"):]
            if not self.root or self.root.startswith("/"):
                raise MituneError(f"storage URI {uri!r} names no bucket; write s3://bucket/prefix")
        else:
            self.root = os.path.abspath(self.uri)

    # Ray ships stores to actors and workers: send the settings, not the live filesystem.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fs"} | {"_fs": None}

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    @property
    def filesystem(self) -> pafs.FileSystem:
        if self._fs is None:
            if is_s3(self.uri):
                endpoint = self.endpoint_url
                scheme = None
                if endpoint and "://" in endpoint:
                    scheme, endpoint = endpoint.split("://", 1)
                self._fs = pafs.S3FileSystem(
                    endpoint_override=endpoint, scheme=scheme, region=self.region or "us-east-1",
                    retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5),
                    connect_timeout=5, request_timeout=30,
                )
            else:
                self._fs = pafs.LocalFileSystem()
        return self._fs

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (for pyarrow / Ray Data with `filesystem`)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def child_uri(self, rel: str) -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def child(self, rel: str) -> Store:
        return Store(self.child_uri(rel), endpoint_url=self.endpoint_url, region=self.region,
                     retry_window_s=self.retry_window_s)

    def _retry(self, what: str, rel: str, fn: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + self.retry_window_s
        delay = 0.5
        while True:
            try:
                return fn()
            except FileNotFoundError:
                raise
            except OSError as exc:
                message = str(exc)
                if _kind(message) is not None or time.monotonic() + delay > deadline:
                    raise MituneError(self._explain(what, rel, message)) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _explain(self, what: str, rel: str, message: str) -> str:
        target = self.child_uri(rel)
        kind = _kind(message)
        if kind == "bucket":
            return f"cannot {what} {target}: the bucket does not exist; create it or fix the URI"
        if kind == "denied":
            return (f"cannot {what} {target}: access denied; check the AWS credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or profile) and the bucket policy")
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        first = message.strip().splitlines()[0][:200] if message.strip() else "I/O error"
        return (f"cannot {what} {target}: storage{where} unreachable for "
                f"{self.retry_window_s:.0f}s ({first}); check the store and rerun to resume")

    def exists(self, rel: str) -> bool:
        info = self._retry("stat", rel, lambda: self.filesystem.get_file_info(self.path(rel)))
        return info.type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        def read():
            with self.filesystem.open_input_stream(self.path(rel)) as f:
                return f.read()
        try:
            return self._retry("read", rel, read)
        except FileNotFoundError:
            raise MituneError(f"{self.child_uri(rel)} does not exist") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: readers see the old content or the new, never a part."""
        fs, target = self.filesystem, self.path(rel)
        if is_s3(self.uri):
            def put():
                with fs.open_output_stream(target) as f:
                    f.write(data)
            self._retry("write", rel, put)
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel).decode("utf-8"))

    def write_json(self, rel: str, value: Any) -> None:
        self.write_bytes(rel, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))

    def list(self, rel: str = "", *, suffix: str = "") -> list[str]:
        """Files under `rel` (recursive), as paths relative to the root, sorted."""
        base = self.path(rel)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._retry("list", rel, lambda: self.filesystem.get_file_info(selector))
        out = []
        for info in infos:
            if info.type != pafs.FileType.File or ".tmp-" in info.base_name:
                continue
            if info.path.endswith(suffix):
                out.append(posixpath.relpath(info.path, self.root))
        return sorted(out)

    def read_parquet(self, rel: str, **kwargs):
        """Every `.parquet` part under `rel` as one pyarrow table (kwargs: `columns`, `filters`),
        or None when there is none."""
        parts = self.list(rel, suffix=".parquet")
        return self.read_tables(parts, where=rel, **kwargs) if parts else None

    def read_tables(self, rels: list[str], *, where: str | None = None, **kwargs):
        """The `.parquet` files `rels` (paths under this store) as one pyarrow table (kwargs:
        `columns`, `filters`); `where` names them in errors (default: the first file)."""
        import pyarrow.parquet as pq

        return self._retry("read", where or rels[0], lambda: pq.read_table(
            [self.path(r) for r in rels], filesystem=self.filesystem, **kwargs))

    def delete(self, rel: str) -> None:
        """Remove a file or folder (missing is fine)."""
        fs, target = self.filesystem, self.path(rel)
        info = self._retry("stat", rel, lambda: fs.get_file_info(target))
        if info.type == pafs.FileType.Directory:
            self._retry("delete", rel, lambda: fs.delete_dir(target))
        elif info.type == pafs.FileType.File:
            self._retry("delete", rel, lambda: fs.delete_file(target))

    def download_dir(self, rel: str, local: str) -> None:
        """Copy the folder `rel` into the local folder `local`."""
        names = self.list(rel)
        if not names:
            raise MituneError(f"{self.child_uri(rel)} is empty or does not exist")
        for name in names:
            dest = os.path.join(local, posixpath.relpath(name, rel) if rel else name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(self.read_bytes(name))

    def upload_dir(self, local: str, rel: str) -> None:
        """Copy the local folder `local` to `rel` (each file written atomically)."""
        for dirpath, _, files in os.walk(local):
            for name in sorted(files):
                src = os.path.join(dirpath, name)
                dest = posixpath.join(rel, os.path.relpath(src, local).replace(os.sep, "/"))
                with open(src, "rb") as f:
                    self.write_bytes(dest, f.read())
