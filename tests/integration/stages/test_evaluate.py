"""The Ray Data scoring stage on a local 2-CPU cluster, against the single-process scorers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.stages.evaluate import ScorerSpec, build_scorer, score_dataset

PROMPTS = ["a green bench and a blue bowl", "a cat on the left of a dog", "a red apple"]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_stage_scores_equal_the_single_process_scores(
    ray_cluster, blip_folder, clip_folder, images
):
    from mitune_ray.imaging import decode_png

    rows = [
        {"id": i, "png": _png(images[i % len(images)]), "prompt": PROMPTS[i % len(PROMPTS)]}
        for i in range(8)
    ]
    specs = [
        ScorerSpec("blipvqa", str(blip_folder), device="cpu", options={"image_size": 32}),
        ScorerSpec("clipscore", str(clip_folder), column="clip", device="cpu"),
    ]
    ds = ray_cluster.data.from_items(rows, override_num_blocks=4)  # blocks for both actors
    scored = score_dataset(
        ds, specs, actors=2, num_gpus_per_actor=0, num_cpus_per_actor=0.5, batch_size=3
    )
    out = sorted(scored.take_all(), key=lambda row: row["id"])
    assert [row["id"] for row in out] == list(range(8))
    assert set(out[0]) == {"id", "png", "prompt", "blipvqa", "clip"}

    decoded = [decode_png(row["png"]) for row in rows]
    prompts = [row["prompt"] for row in rows]
    for spec in specs:
        expected = build_scorer(spec).score(decoded, prompts)
        got = np.array([row[spec.column] for row in out])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert len(set(np.round(got, 6))) > 2  # rows really differ


def test_specs_are_validated():
    with pytest.raises(MituneError, match="metric kind 'fid'"):
        ScorerSpec("fid", "/models")
    with pytest.raises(MituneError, match="dtype 'fp8'"):
        ScorerSpec("hpsv2", "/models", dtype="fp8")
    assert ScorerSpec("hpsv2", "/models").column == "hpsv2"
    with pytest.raises(MituneError, match="its own column"):
        score_dataset(None, [ScorerSpec("hpsv2", "/a"), ScorerSpec("hpsv2", "/b")])
    with pytest.raises(MituneError, match="actors=0"):
        score_dataset(None, ScorerSpec("hpsv2", "/a"), actors=0)


def test_metrics_json_records_blip_vqas_noun_phrase_chunker(ray_cluster, blip_folder, images,
                                                            tmp_path):
    import json

    import pyarrow as pa

    from mitune_ray.config import EvalSection
    from mitune_ray.records import to_parquet_bytes
    from mitune_ray.stages.evaluate import EvalPrompts, info_column, score_version
    from mitune_ray.storage import Store

    out = Store(str(tmp_path / "eval"))
    rows = [{"prompt_id": f"p{i}", "prompt": PROMPTS[i], "candidate": 0, "seed": i, "mi": 0.5,
             "png": _png(images[i])} for i in range(2)]
    out.write_bytes("selected/part-0.parquet", to_parquet_bytes(pa.Table.from_pylist(rows)))
    prompts = EvalPrompts(out, [], {"p0": "color", "p1": "spatial"}, frozenset())
    ev = EvalSection(metrics=["mi", "blip_vqa"], blip_path=str(blip_folder), gpus_per_actor=0)
    summary = score_version(name="round-001", adapters=[], out=out, prompts=prompts, ev=ev,
                            guidance=7.5, cpus_per_actor=0.5, log=lambda line: None)
    # spaCy is not installed here: the built-in chunker chose the questions, and metrics.json says so.
    assert summary["metric_info"] == {"blip_vqa": {"noun_phrase_chunker": "rules"}}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metric_info"] == \
        summary["metric_info"]
    assert 0.0 <= summary["metrics"]["blip_vqa"] <= 1.0
    # The info column is there only when asked for.
    ds = ray_cluster.data.from_items([{"png": rows[0]["png"], "prompt": PROMPTS[0]}])
    spec = ScorerSpec("blipvqa", str(blip_folder), device="cpu", options={"image_size": 32})
    plain = score_dataset(ds, spec, num_cpus_per_actor=0.5).take_all()[0]
    assert info_column("blipvqa") not in plain
    told = score_dataset(ds, spec, num_cpus_per_actor=0.5, with_info=True).take_all()[0]
    assert json.loads(told[info_column("blipvqa")]) == {"noun_phrase_chunker": "rules"}
