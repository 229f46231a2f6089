"""Prompt corpora on the real T2I-CompBench lists and ImageReward's DiffusionDB prompts, plus the
malformed inputs a user can hand us. Expected values are computed independently of the module."""

from __future__ import annotations

import hashlib
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mitune_ray.config import PromptsSection
from mitune_ray.errors import MituneError
from mitune_ray.prompts import (
    BUNDLED_PROMPTS, BadLine, bundled_prompt_names, normalize_prompt, prepare_corpus, prompt_id,
    read_prompt_shard, read_prompts, resolve_bundled, split_of,
)
from mitune_ray.storage import Store

# The corpora shipped in the package (mitune_ray/assets/prompts): always present, never skipped.
DATA = Path(__file__).resolve().parents[2] / "mitune_ray" / "assets" / "prompts"
COMPBENCH = DATA / "t2i-compbench"
REFL_JSON = DATA / "diffusiondb" / "imagereward_refl_prompts.json"
PARTI = DATA / "partiprompts" / "PartiPrompts.tsv"


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def corpus_rows(store: Store, report) -> list[tuple[str, str, str]]:
    return [row for rel in report.shards for row in read_prompt_shard(store, rel)]


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def settings(**kw) -> PromptsSection:
    return PromptsSection(**({"val_fraction": 0.0} | kw))


# --- the real T2I-CompBench lists -------------------------------------------------------------

def test_compbench_color_val_crlf_without_final_newline(tmp_path):
    raw = (COMPBENCH / "color_val.txt").read_bytes()
    # Independent count: newlines, plus one for the last line that has none.
    assert raw.count(b"\r\n") == raw.count(b"\n") == 299 and not raw.endswith(b"\n")
    expected = [p.strip() for p in raw.decode().replace("\r\n", "\n").split("\n")]
    assert len(expected) == 300

    rows = list(read_prompts(str(COMPBENCH / "color_val.txt")))
    assert [n for _, n, _ in rows] == list(range(1, 301))
    assert [t for _, _, t in rows] == expected
    assert rows[-1][2] == "a black bathroom with a black and white shower curtain"

    out = Store(str(tmp_path / "corpus"))
    report = prepare_corpus([str(COMPBENCH / "color_val.txt")], out, settings=settings())
    assert (report.read, report.kept, report.train, report.val) == (300, 300, 300, 0)
    got = corpus_rows(out, report)
    assert [p for _, p, _ in got] == expected
    assert all(p == p.strip() and "\r" not in p and "\t" not in p for _, p, _ in got)
    assert [i for i, _, _ in got] == [sha16(p) for p in expected]  # stable: sha256 of the text


def test_compbench_color_train_duplicates_and_lf_files(tmp_path):
    lines = (COMPBENCH / "color_train.txt").read_text().splitlines()
    first_seen = list(dict.fromkeys(lines))
    out = Store(str(tmp_path / "c"))
    report = prepare_corpus([str(COMPBENCH / "color_train.txt")], out, settings=settings())
    assert report.duplicate == len(lines) - len(first_seen) == 21
    assert [p for _, p, _ in corpus_rows(out, report)] == first_seen  # first occurrence order

    lf = (COMPBENCH / "numeracy_val.txt").read_bytes()
    assert b"\r" not in lf
    rows = list(read_prompts(str(COMPBENCH / "numeracy_val.txt")))
    assert [t for _, _, t in rows] == lf.decode().split("\n")
    # Non-ASCII prompts survive as UTF-8.
    texts = [t for _, _, t in read_prompts(str(COMPBENCH / "shape_train.txt"))]
    assert texts[186] == "a conical birthday hat and a spherical piñata"


def test_txt_tab_fields_bom_and_whitespace(tmp_path):
    src = write(tmp_path, "t2i.txt",
                b"\xef\xbb\xbfa red car\tcolor\t1\r\n  a  blue\x0bbowl \r\n\r\n\t\tlead tab\r\nlast")
    rows = list(read_prompts(src))
    assert [t for _, _, t in rows] == ["a red car", "  a  blue\x0bbowl ", "", "", "last"]
    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([src], out, settings=settings())
    assert [p for _, p, _ in corpus_rows(out, report)] == ["a red car", "a blue bowl", "last"]
    assert (report.read, report.empty, report.kept) == (5, 2, 3)
    assert pq.read_table(out.path(report.shards[0]), columns=["line"])["line"].to_pylist() == [1, 2, 5]


# --- bundled corpora (bundled:CORPUS/NAME) and .tsv tables ----------------------------------------

def test_bundled_folder_is_the_repositorys():
    assert BUNDLED_PROMPTS == DATA.resolve()
    assert sorted(p.name for p in DATA.iterdir() if p.is_dir()) == ["diffusiondb", "partiprompts",
                                                                    "t2i-compbench"]
    for corpus in ("diffusiondb", "partiprompts", "t2i-compbench"):  # provenance beside the data
        assert (DATA / corpus / "README.md").is_file() and list((DATA / corpus).glob("LICENSE*"))


def test_bundled_names_cover_every_prompt_list_once():
    names = bundled_prompt_names()
    # Independently: every .txt / .tsv of the folders but the licences, named without the suffix.
    files = sorted(p for p in DATA.glob("*/*") if p.suffix in (".txt", ".tsv")
                   and not p.name.startswith("LICENSE"))
    assert names == [f"bundled:{p.parent.name}/{p.stem}" for p in files]
    assert len(set(names)) == len(names) == 40
    assert {"bundled:t2i-compbench/color_train", "bundled:t2i-compbench/complex_val",
            "bundled:partiprompts/PartiPrompts",
            "bundled:diffusiondb/imagereward_benchmark_prompts"} <= set(names)
    assert [resolve_bundled(n) for n in names] == [p.resolve() for p in files]
    assert resolve_bundled("bundled:t2i-compbench/color_train") == (COMPBENCH / "color_train.txt").resolve()


def test_bundled_source_reads_the_packaged_file_and_is_recorded_by_name(tmp_path):
    by_name = list(read_prompts("bundled:t2i-compbench/color_val"))
    by_path = list(read_prompts(str(COMPBENCH / "color_val.txt")))
    assert [(n, t) for _, n, t in by_name] == [(n, t) for _, n, t in by_path] and len(by_name) == 300
    assert {s for s, _, _ in by_name} == {"bundled:t2i-compbench/color_val"}

    out = Store(str(tmp_path / "o"))
    sources = ["bundled:t2i-compbench/color_val", "bundled:diffusiondb/imagereward_benchmark_prompts"]
    report = prepare_corpus(sources, out, split_name="eval", settings=settings(shard_size=1000))
    assert (report.read, report.kept) == (400, 400) and report.sources == tuple(sources)
    table = pq.read_table(out.path(report.shards[0]), columns=["source", "line"])
    assert table["source"].to_pylist()[299:301] == sources  # no machine path in the corpus
    assert table["line"].to_pylist()[299:301] == [300, 1]


def test_bundled_partiprompts_tsv_reads_the_prompt_column(tmp_path):
    raw = PARTI.read_text(encoding="utf-8").split("\n")
    assert raw[0].split("\t") == ["Prompt", "Category", "Challenge", "Note"] and raw[-1] == ""
    want = [line.split("\t")[0] for line in raw[1:-1]]  # independent: first field, header skipped
    assert len(want) == 1632
    rows = list(read_prompts("bundled:partiprompts/PartiPrompts"))
    assert [t for _, _, t in rows] == want and [n for _, n, _ in rows] == list(range(2, 1634))
    assert any('"' in t for t in want)  # quotes are text, not TSV quoting
    report = prepare_corpus(["bundled:partiprompts/PartiPrompts"], Store(str(tmp_path / "o")),
                            settings=settings())
    assert report.read == 1632 and report.kept == len(dict.fromkeys(normalize_prompt(t) for t in want))


def test_tsv_prompt_column_by_header_and_errors(tmp_path):
    src = write(tmp_path, "p.tsv", b"id\tPROMPT\tnote\r\n1\ta red car\tx\r\n2\r\n3\t  a blue  bowl\t\r\n")
    assert [(n, t) for _, n, t in read_prompts(src)] == [(2, "a red car"), (3, ""), (4, "  a blue  bowl")]
    report = prepare_corpus([src], Store(str(tmp_path / "o")), settings=settings())
    assert (report.read, report.empty, report.kept) == (3, 1, 2)

    headless = write(tmp_path, "h.tsv", b"a red car\tcolor\n")
    with pytest.raises(MituneError) as err:
        list(read_prompts(headless))
    message = str(err.value)
    assert "\n" not in message and f"{headless} line 1 names no 'Prompt' column" in message
    assert "['a red car', 'color']" in message and "header row" in message
    empty = write(tmp_path, "e.tsv", b"")
    with pytest.raises(MituneError, match=r"no prompts in .*e\.tsv \(read 0"):
        prepare_corpus([empty], Store(str(tmp_path / "o2")), settings=settings())


@pytest.mark.parametrize("source,origin,fix", [
    ("bundled:t2i-compbench/colour_train", "prompts.train",
     "did you mean bundled:t2i-compbench/color_train? t2i-compbench has 3d_spatial, 3d_spatial_train,"),
    ("bundled:t2i-compbench/color_train.txt", "prompts.eval",
     "did you mean bundled:t2i-compbench/color_train? t2i-compbench has"),
    ("bundled:compbench/color_train", "prompts.train",
     "write bundled:CORPUS/NAME with CORPUS one of diffusiondb, partiprompts, t2i-compbench"),
    ("bundled:../../../etc/passwd", "prompts.eval",
     "write bundled:CORPUS/NAME with CORPUS one of diffusiondb, partiprompts, t2i-compbench"),
    ("bundled:t2i-compbench/LICENSE", "prompts.train", "t2i-compbench has 3d_spatial"),
    ("bundled:", "prompts.train", "write bundled:CORPUS/NAME"),
], ids=["typo", "suffix", "corpus", "traversal", "licence", "empty"])
def test_bad_bundled_name_is_one_line_error(tmp_path, source, origin, fix):
    out = Store(str(tmp_path / "o"))
    good = "bundled:t2i-compbench/color_val"
    with pytest.raises(MituneError) as err:
        prepare_corpus([good, source], out, settings=settings(),
                       split_name="eval" if origin == "prompts.eval" else None)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"prompt source {source!r} ({origin}) names no bundled prompt list; ")
    assert fix in message and message.endswith("('mitune prompts list' shows every name)")
    assert out.list() == []  # checked before anything is written


def test_cli_prompts_list_and_dir(capsys):
    from mitune_ray.cli import main

    assert main(["prompts", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == bundled_prompt_names()
    assert main(["prompts", "dir"]) == 0
    assert Path(capsys.readouterr().out.strip()) == BUNDLED_PROMPTS


# --- DiffusionDB metadata parquet ---------------------------------------------------------------

def diffusiondb_parquet(path: Path, texts: list[str | None]) -> str:
    """A file with DiffusionDB metadata.parquet's columns, in several row groups."""
    n = len(texts)
    table = pa.table({
        "image_name": [f"{i:06d}.png" for i in range(n)],
        "prompt": texts,
        "part_id": pa.array([i // 1000 + 1 for i in range(n)], pa.uint16()),
        "seed": pa.array(range(n), pa.uint32()),
        "step": pa.array([50] * n, pa.uint16()),
        "cfg": pa.array([7.0] * n, pa.float32()),
        "sampler": pa.array([8] * n, pa.uint8()),
        "width": pa.array([512] * n, pa.uint16()),
        "height": pa.array([512] * n, pa.uint16()),
        "user_name": ["u" * 64] * n,
        "prompt_nsfw": pa.array([0.01] * n, pa.float32()),
    })
    pq.write_table(table, path, row_group_size=1000)
    return str(path)


def test_diffusiondb_parquet_streamed_prompt_column_only(tmp_path, monkeypatch):
    texts = [r["text"] for r in json.loads(REFL_JSON.read_text())]
    assert len(texts) == 10_000
    unique = {re.sub(r"\s+", " ", t).strip() for t in texts}  # independent normalisation
    assert len(texts) - len(unique) == 202
    src = diffusiondb_parquet(tmp_path / "metadata.parquet", texts)

    calls = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        for batch in original(self, *args, **kwargs):
            assert batch.num_rows <= kwargs["batch_size"] and batch.schema.names == ["prompt"]
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    rows = list(read_prompts(src, batch_size=128))
    assert calls == [{"columns": ["prompt"], "batch_size": 128}]
    assert [n for _, n, _ in rows] == list(range(10_000))  # parquet rows are 0-based
    assert [t for _, _, t in rows] == texts

    out = Store(str(tmp_path / "corpus"))
    report = prepare_corpus([src], out, settings=PromptsSection(val_fraction=0.2, shard_size=1000))
    assert (report.read, report.duplicate, report.kept) == (10_000, 202, 9798)
    assert report.train + report.val == 9798 and 0.17 < report.val / 9798 < 0.23
    assert len(report.shards) == 10
    got = corpus_rows(out, report)
    assert {p for _, p, _ in got} == unique


def test_parquet_nulls_binary_column_and_errors(tmp_path):
    src = diffusiondb_parquet(tmp_path / "m.parquet", ["a cat", None, "  ", "a dog"])
    report = prepare_corpus([src], Store(str(tmp_path / "o")), settings=settings())
    assert (report.read, report.empty, report.kept) == (4, 2, 2)

    pq.write_table(pa.table({"prompt": pa.array([b"ok", b"\xffbad"], pa.binary())}), tmp_path / "b.parquet")
    with pytest.raises(MituneError, match=r"b\.parquet row 1 is not valid UTF-8"):
        prepare_corpus([str(tmp_path / "b.parquet")], Store(str(tmp_path / "o2")), settings=settings())

    pq.write_table(pa.table({"text": ["a"], "image": ["x"]}), tmp_path / "np.parquet")
    with pytest.raises(MituneError) as err:
        list(read_prompts(str(tmp_path / "np.parquet")))
    assert "np.parquet has no 'prompt' column (it has ['text', 'image'])" in str(err.value)

    pq.write_table(pa.table({"prompt": [1, 2]}), tmp_path / "int.parquet")
    with pytest.raises(MituneError, match="column 'prompt' holds int64, not text"):
        list(read_prompts(str(tmp_path / "int.parquet")))


# --- jsonl ------------------------------------------------------------------------------------

def test_jsonl(tmp_path):
    lines = [json.dumps({"prompt": "a\tred\ncar  ", "id": 7}), "", json.dumps({"prompt": None}),
             json.dumps({"prompt": "a red car"}), json.dumps({"prompt": "two\u2028lines"})]
    src = write(tmp_path, "p.jsonl", "\n".join(lines).encode() + b"\n")
    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([src], out, settings=settings())
    assert (report.read, report.empty, report.duplicate, report.kept) == (5, 2, 1, 2)
    assert [p for _, p, _ in corpus_rows(out, report)] == ["a red car", "two lines"]

    bad = write(tmp_path, "bad.jsonl", b'{"prompt": "ok"}\n{"prompt": "oops"\n')
    with pytest.raises(MituneError, match=r"bad\.jsonl line 2 is not JSON"):
        list(read_prompts(bad))
    nokey = write(tmp_path, "nokey.jsonl", b'{"text": "a", "image": "b"}\n')
    with pytest.raises(MituneError, match=r"nokey\.jsonl line 1 has no 'prompt' key \(it has \['image', "):
        list(read_prompts(nokey))
    number = write(tmp_path, "num.jsonl", b'{"prompt": 3}\n')
    with pytest.raises(MituneError, match="'prompt' is a int, not a string"):
        list(read_prompts(number))


# --- bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"\r\n   \n\t\r\n"], ids=["empty-file", "blank-lines"])
def test_empty_corpus_is_one_line_error(tmp_path, data):
    src = write(tmp_path, "empty.txt", data)
    out = Store(str(tmp_path / "o"))
    with pytest.raises(MituneError) as err:
        prepare_corpus([src], out, settings=settings())
    message = str(err.value)
    assert "\n" not in message and src in message and "prompts.train" in message
    n = len(data.splitlines())
    assert f"(read {n}: {n} empty, 0 undecodable skipped)" in message
    assert not out.exists("report.json") and out.list() == []


def test_no_sources_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(MituneError, match="no prompt sources"):
        prepare_corpus([], Store(str(tmp_path / "o")), settings=settings())
    good = write(tmp_path, "good.txt", b"a cat\n")
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(MituneError, match=f"prompt source '{re.escape(missing)}' does not exist"):
        prepare_corpus([good, missing], Store(str(tmp_path / "o")), settings=settings())
    assert not (tmp_path / "o").exists()  # checked before anything is written
    with pytest.raises(MituneError, match=r"unsupported suffix; use one of \.txt, \.jsonl, \.parquet"):
        list(read_prompts(str(tmp_path / "prompts.csv")))


def test_non_utf8_line_error_and_skip(tmp_path):
    src = write(tmp_path, "latin1.txt", "a cat\r\nb dog\r\ncaf\xe9 au lait\r\nd eel\r\n".encode("latin-1"))
    with pytest.raises(MituneError) as err:
        prepare_corpus([src], Store(str(tmp_path / "o")), settings=settings())
    message = str(err.value)
    assert f"{src} line 3 is not valid UTF-8 (byte 0xe9 at column 4)" in message
    assert "prompts.on_undecodable=skip" in message and "\n" not in message

    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([src], out, settings=settings(on_undecodable="skip"))
    assert (report.read, report.undecodable_skipped, report.kept) == (4, 1, 3)
    lines = pq.read_table(out.path(report.shards[0]), columns=["line"])["line"].to_pylist()
    assert lines == [1, 2, 4]  # numbering stays exact after the bad line


def test_nul_bytes_are_undecodable(tmp_path):
    src = write(tmp_path, "nul.txt", b"a cat\nb\x00dog\nc eel\n")
    assert isinstance(list(read_prompts(src))[1][2], BadLine)
    with pytest.raises(MituneError, match=r"nul\.txt line 2 holds a NUL byte at column 2"):
        prepare_corpus([src], Store(str(tmp_path / "o")), settings=settings())
    js = write(tmp_path, "nul.jsonl", b'{"prompt": "x\\u0000y"}\n{"prompt": "\\ud800"}\n{"prompt": "ok"}\n')
    report = prepare_corpus([src, js], Store(str(tmp_path / "o")), settings=settings(on_undecodable="skip"))
    assert (report.read, report.undecodable_skipped, report.kept) == (6, 3, 3)


def test_long_prompt_kept_and_counted_truncated(tmp_path):
    long = "abcd " * 19_999 + "abcde"
    assert len(long) == 100_000
    src = write(tmp_path, "long.txt", f"a short one\n{long}\nanother short one\n".encode())
    seen = []

    def whitespace_tokens(prompts: list[str]) -> list[int]:
        seen.append(len(prompts))
        return [len(p.split()) + 2 for p in prompts]  # + start and end tokens, like CLIP

    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([src], out, settings=settings(shard_size=2), token_lengths=whitespace_tokens,
                            max_tokens=77)
    assert (report.kept, report.truncated) == (3, 1) and seen == [2, 1]  # one call per shard
    rows = corpus_rows(out, report)
    assert rows[1][1] == long  # kept whole: the tokenizer truncates at encode time
    flags = [f for rel in report.shards for f in pq.read_table(out.path(rel))["truncated"].to_pylist()]
    assert flags == [False, True, False]


def test_hostile_prompts_are_data(tmp_path):
    hostile = ["../../etc/passwd", "a/b/c", "$(rm -rf ~); `ls` | cat > x & echo *", "..", "C:\\x\\y"]
    src = write(tmp_path, "h.txt", "\n".join(hostile).encode())
    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([src], out, settings=settings())
    rows = corpus_rows(out, report)
    assert [p for _, p, _ in rows] == hostile
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i, _, _ in rows)
    assert out.list() == ["report.json", "shards/shard-00000.parquet"]


# --- ids, splits, determinism -----------------------------------------------------------------

def test_prompt_id_and_normalize():
    assert prompt_id("a photo of a cat") == sha16("a photo of a cat") == "ba792b3ff0f684da"
    assert normalize_prompt(" a\tphoto\r\nof  a cat ") == "a photo of a cat"
    assert split_of("0000000000000000", 0.05) == "val" and split_of("ffffffffffffffff", 0.05) == "train"
    edge = math.ceil(Fraction(0.05) * 2**64)  # the first id that is not val, computed exactly
    assert split_of(f"{edge - 1:016x}", 0.05) == "val" and split_of(f"{edge:016x}", 0.05) == "train"


def test_split_deterministic_disjoint_and_corpus_independent(tmp_path):
    sources = [str(COMPBENCH / f"{c}_train.txt") for c in ("color", "shape", "texture")]
    a, b = Store(str(tmp_path / "a")), Store(str(tmp_path / "b"))
    ra = prepare_corpus(sources, a, settings=PromptsSection(val_fraction=0.1, shard_size=300))
    rb = prepare_corpus(sources, b, settings=PromptsSection(val_fraction=0.1, shard_size=300))
    assert ra == rb
    rows = corpus_rows(a, ra)
    train = {i for i, _, s in rows if s == "train"}
    val = {i for i, _, s in rows if s == "val"}
    assert not train & val and len(train) == ra.train and len(val) == ra.val
    assert val == {i for i, _, _ in rows if int(i, 16) < 0.1 * 2**64}
    assert 0.07 < ra.val / ra.kept < 0.13
    for rel in ra.shards:  # byte-identical shards from a second run
        assert a.read_bytes(rel) == b.read_bytes(rel)

    # The same text has the same split in any corpus: a val prompt is never tuned on elsewhere.
    some_val = next(p for _, p, s in rows if s == "val")
    other = write(tmp_path, "other.txt", f"unrelated prompt\n{some_val}\n".encode())
    rc = prepare_corpus([other], Store(str(tmp_path / "c")), settings=PromptsSection(val_fraction=0.1))
    assert dict((p, s) for _, p, s in corpus_rows(Store(str(tmp_path / "c")), rc))[some_val] == "val"


def test_rerun_in_place_identical_and_stale_shards_removed(tmp_path):
    src = [str(COMPBENCH / "spatial_train.txt")]
    out = Store(str(tmp_path / "o"))
    first = prepare_corpus(src, out, settings=settings(shard_size=64))
    before = {rel: out.read_bytes(rel) for rel in first.shards}
    again = prepare_corpus(src, out, settings=settings(shard_size=64))
    assert again == first and {rel: out.read_bytes(rel) for rel in again.shards} == before
    assert len(first.shards) == 11  # ceil(700 / 64)

    bigger = prepare_corpus(src, out, settings=settings(shard_size=1000))
    assert out.list("shards") == ["shards/shard-00000.parquet"] == list(bigger.shards)
    stored = out.read_json("report.json")
    assert stored["kept"] == bigger.kept == 700 and stored["shards"] == ["shards/shard-00000.parquet"]
    assert stored["settings"] == {"val_fraction": 0.0, "max_prompts": None, "sample_seed": None,
                                  "max_tokens": None}


def test_max_prompts_is_a_seeded_uniform_sample_of_the_whole_corpus(tmp_path):
    from mitune_ray.prompts import sample_key

    src = str(COMPBENCH / "complex_train.txt")
    lines = list(dict.fromkeys((COMPBENCH / "complex_train.txt").read_text().splitlines()))
    train = [p for p in lines if int(sha16(p), 16) >= 0.2 * 2**64]
    val = [p for p in lines if int(sha16(p), 16) < 0.2 * 2**64]
    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([src], out, settings=PromptsSection(val_fraction=0.2, max_prompts=50))
    # The 50 train prompts with the smallest seeded keys, in corpus order; val prompts under the
    # same threshold; every line read (no early stop).
    threshold = sorted(sample_key(0, sha16(p)) for p in train)[49]
    want_train = [p for p in train if sample_key(0, sha16(p)) <= threshold]
    want_val = [p for p in val if sample_key(0, sha16(p)) <= threshold]
    rows = corpus_rows(out, report)
    assert [p for _, p, s in rows if s == "train"] == want_train and len(want_train) == 50
    assert [p for _, p, s in rows if s == "val"] == want_val
    assert report.read == len(lines) and report.sampled_from == len(train)
    assert (report.train, report.val, report.kept) == (50, len(want_val), 50 + len(want_val))
    assert [p for _, p, _ in rows] == [p for p in lines if p in set(want_train + want_val)]
    # Drawn from the whole file, not its head: some kept prompts sit in its last half.
    assert max(lines.index(p) for p in want_train) > len(lines) // 2
    assert report.summary() == (f"read {report.read}, empty 0, duplicate 0, undecodable skipped 0, "
                                f"truncated 0, kept {report.kept} (train 50, val {report.val}); "
                                f"train prompts a uniform sample of 50 from {len(train)}")
    # Stable across reruns; another seed draws another sample.
    again = prepare_corpus([src], Store(str(tmp_path / "again")),
                           settings=PromptsSection(val_fraction=0.2, max_prompts=50))
    assert corpus_rows(Store(str(tmp_path / "again")), again) == rows
    other = prepare_corpus([src], Store(str(tmp_path / "other")),
                           settings=PromptsSection(val_fraction=0.2, max_prompts=50, sample_seed=1))
    assert corpus_rows(Store(str(tmp_path / "other")), other) != rows
    assert out.read_json("report.json")["settings"]["sample_seed"] == 0
    # A cap above the corpus keeps everything and says it did not sample.
    whole = prepare_corpus([src], Store(str(tmp_path / "whole")),
                           settings=PromptsSection(val_fraction=0.2, max_prompts=10**6))
    assert (whole.train, whole.val, whole.sampled_from) == (len(train), len(val), None)


def test_eval_split_marks_all_rows_and_is_not_capped(tmp_path):
    out = Store(str(tmp_path / "o"))
    report = prepare_corpus([str(COMPBENCH / "color_val.txt")], out, split_name="eval",
                            settings=PromptsSection(val_fraction=0.5, max_prompts=10))
    assert (report.kept, report.train, report.val, report.sampled_from) == (300, 0, 0, None)
    assert {s for _, _, s in corpus_rows(out, report)} == {"eval"}
    assert report.summary().endswith("kept 300 (all eval)")
