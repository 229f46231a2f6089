"""The Ray Data generation stage on a local cluster, with tiny models of every family."""

import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mitune_ray.config import GenerateSection, PromptsSection
from mitune_ray.stages.generate import done_prompt_ids, generate_round
from mitune_ray.models import ModelSpec
from mitune_ray.prompts import prepare_corpus, prompt_id
from mitune_ray.records import unpack_tensors
from mitune_ray.storage import Store
from tests.runs import FAST_MI

# Real DiffusionDB prompts (ImageReward's ReFL list), shipped in the package.
DIFFUSIONDB = (Path(__file__).resolve().parents[3] / "mitune_ray" / "assets" / "prompts" / "diffusiondb"
               / "imagereward_refl_prompts.txt")


def diffusiondb_parquet(path: Path, n: int, seed: int = 0) -> Path:
    """A DiffusionDB-schema metadata parquet from n real DiffusionDB prompts (plus columns the
    reader must ignore)."""
    import pyarrow as pa

    lines = DIFFUSIONDB.read_text(encoding="utf-8").splitlines()
    sample = random.Random(seed).sample(lines, n)
    table = pa.table({
        "image_name": [f"{i}.png" for i in range(n)], "prompt": sample,
        "part_id": [1] * n, "seed": list(range(n)), "step": [50] * n, "cfg": [7.0] * n,
        "sampler": ["k_lms"] * n, "width": [512] * n, "height": [512] * n,
        "prompt_nsfw": [0.0] * n,
    })
    pq.write_table(table, path)
    return path


def corpus(tmp_path, n=12, val_fraction=0.0):
    src = diffusiondb_parquet(tmp_path / "metadata.parquet", n)
    store = Store(str(tmp_path / "run" / "prompts" / "train"))
    report = prepare_corpus([str(src)], store, settings=PromptsSection(
        val_fraction=val_fraction, shard_size=64))
    return store, report


def read_selected(out: Store):
    parts = out.list("selected", suffix=".parquet")
    return pq.read_table([out.path(p) for p in parts], filesystem=out.filesystem)


def read_scores(out: Store):
    parts = out.list("scores", suffix=".parquet")
    return pq.read_table([out.path(p) for p in parts], filesystem=out.filesystem)


def gen_settings(**kw):
    return GenerateSection(**({"candidates": 3, "keep": 1, "steps": 4, "actors": 2,
                               "cpus_per_actor": 0.5, "prompts_per_batch": 2} | kw))


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_stage_selects_top_mi_per_prompt_over_a_diffusiondb_corpus(ray_cluster, tmp_path, family):
    # 12 batches of 2 prompts: enough that a second actor still loading its model when the first
    # is ready gets work (with 6, a fast first actor once took them all).
    prompts, report = corpus(tmp_path, n=24)
    out = Store(str(tmp_path / "run" / "round-001"))
    summary = generate_round(model=ModelSpec(f"tiny:{family}"), gen=gen_settings(keep=2),
                             mi=FAST_MI, round_index=1, prompts=prompts,
                             shards=list(report.shards), out=out, expected_prompts=report.train)
    table = read_selected(out)
    assert table.num_rows == report.train * 2 == summary.rows
    ids = table.column("prompt_id").to_pylist()
    assert sorted(set(ids)) == sorted(done_prompt_ids(out))
    assert all(ids.count(i) == 2 for i in set(ids))
    for pid, text in zip(ids, table.column("prompt").to_pylist()):
        assert pid == prompt_id(text)
    scores = {r["prompt_id"]: r for r in read_scores(out).to_pylist()}
    for row in table.to_pylist():
        mi = scores[row["prompt_id"]]["mi"]
        ranked = sorted(range(len(mi)), key=lambda i: -mi[i])
        assert row["candidate"] == ranked[row["rank"]]
        assert row["mi"] == pytest.approx(mi[row["candidate"]])
        tensors = unpack_tensors(row["tensors"])
        assert tuple(tensors["latent"].shape) == (4, 8, 8)
        assert ("pooled" in tensors) == (family != "sd")
        assert row["png"][:4] == b"\x89PNG"
    assert len(summary.actors) == 2, "both actors must do work"
    assert summary.candidates == report.train * 3


def test_a_failed_batch_then_a_rerun_gives_every_prompt_exactly_k_times(
        ray_cluster, tmp_path, monkeypatch):
    prompts, report = corpus(tmp_path, n=10)
    out = Store(str(tmp_path / "run" / "round-001"))
    monkeypatch.setenv("MITUNE_FAULTS", "generate.batch:2")
    monkeypatch.setenv("MITUNE_FAULTS_DIR", str(tmp_path / "faults"))
    settings = dict(model=ModelSpec("tiny:sd"), gen=gen_settings(), mi=FAST_MI,
                    round_index=1, prompts=prompts, shards=list(report.shards), out=out,
                    expected_prompts=report.train)
    with pytest.raises(Exception, match="injected fault"):
        generate_round(**settings)
    partial = len(done_prompt_ids(out))
    assert partial < report.train
    summary = generate_round(**settings)
    assert summary.skipped == partial and summary.prompts == report.train - partial
    ids = read_selected(out).column("prompt_id").to_pylist()
    assert len(ids) == report.train and len(set(ids)) == report.train
