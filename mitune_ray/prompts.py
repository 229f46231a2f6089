"""Prompt corpora: read T2I-CompBench / plain `.txt`, `.jsonl`, PartiPrompts-style `.tsv` and
DiffusionDB `.parquet` prompt lists (local, `s3://`, or shipped in the package as
`bundled:CORPUS/NAME`), clean them, and write them as fixed-size parquet shards with a report.

The bundled lists live in `mitune_ray/assets/prompts/CORPUS/` beside their licences:
`bundled:t2i-compbench/color_train` is that folder's `t2i-compbench/color_train.txt`;
`bundled_prompt_names()` (or `mitune prompts list`) names them all.

Every source is streamed (text line by line in binary, parquet in batches of its `prompt` column),
so a 14M-row DiffusionDB metadata file never sits in memory; only the 64-bit ids of the kept
prompts do, for de-duplication. A prompt is known by `prompt_id` (a hash of its cleaned text),
which also decides its train/validation split, so a validation prompt is never tuned on whichever
corpus it appears in. Prompt text is data only: it never becomes part of a path.

Example:
    >>> import tempfile
    >>> from mitune_ray.config import PromptsSection
    >>> out = Store(tempfile.mkdtemp())
    >>> report = prepare_corpus(["bundled:t2i-compbench/color_train"], out,
    ...                         settings=PromptsSection(val_fraction=0.05))
    >>> report.summary()
    'read 700, empty 0, duplicate 21, undecodable skipped 0, truncated 0, kept 679 (train 642, val 37)'
    >>> read_prompt_shard(out, report.shards[0])[0]
    ('821c7df8aa61a470', 'a green bench and a red car', 'train')
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mitune_ray.config import PromptsSection
from mitune_ray.errors import MituneError
from mitune_ray.storage import Store, is_s3

PARQUET_BATCH_ROWS = 8192  # prompts per streamed parquet batch: bounded memory, few Python calls
TEXT_BUFFER_BYTES = 1 << 20  # one S3 GET per MiB of text rather than per line
SUFFIXES = (".txt", ".jsonl", ".parquet", ".tsv")
BUNDLED_PREFIX = "bundled:"  # "bundled:t2i-compbench/color_train" -> a list shipped in the package
BUNDLED_PROMPTS = Path(__file__).resolve().parent / "assets" / "prompts"
SHARD_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("prompt", pa.string()), ("split", pa.string()),
    ("truncated", pa.bool_()), ("source", pa.string()), ("line", pa.int64()),
])
_UTF8_BOM = b"\xef\xbb\xbf"  # Windows editors (the source of CRLF files) often prepend it

TokenLengths = Callable[[list[str]], list[int]]


@dataclass(frozen=True)
class BadLine:
    """A line or row that is not text (not UTF-8, or holding a NUL byte), and why."""

    reason: str


Row = tuple[str, int, str | BadLine]  # (source, line number or row index, text)


def normalize_prompt(text: str) -> str:
    """Collapse every run of whitespace (tabs, newlines, CR) to one space and strip the ends.

    Example:
        >>> normalize_prompt("  a red\\tcar\\r\\n on  grass ")
        'a red car on grass'
    """
    return " ".join(text.split())


def prompt_id(text: str) -> str:
    """The stable id of a cleaned prompt: the first 16 hex digits of its sha256.

    Example:
        >>> prompt_id("a photo of a cat")
        'ba792b3ff0f684da'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_of(pid: str, val_fraction: float) -> str:
    """The split of a prompt id: "val" for the lowest `val_fraction` of ids, else "train".

    Example:
        >>> split_of("0000000000000000", 0.05), split_of("ffffffffffffffff", 0.05)
        ('val', 'train')
    """
    # int < float compares exactly in Python; dividing the id by 2**64 would round near the edge.
    return "val" if int(pid, 16) < val_fraction * 2**64 else "train"


def _where(source: str, number: int) -> str:
    return f"{source} row {number}" if source.endswith(".parquet") else f"{source} line {number}"


def _bundled_files() -> dict[str, Path]:
    """"CORPUS/NAME" -> the packaged prompt list (licences and READMEs are not prompt lists)."""
    return {f"{path.parent.name}/{path.stem}": path for path in sorted(BUNDLED_PROMPTS.glob("*/*"))
            if path.suffix in SUFFIXES and path.is_file() and not path.name.startswith("LICENSE")}


def bundled_prompt_names() -> list[str]:
    """Every prompt list shipped in the package, as the source that reads it.

    Example:
        >>> [n for n in bundled_prompt_names() if n.startswith("bundled:t2i-compbench/color")][:2]
        ['bundled:t2i-compbench/color', 'bundled:t2i-compbench/color_train']
    """
    return [BUNDLED_PREFIX + name for name in _bundled_files()]


def resolve_bundled(source: str, origin: str = "prompts.train / prompts.eval") -> Path:
    """The packaged file of a `bundled:CORPUS/NAME` source; `origin` (the config key it came
    from) goes into the error. Names are looked up, never joined into a path.

    Example:
        >>> resolve_bundled("bundled:t2i-compbench/color_train").name
        'color_train.txt'
    """
    name = source[len(BUNDLED_PREFIX):]
    files = _bundled_files()
    if name in files:
        return files[name]
    if not files:
        raise MituneError(f"prompt source {source!r} ({origin}): no bundled prompt lists in "
                          f"{BUNDLED_PROMPTS}; reinstall mitune_ray")
    close = difflib.get_close_matches(name, list(files), n=1)
    hint = f"did you mean {BUNDLED_PREFIX}{close[0]}? " if close else ""
    corpus = name.split("/", 1)[0]
    corpora = sorted({n.split("/", 1)[0] for n in files})
    if "/" in name and corpus in corpora:
        names = ", ".join(n.split("/", 1)[1] for n in files if n.startswith(corpus + "/"))
        where = f"{corpus} has {names}"
    else:
        where = f"write {BUNDLED_PREFIX}CORPUS/NAME with CORPUS one of {', '.join(corpora)}"
    raise MituneError(f"prompt source {source!r} ({origin}) names no bundled prompt list; {hint}"
                      f"{where} ('mitune prompts list' shows every name)")


def _locate(source: str, endpoint_url: str | None,
            origin: str = "prompts.train / prompts.eval") -> tuple[Store, str]:
    """A Store for the source's folder and the file's name in it; missing files fail here."""
    if source.startswith(BUNDLED_PREFIX):
        path = resolve_bundled(source, origin)
        return Store(str(path.parent)), path.name
    if not source.endswith(SUFFIXES):
        raise MituneError(f"prompt source {source!r} has an unsupported suffix; "
                          f"use one of {', '.join(SUFFIXES)} (T2I-CompBench lists are .txt), or "
                          f"{BUNDLED_PREFIX}CORPUS/NAME for a list shipped in the package")
    if is_s3(source):
        folder, _, name = source[len("s3://"):].rpartition("/")
        if not folder:
            raise MituneError(f"prompt source {source!r} names no object; write s3://bucket/key")
        store = Store("s3://" + folder, endpoint_url=endpoint_url)
    else:
        path = os.path.abspath(source)
        store, name = Store(os.path.dirname(path)), os.path.basename(path)
    if not store.exists(name):
        raise MituneError(f"prompt source {source!r} does not exist; "
                          f"fix the path in {origin} or create the file")
    return store, name


def _text_lines(store: Store, name: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the line end), split on b"\\n" only.

    Binary splitting keeps the numbers equal to an editor's even when a line is not UTF-8, and
    never splits on the Unicode separators (U+2028, U+0085) that `str.splitlines` would.
    """
    raw = store.filesystem.open_input_stream(store.path(name), compression=None)
    with io.BufferedReader(raw, buffer_size=TEXT_BUFFER_BYTES) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip(b"\n").rstrip(b"\r")
            yield number, line.removeprefix(_UTF8_BOM) if number == 1 else line


def _decode(line: bytes) -> str | BadLine:
    if b"\x00" in line:  # a NUL is valid UTF-8 but means a binary or corrupt file, not a prompt
        return BadLine(f"holds a NUL byte at column {line.index(0) + 1}")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(f"is not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})")


def _read_txt(source: str, store: Store, name: str) -> Iterator[Row]:
    for number, line in _text_lines(store, name):
        # T2I-CompBench-style lists may carry tab-separated extra fields: the prompt comes first.
        text = _decode(line)
        yield source, number, text.split("\t", 1)[0] if isinstance(text, str) else text


def _read_jsonl(source: str, store: Store, name: str) -> Iterator[Row]:
    for number, line in _text_lines(store, name):
        text = _decode(line)
        if isinstance(text, BadLine) or not text.strip():
            yield source, number, text
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MituneError(f"{source} line {number} is not JSON ({exc.msg}); "
                              'write one {"prompt": "..."} object per line') from None
        if not isinstance(record, dict) or "prompt" not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise MituneError(f"{source} line {number} has no 'prompt' key (it has {keys}); "
                              'write one {"prompt": "..."} object per line')
        prompt = record["prompt"]
        if prompt is not None and not isinstance(prompt, str):
            raise MituneError(f"{source} line {number}: 'prompt' is a {type(prompt).__name__}, "
                              "not a string; write the prompt as a JSON string")
        yield source, number, _check_text(prompt or "")


def _check_text(text: str) -> str | BadLine:
    """Text that came decoded (JSON escapes, parquet strings) must still be encodable and NUL-free."""
    if "\x00" in text:
        return BadLine(f"holds a NUL character at column {text.index(chr(0)) + 1}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON "\\ud800" escape
        return BadLine(f"holds an unpaired surrogate at column {exc.start + 1}")
    return text


def _read_tsv(source: str, store: Store, name: str) -> Iterator[Row]:
    """A tab-separated table with a header row (PartiPrompts.tsv): the prompt is the column named
    "Prompt" (any case). Fields are split on tabs only; quotes are part of the text."""
    lines = _text_lines(store, name)
    first = next(lines, None)
    if first is None:
        return  # an empty file: prepare_corpus reports that no prompts were read
    head = _decode(first[1])
    columns = [c.strip() for c in head.split("\t")] if isinstance(head, str) else []
    if "prompt" not in [c.lower() for c in columns]:
        raise MituneError(f"{source} line 1 names no 'Prompt' column (it has {columns}); start a "
                          ".tsv with a header row of tab-separated column names, one of them Prompt")
    column = [c.lower() for c in columns].index("prompt")
    for number, line in lines:
        text = _decode(line)
        if isinstance(text, BadLine):
            yield source, number, text
            continue
        fields = text.split("\t")
        yield source, number, fields[column] if column < len(fields) else ""


def _read_parquet(source: str, store: Store, name: str, batch_size: int) -> Iterator[Row]:
    with store.filesystem.open_input_file(store.path(name)) as f:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        if "prompt" not in schema.names:
            raise MituneError(f"{source} has no 'prompt' column (it has {schema.names}); "
                              "use DiffusionDB's metadata parquet or add a 'prompt' column")
        kind = schema.field("prompt").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise MituneError(f"{source} column 'prompt' holds {kind}, not text; "
                              "store the prompts as strings")
        row = 0
        for batch in pf.iter_batches(columns=["prompt"], batch_size=batch_size):
            # As bytes, so that a non-UTF-8 value is reported like a bad text line, not a crash.
            for value in batch.column(0).cast(pa.large_binary()).to_pylist():
                yield source, row, "" if value is None else _decode(value)
                row += 1


def read_prompts(source: str, *, endpoint_url: str | None = None,
                 batch_size: int = PARQUET_BATCH_ROWS) -> Iterator[Row]:
    """Stream the raw prompts of one source, by its file's suffix: `.txt`, `.jsonl`, `.tsv` (with
    a header row naming a Prompt column) or `.parquet`; `bundled:CORPUS/NAME` reads a list shipped
    in the package.

    Yields `(source, number, text)`: `number` is the 1-based line of a text file or the 0-based
    row of a parquet file; `text` is not yet normalised, or a `BadLine` for a line that is not
    text (the caller decides whether to stop or skip). Empty lines are yielded as "".

    Example:
        >>> next(read_prompts("color_val.txt"))  # doctest: +SKIP
        ('color_val.txt', 1, 'a green bench and a blue bowl')
        >>> next(read_prompts("bundled:t2i-compbench/color_val"))
        ('bundled:t2i-compbench/color_val', 1, 'a green bench and a blue bowl')
    """
    store, name = _locate(source, endpoint_url)
    if name.endswith(".parquet"):
        return _read_parquet(source, store, name, batch_size)
    if name.endswith(".jsonl"):
        return _read_jsonl(source, store, name)
    if name.endswith(".tsv"):
        return _read_tsv(source, store, name)
    return _read_txt(source, store, name)


@dataclass(frozen=True)
class CorpusReport:
    """What `prepare_corpus` read, dropped and kept (read = empty + duplicate + skipped + kept)."""

    read: int  # lines / rows read
    empty: int  # blank after normalisation
    duplicate: int  # a repeat of an earlier prompt after normalisation
    undecodable_skipped: int  # not UTF-8 or holding a NUL, skipped (on_undecodable="skip")
    truncated: int  # kept, but longer than max_tokens: the text encoder sees a prefix
    kept: int  # in the corpus written (after the max_prompts sample)
    train: int
    val: int
    shards: tuple[str, ...]  # relative to the output store, in order
    sources: tuple[str, ...]
    split_name: str | None = None  # every row's split when not split by id (e.g. "eval")
    sampled_from: int | None = None  # train prompts the max_prompts sample was drawn from

    def summary(self) -> str:
        splits = f"all {self.split_name}" if self.split_name else f"train {self.train}, val {self.val}"
        text = (f"read {self.read}, empty {self.empty}, duplicate {self.duplicate}, "
                f"undecodable skipped {self.undecodable_skipped}, truncated {self.truncated}, "
                f"kept {self.kept} ({splits})")
        if self.sampled_from is None:
            return text
        return text + f"; train prompts a uniform sample of {self.train} from {self.sampled_from}"


def _shard_bytes(rows: list[tuple[str, str, str, str, int]], token_lengths: TokenLengths | None,
                 max_tokens: int) -> tuple[bytes, int]:
    """One shard as parquet bytes (so the store can write it atomically) and its truncated count."""
    ids, prompts, splits, sources, lines = (list(c) for c in zip(*rows))
    if token_lengths is None:
        truncated = [False] * len(rows)
    else:
        lengths = list(token_lengths(prompts))
        if len(lengths) != len(prompts):
            raise ValueError(f"token_lengths returned {len(lengths)} lengths for {len(prompts)} prompts")
        truncated = [n > max_tokens for n in lengths]
    table = pa.table([ids, prompts, splits, truncated, sources, lines], schema=SHARD_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes(), sum(truncated)


def _kept_rows(sources: list[str], settings: PromptsSection, split_name: str | None,
               endpoint_url: str | None, counts: Counter) -> Iterator[tuple[str, str, str, str, int]]:
    """The clean, de-duplicated, split rows of all sources in order; tallies into `counts`."""
    seen: set[int] = set()  # 64-bit ids, not texts: ~60 bytes a prompt however long it is
    for source in sources:
        with closing(read_prompts(source, endpoint_url=endpoint_url)) as rows:
            for _, number, raw in rows:
                counts["read"] += 1
                if isinstance(raw, BadLine):
                    if settings.on_undecodable == "error":
                        raise MituneError(f"{_where(source, number)} {raw.reason}; fix or re-encode "
                                          "the file as UTF-8, or set prompts.on_undecodable=skip")
                    counts["undecodable_skipped"] += 1
                    continue
                text = normalize_prompt(raw)
                if not text:
                    counts["empty"] += 1
                    continue
                pid = prompt_id(text)
                if int(pid, 16) in seen:
                    counts["duplicate"] += 1
                    continue
                seen.add(int(pid, 16))
                yield pid, text, split_name or split_of(pid, settings.val_fraction), source, number


def sample_key(seed: int, pid: str) -> int:
    """The prompt's rank in the seeded uniform sample (`prompts.max_prompts`): smaller is kept."""
    return int.from_bytes(hashlib.blake2b(f"sample:{seed}:{pid}".encode(), digest_size=8).digest(),
                          "big")


def uniform_sample(rows: Iterator[tuple[str, str, str, str, int]], n: int,
                   seed: int) -> tuple[list[tuple[str, str, str, str, int]], int]:
    """A uniform sample of `n` train rows in one pass (bottom-n by `sample_key`), with the val rows
    under the same key threshold (the same share of the val split), in corpus order; and the
    number of train rows sampled from. Memory: the kept rows and the val rows seen.

    Example:
        >>> rows = [(f"{i:016x}", f"p{i}", "train", "s", i) for i in range(10)]
        >>> kept, seen = uniform_sample(iter(rows), 3, seed=0)
        >>> len(kept), seen, kept == sorted(kept, key=lambda r: r[4])
        (3, 10, True)
    """
    heap: list[tuple[int, int, tuple]] = []  # (-key, order, row): the n smallest keys
    val: list[tuple[int, int, tuple]] = []
    seen = 0
    for order, row in enumerate(rows):
        key = sample_key(seed, row[0])
        if row[2] != "train":
            val.append((key, order, row))
            continue
        seen += 1
        if len(heap) < n:
            heapq.heappush(heap, (-key, order, row))
        elif key < -heap[0][0]:
            heapq.heapreplace(heap, (-key, order, row))
    threshold = -heap[0][0] if len(heap) == n else None  # fewer than n: keep everything
    kept = [(order, row) for _, order, row in heap]
    kept += [(order, row) for key, order, row in val if threshold is None or key <= threshold]
    return [row for _, row in sorted(kept)], seen


def prepare_corpus(sources: list[str], out: Store, *, settings: PromptsSection,
                   split_name: str | None = None, endpoint_url: str | None = None,
                   token_lengths: TokenLengths | None = None, max_tokens: int = 77) -> CorpusReport:
    """Stream `sources` into `out/shards/shard-NNNNN.parquet` and `out/report.json`.

    Prompts are normalised, blank ones and repeats dropped (the first occurrence is kept, in
    corpus order), and each kept prompt is split into "train"/"val" by its id, or marked
    `split_name` for all rows (e.g. "eval": evaluation lists are not split). `max_prompts` keeps a
    seeded uniform sample of that many train prompts (and the val prompts under the same hash
    threshold), in corpus order, from one streaming pass over the whole corpus. Shards are written atomically and are byte-identical
    between runs on the same input; `report.json` is written last, so its presence marks a complete
    corpus. Stale shards of an earlier, larger run are removed.

    Args:
        sources: local paths or s3://bucket/key URIs of .txt, .jsonl, .tsv or .parquet prompt
            lists, or bundled:CORPUS/NAME for a list shipped in the package.
        out: where the corpus goes.
        settings: the `prompts` config section (val_fraction, max_prompts, on_undecodable,
            shard_size).
        split_name: mark every row with this split instead of splitting by id.
        endpoint_url: the S3-compatible endpoint for s3:// sources (storage.endpoint_url).
        token_lengths: maps a list of prompts to their token counts as the text encoder sees them,
            e.g. `lambda ps: [len(ids) for ids in tokenizer(ps).input_ids]`; None skips the count.
        max_tokens: the encoder's limit (CLIP: 77, start and end tokens included).

    Example:
        >>> report = prepare_corpus(["s3://corpora/diffusiondb/metadata.parquet"],
        ...                         Store("s3://runs/demo/corpus"),
        ...                         settings=PromptsSection(max_prompts=5000))  # doctest: +SKIP
        >>> report.train  # doctest: +SKIP
        5000
    """
    if not sources:
        raise MituneError("no prompt sources were given; list prompt files in prompts.train "
                          "(or prompts.eval for evaluation)")
    origin = f"prompts.{split_name}" if split_name else "prompts.train"  # for error messages
    for source in sources:  # every missing file is reported before any work is done
        _locate(source, endpoint_url, origin)
    counts: Counter = Counter()
    shards: list[str] = []
    rows: list[tuple[str, str, str, str, int]] = []

    def flush() -> None:
        rel = f"shards/shard-{len(shards):05d}.parquet"
        data, truncated = _shard_bytes(rows, token_lengths, max_tokens)
        out.write_bytes(rel, data)
        counts["truncated"] += truncated
        shards.append(rel)
        rows.clear()

    stream = _kept_rows(list(sources), settings, split_name, endpoint_url, counts)
    cap = settings.max_prompts if split_name is None else None  # eval lists are never capped here
    sampled_from = None
    if cap is not None:
        chosen, train_seen = uniform_sample(stream, cap, settings.sample_seed)
        sampled_from = train_seen if train_seen > cap else None
        stream = iter(chosen)
    for row in stream:
        rows.append(row)
        counts[row[2]] += 1
        counts["kept"] += 1
        if len(rows) == settings.shard_size:
            flush()
    if rows:
        flush()
    kept = counts["kept"]
    if kept == 0:
        raise MituneError(f"no prompts in {', '.join(sources)} (read {counts['read']}: "
                          f"{counts['empty']} empty, {counts['undecodable_skipped']} undecodable "
                          "skipped); point prompts.train / prompts.eval at files with prompt lines")
    for stale in sorted(set(out.list("shards", suffix=".parquet")) - set(shards)):
        out.delete(stale)
    report = CorpusReport(
        read=counts["read"], empty=counts["empty"], duplicate=counts["duplicate"],
        undecodable_skipped=counts["undecodable_skipped"], truncated=counts["truncated"],
        kept=kept, train=counts["train"], val=counts["val"], shards=tuple(shards),
        sources=tuple(sources), split_name=split_name, sampled_from=sampled_from,
    )
    settings_used = {"val_fraction": settings.val_fraction,
                     "max_prompts": settings.max_prompts if split_name is None else None,
                     "sample_seed": settings.sample_seed if sampled_from else None,
                     "max_tokens": max_tokens if token_lengths else None}
    out.write_json("report.json", asdict(report) | {"settings": settings_used})
    return report


def corpus_ids(sources: list[str], *, settings: PromptsSection, split_name: str | None = None,
               endpoint_url: str | None = None) -> dict[str, str]:
    """The prompts `prepare_corpus` would keep, without writing anything: prompt id -> split,
    after normalising, de-duplication and the `max_prompts` sample (`mitune plan` counts them).

    Example:
        >>> ids = corpus_ids(["bundled:t2i-compbench/color_train"],
        ...                  settings=PromptsSection(val_fraction=0.05))
        >>> len(ids), sum(split == "val" for split in ids.values())
        (679, 37)
    """
    stream = _kept_rows(list(sources), settings, split_name, endpoint_url, Counter())
    if settings.max_prompts is not None and split_name is None:
        stream = iter(uniform_sample(stream, settings.max_prompts, settings.sample_seed)[0])
    return {pid: split for pid, _, split, _, _ in stream}


def read_prompt_shard(store: Store, rel: str) -> list[tuple[str, str, str]]:
    """The (prompt_id, prompt, split) rows of one shard written by `prepare_corpus`.

    Example:
        >>> read_prompt_shard(Store("/tmp/corpus"), "shards/shard-00000.parquet")[:1]  # doctest: +SKIP
        [('821c7df8aa61a470', 'a green bench and a red car', 'train')]
    """
    table = pq.read_table(pa.BufferReader(store.read_bytes(rel)),
                          columns=["prompt_id", "prompt", "split"])
    return list(zip(*(table.column(c).to_pylist() for c in table.column_names)))
