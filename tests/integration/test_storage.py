"""Local and S3 storage, the latter against a real S3-compatible server (SeaweedFS)."""

import os
import threading

import pytest

from mitune_ray.errors import MituneError
from mitune_ray.storage import Store
from tests.s3server import SECRET_KEY


def _roundtrip(store: Store):
    store.write_json("round-1/manifest.json", {"stage": "generate", "rows": 3})
    store.write_bytes("round-1/data/a.bin", b"\x00\x01")
    store.write_bytes("round-1/data/b.bin", b"xyz")
    assert store.read_json("round-1/manifest.json") == {"stage": "generate", "rows": 3}
    assert store.read_bytes("round-1/data/b.bin") == b"xyz"
    assert store.list("round-1/data") == ["round-1/data/a.bin", "round-1/data/b.bin"]
    assert store.exists("round-1/data/a.bin") and not store.exists("round-1/nope")
    store.delete("round-1/data")
    assert store.list("round-1/data") == []
    with pytest.raises(MituneError, match="does not exist"):
        store.read_bytes("round-1/data/a.bin")


def test_local_store_roundtrip(tmp_path):
    _roundtrip(Store(str(tmp_path / "run")))


def test_local_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    store = Store(str(tmp_path))
    big = os.urandom(4 << 20)
    seen = []

    def reader():
        for _ in range(200):
            if store.exists("x.bin"):
                seen.append(len(store.read_bytes("x.bin")))

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(5):
        store.write_bytes("x.bin", big)
    thread.join()
    assert set(seen) <= {len(big)}
    assert os.listdir(tmp_path) == ["x.bin"]


def test_s3_store_roundtrip_against_seaweedfs(s3_bucket):
    _roundtrip(Store(f"s3://{s3_bucket}/runs/demo"))


def test_s3_directory_upload_and_download(s3_bucket, tmp_path):
    src = tmp_path / "src"
    (src / "unet").mkdir(parents=True)
    (src / "model_index.json").write_text("{}")
    (src / "unet" / "w.safetensors").write_bytes(b"weights")
    store = Store(f"s3://{s3_bucket}/models")
    store.upload_dir(str(src), "tiny")
    store.download_dir("tiny", str(tmp_path / "dst"))
    assert (tmp_path / "dst" / "unet" / "w.safetensors").read_bytes() == b"weights"


def test_missing_bucket_and_wrong_credentials_are_one_line_errors(s3_server, s3_bucket, monkeypatch):
    with pytest.raises(MituneError, match="bucket does not exist") as err:
        Store("s3://no-such-bucket-here/run").write_json("m.json", {})
    assert "\n" not in str(err.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(MituneError, match="access denied") as err:
        Store(f"s3://{s3_bucket}/run").write_json("m.json", {})
    assert SECRET_KEY not in str(err.value) and "wrong-secret" not in str(err.value)


def test_unreachable_store_fails_after_the_retry_window(monkeypatch):
    store = Store("s3://bucket/run", endpoint_url="http://127.0.0.1:9", retry_window_s=2)
    with pytest.raises(MituneError, match="unreachable for 2s") as err:
        store.write_json("m.json", {})
    assert "rerun to resume" in str(err.value)


def test_s3_outage_of_a_few_seconds_is_ridden_out(s3_server, s3_bucket):
    store = Store(f"s3://{s3_bucket}/run", retry_window_s=60)
    store.write_json("before.json", {"ok": 1})
    s3_server.stop()
    restarter = threading.Timer(3.0, s3_server.start)
    restarter.start()
    try:
        store.write_json("during.json", {"ok": 2})  # retried until the server is back
    finally:
        restarter.join()
    assert store.read_json("during.json") == {"ok": 2}
    assert store.read_json("before.json") == {"ok": 1}


def test_read_parquet_reads_every_part_of_a_folder_as_one_table(tmp_path):
    import pyarrow as pa

    from mitune_ray.records import to_parquet_bytes

    store = Store(str(tmp_path))
    assert store.read_parquet("selected") is None
    store.write_bytes("selected/part-a.parquet", to_parquet_bytes(pa.table({"x": [1, 2], "y": [0, 0]})))
    store.write_bytes("selected/part-b.parquet", to_parquet_bytes(pa.table({"x": [3], "y": [0]})))
    table = store.read_parquet("selected", columns=["x"])
    assert table.column_names == ["x"] and sorted(table.column("x").to_pylist()) == [1, 2, 3]
