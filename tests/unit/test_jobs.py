"""The job configs in jobs/: each loads through `load_config`, and the `ray job submit` command in
its header runs that very file, resumably (a submission id derived from the run), with a GPU-free
entrypoint and a runtime env that holds no credentials.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from mitune_ray.config import effective_batch, keep_effective_batch, load_config
from mitune_ray.prompts import BUNDLED_PREFIX, BUNDLED_PROMPTS, bundled_prompt_names, resolve_bundled

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
JOB_FILES = sorted(JOBS.glob("*.yaml"))

# Names that must never travel in a runtime env: Ray stores it in plain text and shows it in the dashboard.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)
# The reference's effective batch (per-worker micro-batch x accumulation x workers) per family.
EFFECTIVE_BATCH = {"sd": 8 * 50, "sdxl": 8 * 50, "sd3": 8 * 5 * 6}
# The six categories of the paper's table, in its order.
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")


@dataclass(frozen=True)
class SubmitCommand:
    """The `ray job submit` line of a job file's header, parsed."""

    options: dict[str, str]  # "--submission-id" -> "mitune-..."
    runtime_env: dict
    entrypoint: list[str]  # the tokens after "--"


def header(path: Path) -> list[str]:
    """The leading comment block of a YAML file, without the "#" markers."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def submit_command(path: Path) -> SubmitCommand:
    """Parse the one `ray job submit ...` line of a job file's header."""
    found = [line for line in header(path) if line.startswith("ray job submit ")]
    assert len(found) == 1, f"{path.name}: the header must hold exactly one 'ray job submit' line, found {len(found)}"
    tokens = shlex.split(found[0])
    assert "--" in tokens, f"{path.name}: the submit line has no '--' before the entrypoint"
    split = tokens.index("--")
    flags, entrypoint = tokens[3:split], tokens[split + 1:]
    assert len(flags) % 2 == 0 and all(f.startswith("--") for f in flags[::2]), (
        f"{path.name}: every option of the submit line must be '--flag value': {flags}")
    options = dict(zip(flags[::2], flags[1::2]))
    runtime_env = json.loads(options.get("--runtime-env-json", "{}"))
    return SubmitCommand(options=options, runtime_env=runtime_env, entrypoint=entrypoint)


def override_example(path: Path) -> list[str]:
    """The tokens of the header's `mitune run CONFIG key=value ...` example."""
    found = [line for line in header(path) if line.startswith("mitune run ")]
    assert len(found) == 1, f"{path.name}: the header must hold one 'mitune run ... key=value' override example"
    return shlex.split(found[0])


def dig(data: dict, keys: list[str]):
    for key in keys:
        data = data[key]
    return data


def run_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def secret_looking(env_vars: dict) -> list[str]:
    return sorted(name for name in env_vars if name in CREDENTIAL_ENV or SECRET_LOOKING.search(name))


def test_the_five_configs_are_present():
    assert [p.name for p in JOB_FILES] == [
        "sd21_base_compbench.yaml", "sd21_base_compbench_paper.yaml", "sd21_base_diffusiondb.yaml",
        "sd35_medium_compbench.yaml", "sdxl_compbench.yaml",
    ]


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_config_loads_with_placeholder_locations(path):
    cfg = load_config(path)
    assert cfg.run.uri == f"s3://YOUR-BUCKET/runs/{run_name(cfg.run.uri)}"
    assert cfg.model.path.startswith("s3://YOUR-BUCKET/models/")
    assert cfg.model.family in ("sd", "sdxl", "sd3")  # explicit, so a wrong folder fails fast
    assert cfg.prompts.train and cfg.prompts.eval
    for source in cfg.prompts.train + cfg.prompts.eval:
        assert source.startswith(("s3://YOUR-BUCKET/data/", BUNDLED_PREFIX)), source


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_header_submit_command_runs_this_config_resumably(path):
    cfg = load_config(path)
    cmd = submit_command(path)
    assert cmd.entrypoint == ["python", "-m", "mitune_ray.cli", "run", f"jobs/{path.name}"]
    assert cmd.options["--address"].startswith("http://") and cmd.options["--address"].endswith(":8265")
    # One id per run: a resubmission of the same run is refused or resumes, never duplicates.
    assert cmd.options["--submission-id"] == f"mitune-{run_name(cfg.run.uri)}"
    assert cmd.options["--entrypoint-num-gpus"] == "0"
    assert cmd.runtime_env["working_dir"] == "."
    assert secret_looking(cmd.runtime_env.get("env_vars", {})) == []
    assert all(isinstance(v, str) for v in cmd.runtime_env.get("env_vars", {}).values())
    text = " ".join(header(path))
    assert "resume" in text and "refuses" in text  # the header says why the id is what it is


def test_secret_check_is_not_vacuous():
    env = {"AWS_ENDPOINT_URL": "x", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SESSION_TOKEN": "t", "MY_PASSWORD": "p", "HF_HUB_OFFLINE": "1"}
    assert secret_looking(env) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                   "MY_PASSWORD"]


def test_submission_ids_and_run_uris_are_unique():
    ids = [submit_command(p).options["--submission-id"] for p in JOB_FILES]
    uris = [load_config(p).run.uri for p in JOB_FILES]
    assert len(set(ids)) == len(ids) and len(set(uris)) == len(uris)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_override_example_is_valid_and_changes_the_config(path):
    tokens = override_example(path)
    assert tokens[:3] == ["mitune", "run", f"jobs/{path.name}"]
    overrides = tokens[3:]
    assert overrides and all("=" in o for o in overrides)
    base, changed = load_config(path).to_dict(), load_config(path, overrides).to_dict()
    for text in overrides:
        keys = text.split("=", 1)[0].split(".")
        assert dig(changed, keys) != dig(base, keys), f"{path.name}: override {text} is a no-op"
    # A changed run gets its own place on S3 (and so its own submission id).
    assert any(o.startswith("run.uri=") for o in overrides)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_gpu_requests_are_explicit(path):
    # An autoscaling cluster starts with no GPU node: "detect GPUs" would see none and run on CPU.
    cfg = load_config(path)
    assert cfg.generate.gpus_per_actor == 1
    assert cfg.train.use_gpu is True


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_training_keeps_the_reference_effective_batch(path):
    cfg = load_config(path)
    t = cfg.train
    assert t.batch_size * t.grad_accum * t.workers == EFFECTIVE_BATCH[cfg.model.family]
    assert (t.rank, t.zero_stage) == (32, 2)


def test_the_tips_on_worker_counts_keep_the_effective_batch():
    # e.g. "to use 2 GPUs at the same effective batch: train.workers=2 train.grad_accum=25": true
    # for a new run, and a resumed run given the worker count alone gets that grad_accum.
    tips = [(path, int(w), int(a)) for path in JOB_FILES for w, a in
            re.findall(r"train\.workers=(\d+) train\.grad_accum=(\d+)", path.read_text())]
    assert tips
    for path, workers, accum in tips:
        job = load_config(path)
        tip = load_config(path, [f"train.workers={workers}", f"train.grad_accum={accum}"])
        assert effective_batch(tip.train) == effective_batch(job.train), path.name
        resumed, _ = keep_effective_batch(load_config(path, [f"train.workers={workers}"]), job)
        assert resumed.train.grad_accum == accum and resumed.fingerprint() == job.fingerprint()


@pytest.mark.parametrize("name", ["sd21_base_compbench.yaml", "sd21_base_compbench_paper.yaml"])
def test_sd21_compbench_uses_the_papers_settings(name):
    cfg = load_config(JOBS / name)
    g, m, t = cfg.generate, cfg.mi, cfg.train
    assert (g.candidates, g.keep, g.steps, g.guidance, g.scheduler) == (50, 1, 100, 7.5, "ddpm")
    assert m.t_min == 50
    assert (t.lr, t.batch_size, t.grad_accum, t.max_grad_norm, t.steps) == (1e-4, 8, 50, 1.0, 300)
    assert cfg.run.rounds >= 2 and cfg.run.chaining == "fresh"


def test_jobs_select_by_point_wise_mi_except_the_paper_reproduction():
    for path in JOB_FILES:
        m = load_config(path).mi
        if path.name == "sd21_base_compbench_paper.yaml":  # the paper's selector, exactly
            assert (m.estimator, m.form, m.kappa, m.reduction) == (
                "trajectory", "orthogonal", "reference", "mean")
            assert "reproducing the paper's exact settings" in " ".join(header(path))
        else:
            assert (m.estimator, m.form) == ("renoise", "standard"), path.name


def test_sd35_uses_the_flow_settings_and_its_own_scheduler():
    cfg = load_config(JOBS / "sd35_medium_compbench.yaml")
    assert cfg.model.family == "sd3" and cfg.generate.scheduler == "model"
    assert (cfg.mi.sigma_min, cfg.mi.velocity) == (0.05, "conditional")
    t = cfg.train
    assert (t.lr, t.warmup_steps, t.max_grad_norm, t.steps) == (5e-6, 400, 5e-3, 2000)


def test_diffusiondb_config_scales_out():
    small = load_config(JOBS / "sd21_base_compbench.yaml")
    cfg = load_config(JOBS / "sd21_base_diffusiondb.yaml")
    assert cfg.prompts.train == ["s3://YOUR-BUCKET/data/diffusiondb/metadata.parquet"]
    assert cfg.generate.actors > small.generate.actors
    assert cfg.generate.prompts_per_batch > small.generate.prompts_per_batch


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_prompt_sources_are_bundled_or_uploaded_as_the_header_says(path):
    """A bundled:CORPUS/NAME source is a file of the repository that the package ships (package
    data, beside its README and licence); an s3:// source is uploaded by a command in the header.
    Nothing is read from outside the repository."""
    cfg = load_config(path)
    text = "\n".join(header(path))
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "../" not in path.read_text(), f"{path.name} points outside the repository"
    for source in cfg.prompts.train + cfg.prompts.eval:
        if source.startswith(BUNDLED_PREFIX):
            assert source in bundled_prompt_names()
            file = resolve_bundled(source)
            in_repo = REPO / "mitune_ray" / "assets" / "prompts" / file.relative_to(BUNDLED_PROMPTS)
            assert in_repo.is_file() and in_repo.stat().st_size > 0, f"{path.name}: {source} -> {in_repo}"
            assert any(fnmatch.fnmatch(file.name, p) for p in setuptools["package-data"]["*"]), (
                f"{path.name}: {file.name} is not package data in pyproject.toml")
            assert (in_repo.parent / "README.md").is_file() and list(in_repo.parent.glob("LICENSE*"))
        else:  # only DiffusionDB's 2M-row metadata is too large to ship
            assert source.endswith(".parquet"), f"{path.name}: {source} should be a bundled list"
            assert re.search(rf"aws s3 cp \S+ {re.escape(source)}$", text, re.M), (
                f"{path.name}: the header does not upload {source}")
    if "compbench" in path.name:
        assert cfg.prompts.train == [f"bundled:t2i-compbench/{c}_train" for c in COMPBENCH_CATEGORIES]
        assert cfg.prompts.eval == [f"bundled:t2i-compbench/{c}_val" for c in COMPBENCH_CATEGORIES]
        assert "bundled:t2i-compbench" in text and "mitune prompts" in text
