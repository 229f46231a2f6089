"""Elastic resume end to end: a run killed mid-round goes on with other generation actor and
training worker counts (the effective batch kept, training checkpoints re-partitioned), while a
change that alters results (the learning rate) is still refused."""

from mitune_ray.storage import Store
from tests.runs import dump, kill, read_manifest, run_cli, stages, start, tiny_run_config, wait_for


def test_a_run_killed_mid_round_resumes_on_other_actor_and_worker_counts(tmp_path):
    uri = str(tmp_path / "run")
    store = Store(uri)
    # 1 actor; 2 workers x 2 x 1 samples a step, 4 steps, a checkpoint after each.
    config = str(tiny_run_config(tmp_path, uri, rounds=1, train={"steps": 4}))
    log = tmp_path / "driver.log"

    # 1. Killed mid-generation, on one actor.
    proc = start(["run", config], cwd=tmp_path, log=log)
    try:
        wait_for(lambda: store.list("round-001/selected", suffix=".parquet"), proc=proc,
                 what="the first selected shard")
    finally:
        kill(proc)
    fingerprint = read_manifest(store)["fingerprint"]
    assert "round-001/generate" not in stages(read_manifest(store))

    # 2. Resumed on two actors and one training worker (grad_accum 1 -> 2 keeps 4 samples per
    #    step); killed mid-training, once Ray Train holds its first checkpoint.
    fewer = ["run", config, "generate.actors=2", "train.workers=1"]
    proc = start(fewer, cwd=tmp_path, log=log)
    try:
        wait_for(lambda: any(p.endswith("checkpoint_manager_snapshot.json")
                             for p in store.list("round-001/train-round-001")),
                 proc=proc, what="the first training checkpoint")
    finally:
        kill(proc)
    text = log.read_text()
    assert "train.workers 2 -> 1: train.grad_accum 1 -> 2 keeps 4 samples" in text, dump(log)
    assert "round-001/generate" in stages(read_manifest(store))
    assert "round-001/train" not in stages(read_manifest(store))

    # 3. A change of results is refused in one line, the run untouched; so is a worker count
    #    that cannot keep 4 samples a step (stored: 2 x grad_accum 2 x 1 worker).
    for i, (change, words) in enumerate([
            (["train.lr=0.5"], "train.lr: 0.0001 -> 0.5"),
            (["train.workers=3", "train.grad_accum=2"], "use train.workers=1 or 2")]):
        refused = tmp_path / f"refused-{i}.log"
        assert run_cli(["run", config, *change], cwd=tmp_path, log=refused) == 2
        errors = [line for line in refused.read_text().splitlines() if line.startswith("mitune:")]
        assert len(errors) == 1 and words in errors[0], refused.read_text()
        assert "run.allow_config_change=true" in errors[0]

    # 4. Finished on the file's two workers x grad_accum 1 (the stored run's 4 samples a step, so
    #    nothing to scale): the one-worker checkpoint is re-partitioned for two.
    assert run_cli(["run", config, "generate.actors=2"], cwd=tmp_path, log=log) == 0, dump(log)
    assert "re-partitioned the checkpoint of 1 workers for 2" in log.read_text(), dump(log)
    manifest = read_manifest(store)
    result = stages(manifest)["round-001/train"]["result"]
    assert result["steps"] == 4 and result["resumed_from"] >= 1, result
    assert manifest["fingerprint"] == fingerprint  # the same run throughout
    train = manifest["config"]["train"]
    assert (train["workers"], train["grad_accum"]) == (2, 1)
    assert manifest["config"]["generate"]["actors"] == 2
