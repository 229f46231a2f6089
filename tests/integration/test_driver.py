"""The multi-round driver end to end: S3 state, SIGKILL and resume, `ray job submit`, export."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from mitune_ray.storage import Store
from tests.runs import dump, kill, read_manifest, run_cli, stages, start, tiny_run_config, wait_for


def selected_ids(store: Store, rnd: str) -> list[str]:
    parts = store.list(f"{rnd}/selected", suffix=".parquet")
    return pq.read_table([store.path(p) for p in parts], columns=["prompt_id"],
                         filesystem=store.filesystem).column("prompt_id").to_pylist()


def test_two_rounds_on_s3_extended_then_resumed_after_a_sigkill_in_round_2_generation(
        tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/runs/two-rounds"
    store = Store(uri)
    config = tiny_run_config(tmp_path, uri, rounds=1)
    log = tmp_path / "driver.log"
    assert run_cli(["run", str(config)], cwd=tmp_path, log=log) == 0, dump(log)
    assert read_manifest(store)["config"]["run"]["rounds"] == 1
    finished = stages(read_manifest(store))

    # A finished run is extended by asking for more rounds (`run.rounds` is not part of the
    # config's fingerprint); killed in round 2's generation, the same command resumes it.
    extend = ["run", str(config), "run.rounds=2"]
    proc = start(extend, cwd=tmp_path, log=log)
    try:
        wait_for(lambda: store.list("round-002/selected", suffix=".parquet"), proc=proc,
                 what="round 2's first selected shard")
    finally:
        kill(proc)
    before = stages(read_manifest(store))
    assert "round-001/train" in before and "round-002/generate" not in before, dump(log)
    assert before == finished  # the extension redid nothing of round 1
    round1_adapter = store.read_bytes("round-001/adapter/pytorch_lora_weights.safetensors")

    assert run_cli(extend, cwd=tmp_path, log=log) == 0, dump(log)
    after = stages(read_manifest(store))
    for name in ("prompts", "round-001/generate", "round-001/train"):
        assert after[name]["committed_at"] == before[name]["committed_at"], f"{name} was redone"
    assert read_manifest(store)["config"]["run"]["rounds"] == 2
    assert store.read_bytes("round-001/adapter/pytorch_lora_weights.safetensors") == round1_adapter
    kept = after["prompts"]["train"]["train"]
    for rnd in ("round-001", "round-002"):
        ids = selected_ids(store, rnd)
        assert len(ids) == kept == len(set(ids)) == after[f"{rnd}/generate"]["rows"]
    assert "round-002/train" in after
    assert read_manifest(store)["lease"] is None

    # Evaluated afterwards (`mitune eval`), reported into the bucket (`mitune report`).
    assert run_cli(["eval", uri, "eval.metrics=[mi]"], cwd=tmp_path, log=log) == 0, dump(log)
    evaluated = stages(read_manifest(store))
    assert {"eval-base/evaluate", "round-001/evaluate", "round-002/evaluate"} <= set(evaluated)
    assert evaluated["round-002/evaluate"]["summary"]["images"] == 2
    assert run_cli(["report", uri], cwd=tmp_path, log=log) == 0, dump(log)
    html = store.read_bytes("report/index.html").decode()
    assert "round-002" in html and store.list("report/images", suffix=".png")

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in log.read_text()
    for name in ("manifest.json", "report/index.html", "prompts/train/report.json"):
        assert secret not in store.read_bytes(name).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray head started with `ray start`, stopped by its own address (not `ray stop`
    alone, which would stop every cluster on the machine)."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    # Its own agent port too: the default (52365) is taken if another cluster runs here, and
    # then `ray job submit` finds "no available agent".
    port, dash, agent = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    temp = f"/tmp/ray-head-{os.getpid()}-{port}"
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=4",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    f"--dashboard-agent-listen-port={agent}",
                    f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while True:  # the job API answers a little after `ray start` returns
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "the Ray dashboard did not come up"
            time.sleep(1)
    yield address, env
    import psutil

    # Only this head's processes (they all name its temp dir); `ray stop` would stop every
    # cluster on the machine, including other tests'.
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp in part for part in (proc.info["cmdline"] or [])):
            try:
                proc.kill()
            except psutil.Error:
                pass


def test_ray_job_submit_runs_a_run_to_success_and_its_adapters_load(tmp_path, ray_head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from mitune_ray.testing.tiny_metrics import save_tiny_blip_vqa, save_tiny_clip
    from tests.runs import PROMPTS

    address, env = ray_head
    run_dir = tmp_path / "run"
    words = {w for p in PROMPTS + ["a green square", "a red circle to the left of a blue triangle"]
             for w in p.split()}
    blip = save_tiny_blip_vqa(tmp_path / "blip", words=words)
    clip = save_tiny_clip(tmp_path / "clip")
    hps = save_tiny_clip(tmp_path / "hps", seed=1)
    config = tiny_run_config(
        tmp_path, str(run_dir), rounds=1, run={"evaluate": True},
        eval={"metrics": ["mi", "shapes", "blip_vqa", "clip_score", "hps"],
              "blip_path": str(blip), "clip_path": str(clip), "hps_path": str(hps)})
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    submission = "mitune-job-test"
    submit = subprocess.run([ray_bin, "job", "submit", "--address", address, "--submission-id",
                             submission, "--no-wait", "--entrypoint-num-cpus", "0", "--",
                             sys.executable, "-m", "mitune_ray.cli", "run", str(config)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 900
    status = client.get_job_status(submission)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(2)
        status = client.get_job_status(submission)
    logs = client.get_job_logs(submission)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "1/1 rounds trained" in logs
    # Resubmitting the same submission id is refused: a run cannot be started twice.
    again = subprocess.run([ray_bin, "job", "submit", "--address", address, "--submission-id",
                            submission, "--no-wait", "--", "true"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode != 0
    manifest = read_manifest(Store(str(run_dir)))
    assert {"prompts", "round-001/generate", "round-001/train"} <= set(stages(manifest))
    assert manifest["config"]["model"]["family"] == "sd"

    out = tmp_path / "exported"
    export = subprocess.run([sys.executable, "-m", "mitune_ray.cli", "export", str(run_dir),
                             "--round", "1", str(out)], capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    # The export carries a config peft reads (the model as configured: tiny:sd) and a model card;
    # DeepSpeed's zero_to_fp32.py, which cannot read safetensors states, is in no run folder.
    from peft import PeftConfig

    peft_config = PeftConfig.from_pretrained(str(out))
    assert peft_config.use_dora and peft_config.base_model_name_or_path == "tiny:sd"
    card = (out / "README.md").read_text()
    assert "round 1 of 1" in card and "pipe.load_lora_weights('exported')" in card
    assert list(run_dir.rglob("*optim_states.pt")) and not list(run_dir.rglob("zero_to_*.py"))
    from mitune_ray.families import load_pipeline
    from mitune_ray.models import resolve_model_path
    import torch

    pipe, _ = load_pipeline(resolve_model_path("tiny:sd"))
    generator = torch.Generator().manual_seed(0)
    base = pipe("a red cube", num_inference_steps=2, generator=generator, output_type="np").images
    pipe.load_lora_weights(str(out))
    generator = torch.Generator().manual_seed(0)
    tuned = pipe("a red cube", num_inference_steps=2, generator=generator, output_type="np").images
    assert abs(base - tuned).max() > 0
    status = subprocess.run([sys.executable, "-m", "mitune_ray.cli", "status", str(run_dir)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "round-001/train" in status.stdout

    # Evaluation ran with every metric, base and tuned on the same prompts and seeds.
    base = manifest["stages"]["eval-base/evaluate"]["summary"]
    tuned = manifest["stages"]["round-001/evaluate"]["summary"]
    for summary in (base, tuned):
        assert summary["prompts"] == 2 and summary["images"] == 2
        assert set(summary["metrics"]) == {"mi", "shapes_correct", "shapes_fraction", "blip_vqa",
                                           "clip_score", "hps"}
        assert 0.0 <= summary["metrics"]["blip_vqa"] <= 1.0
        # Which noun-phrase chunker chose BLIP-VQA's questions (spaCy is not installed here).
        assert summary["metric_info"] == {"blip_vqa": {"noun_phrase_chunker": "rules"}}
    written = json.loads((run_dir / "round-001" / "eval" / "metrics.json").read_text())
    assert written["metric_info"]["blip_vqa"]["noun_phrase_chunker"] == "rules"
    assert "blip_vqa: noun phrase chunker rules" in card
    seeds = [pq.read_table(str(run_dir / v / "eval" / "scores.parquet")).column("seed").to_pylist()
             for v in ("eval-base", "round-001")]
    assert seeds[0] == seeds[1]
    report = subprocess.run([sys.executable, "-m", "mitune_ray.cli", "report", str(run_dir)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    html = (run_dir / "report" / "index.html").read_text()
    assert "blip_vqa" in html and "<svg" in html
    assert len(list((run_dir / "report" / "images").glob("*.png"))) >= 4
