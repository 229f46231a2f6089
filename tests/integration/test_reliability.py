"""Faults survived with nothing lost: dead actors, departing nodes, killed drivers, S3 outages."""

import hashlib
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mitune_ray.config import GenerateSection
from mitune_ray.stages.generate import done_prompt_ids, generate_round
from mitune_ray.models import ModelSpec
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
        mi=FAST_MI, round_index=1, prompts=prompts, shards=prompt_shards(prompts, 12), out=out,
        expected_prompts=12)
    assert (tmp_path / "faults" / "generate.kill_actor-2").exists()  # an actor really died
    ids = selected_ids(out)
    assert len(ids) == 12 and len(set(ids)) == 12
    assert summary.prompts == 12 and len(summary.actors) >= 3  # the dead actor was replaced


@pytest.fixture
def multinode():
    """A head with 1 CPU and two 2-CPU worker nodes, this process connected; (cluster, workers)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_node_leaving_mid_generation_loses_nothing(tmp_path, multinode):
    cluster, nodes = multinode
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
        mi=FAST_MI, round_index=1, prompts=prompts, shards=shards, out=out,
        expected_prompts=16)
    assert removed.is_set(), "the node was removed while the stage ran"
    ids = selected_ids(out)
    assert len(ids) == 16 and len(set(ids)) == 16 and summary.rows == 16


# -- the driver ----------------------------------------------------------------------------------

from tests.runs import FAST_MI, dump, kill, read_manifest, run_cli, stages, start, tiny_run_config, wait_for  # noqa: E402


def test_a_driver_through_s3_outages_and_sigkills_resumes_without_redoing_work(
        tmp_path, s3_server, s3_bucket):
    uri = f"s3://{s3_bucket}/runs/faults"
    store = Store(uri)
    config = tiny_run_config(tmp_path, uri, rounds=1)
    log = tmp_path / "driver.log"
    env = {"MITUNE_FAULTS": "driver.after_commit:round-001/generate",
           "MITUNE_FAULTS_DIR": str(tmp_path / "faults"), "MITUNE_STORAGE_RETRY_S": "10"}

    # 1. A few seconds of S3 outage while the actors write shards: retries carry on. Then a
    #    SIGKILL between the commit of generation and the start of training.
    proc = start(["run", str(config)], cwd=tmp_path, env=env, log=log)
    try:
        wait_for(lambda: store.list("round-001/selected", suffix=".parquet"), proc=proc,
                 what="the first selected shard")
        s3_server.stop()
        time.sleep(3)
        s3_server.start()
        assert proc.wait(600) == -9, dump(log)  # the injected kill after the generate commit
    finally:
        if proc.poll() is None:
            kill(proc)
    first = stages(read_manifest(store))
    assert set(first) == {"prompts", "round-001/generate"}

    # 2. The store stays down: the run stops with one clear line, its committed state intact.
    s3_server.stop()
    try:
        down = run_cli(["run", str(config)], cwd=tmp_path, env=env, log=tmp_path / "down.log")
        text = (tmp_path / "down.log").read_text()
        assert down == 2, text[-3000:]
        errors = [line for line in text.splitlines() if line.startswith("mitune: error:")]
        assert len(errors) == 1 and "unreachable" in errors[0] and "rerun to resume" in errors[0]
    finally:
        s3_server.start()
    assert stages(read_manifest(store)) == first

    # 3. SIGKILL during training, once its first checkpoint is stored.
    proc = start(["run", str(config)], cwd=tmp_path, env=env, log=log)
    try:
        wait_for(lambda: store.list("round-001/train/adapters"), proc=proc,
                 what="the first training checkpoint")
        # Meanwhile a second driver on the same run is refused by the lease.
        second = run_cli(["run", str(config)], cwd=tmp_path, log=tmp_path / "second.log")
        assert second == 2
        assert "held by another driver" in (tmp_path / "second.log").read_text()
    finally:
        kill(proc)
    assert "round-001/train" not in stages(read_manifest(store))

    # 4. The same command finishes: generation is not redone, training resumes its checkpoint.
    assert run_cli(["run", str(config)], cwd=tmp_path, env=env, log=log) == 0, dump(log)
    final = stages(read_manifest(store))
    assert final["round-001/generate"]["committed_at"] == first["round-001/generate"]["committed_at"]
    result = final["round-001/train"]["result"]
    assert result["steps"] == 2 and result["resumed_from"] >= 1, result
    assert len(selected_ids(store.child("round-001"))) == final["prompts"]["train"]["train"]


def test_a_node_leaving_mid_training_restores_from_the_checkpoint_and_finishes(
        tmp_path, tiny_folder, multinode):
    from ray.util.state import list_actors

    from mitune_ray.config import load_config
    from mitune_ray.stages.train import train_adapter
    from mitune_ray.training.loop import FAULT_SETTLE_S
    from tests.integration.stages.test_train import selected_rows, write_shards

    cluster, workers = multinode
    out = Store(str(tmp_path / "round-001"))
    shards = write_shards(out, selected_rows(tiny_folder, "sd", 8))
    cfg = load_config(None, ["train.rank=4", "train.batch_size=2", "train.grad_accum=1",
                             "train.steps=16", "train.checkpoint_every=1", "train.workers=2",
                             "train.cpus_per_worker=0.5", "train.max_failures=2",
                             "train.validation_prompts=0", "model.family=sd"])
    removed = threading.Event()

    def remove_a_training_node():
        # Remove the node once Ray Train holds a checkpoint: step 2's is on storage (so
        # step 1's was reported by every rank) and the controller has polled since.
        deadline = time.monotonic() + 600
        while (not any("/step-000002/" in f for f in out.list("train-round-001"))
               and time.monotonic() < deadline):
            time.sleep(0.2)
        time.sleep(FAULT_SETTLE_S)
        hosts = {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")])
                 if "RayTrainWorker" in (a.class_name or "")}
        victim = next(n for n in workers if n.node_id in hosts)
        cluster.remove_node(victim)
        removed.set()

    threading.Thread(target=remove_a_training_node, daemon=True).start()
    result = train_adapter(cfg, model_path=tiny_folder("sd"), selected=shards, out=out,
                           run_name="train-round-001", log=lambda m: None)
    assert removed.is_set()
    assert result.steps == 16 and result.resumed_from >= 1, result
    assert out.exists("adapter/pytorch_lora_weights.safetensors")
