"""Prompt corpora read from and written to S3 (SeaweedFS, from tests/conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mitune_ray.errors import MituneError
from mitune_ray.prompts import prepare_corpus
from mitune_ray.storage import Store
from tests.unit.test_prompts import COMPBENCH, REFL_JSON, corpus_rows, diffusiondb_parquet, settings


def test_s3_sources_and_output(s3_server, s3_bucket, tmp_path):
    inputs = Store(f"s3://{s3_bucket}/inputs", endpoint_url=s3_server.endpoint)
    inputs.write_bytes("color_val.txt", (COMPBENCH / "color_val.txt").read_bytes())
    texts = [r["text"] for r in json.loads(REFL_JSON.read_text())][:2000]
    inputs.write_bytes("meta.parquet", Path(diffusiondb_parquet(tmp_path / "m.parquet", texts)).read_bytes())
    sources = [f"s3://{s3_bucket}/inputs/color_val.txt", f"s3://{s3_bucket}/inputs/meta.parquet"]
    out = Store(f"s3://{s3_bucket}/corpus", endpoint_url=s3_server.endpoint)
    report = prepare_corpus(sources, out, settings=settings(shard_size=500), endpoint_url=s3_server.endpoint)
    unique = len({re.sub(r"\s+", " ", t).strip() for t in texts})
    assert report.kept == 300 + unique and report.read == 2300
    rows = corpus_rows(out, report)
    assert rows[0][1] == "a green bench and a blue bowl" and rows[300][1] == " ".join(texts[0].split())
    assert out.read_json("report.json")["kept"] == report.kept

    missing = f"s3://{s3_bucket}/inputs/nope.jsonl"
    with pytest.raises(MituneError, match=f"prompt source {missing!r} does not exist"):
        prepare_corpus([missing], out, settings=settings(),
                       endpoint_url=s3_server.endpoint)
