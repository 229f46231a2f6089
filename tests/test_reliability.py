"""Faults survived with nothing lost: dead actors, departing nodes, killed drivers, S3 outages."""

import hashlib
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mitune_ray.config import GenerateSection, MISection
from mitune_ray.generate import ModelSpec, done_prompt_ids, generate_round
from mitune_ray.records import to_parquet_bytes
from mitune_ray.storage import Store


def prompt_shards(root: Store, n: int) -> list[str]:
    texts = [f"a photo of object number {i}" for i in range(n)]
    ids = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
    root.write_bytes("shards/shard-00000.parquet", to_parquet_bytes(
        pa.table({"prompt_id": ids, "prompt": texts, "split": ["train"] * n})))
    return ["shards/shard-00000.parquet"]


def selected_ids(out: Store) -> list[str]:
    parts = out.list("selected", suffix=".parquet")
    return pq.read_table([out.path(p) for p in parts], columns=["prompt_id"],
                         filesystem=out.filesystem).column("prompt_id").to_pylist()


def test_a_generation_actor_killed_mid_stage_is_replaced_and_its_work_redone(
        ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("MITUNE_FAULTS", "generate.kill_actor:2")
    monkeypatch.setenv("MITUNE_FAULTS_DIR", str(tmp_path / "faults"))
    prompts, out = Store(str(tmp_path / "prompts")), Store(str(tmp_path / "round-001"))
    summary = generate_round(
        model=ModelSpec("tiny:sd"), gen=GenerateSection(candidates=3, keep=1, steps=3, actors=2,
                                                        cpus_per_actor=0.5, prompts_per_batch=2),
        mi=MISection(), round_index=1, prompts=prompts, shards=prompt_shards(prompts, 12), out=out,
        expected_prompts=12)
    assert (tmp_path / "faults" / "generate.kill_actor-2").exists()  # an actor really died
    ids = selected_ids(out)
    assert len(ids) == 12 and len(set(ids)) == 12
    assert summary.prompts == 12 and len(summary.actors) >= 3  # the dead actor was replaced


def test_a_node_leaving_mid_generation_loses_nothing(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        prompts, out = Store(str(tmp_path / "prompts")), Store(str(tmp_path / "round-001"))
        shards = prompt_shards(prompts, 16)
        removed = threading.Event()

        def remove_a_node():
            deadline = time.monotonic() + 300
            while len(done_prompt_ids(out)) < 4 and time.monotonic() < deadline:
                time.sleep(0.3)
            cluster.remove_node(nodes[1])
            removed.set()

        threading.Thread(target=remove_a_node, daemon=True).start()
        summary = generate_round(
            model=ModelSpec("tiny:sd"),
            gen=GenerateSection(candidates=3, keep=1, steps=20, actors=2, cpus_per_actor=1,
                                prompts_per_batch=2),
            mi=MISection(), round_index=1, prompts=prompts, shards=shards, out=out,
            expected_prompts=16)
        assert removed.is_set(), "the node was removed while the stage ran"
        ids = selected_ids(out)
        assert len(ids) == 16 and len(set(ids)) == 16 and summary.rows == 16
    finally:
        ray.shutdown()
        cluster.shutdown()
