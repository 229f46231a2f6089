"""The `mitune` command line: bad input ends with one line, a non-zero exit, and nothing committed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.s3server import SECRET_KEY

TINY = ["model.path=tiny:sd", "run.rounds=1", "mi.renoise_draws=4"]  # the loop, not the MI


def mitune(*args, cwd, env=None, timeout=300):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "mitune_ray.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("mitune: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_committed(run: Path):
    manifest = run / "manifest.json"
    if manifest.exists():
        assert json.loads(manifest.read_text())["stages"] == {}
    assert not list(run.glob("round-*")) if run.exists() else True


def test_config_show_prints_the_resolved_config(tmp_path):
    proc = mitune("config", "show", "generate.candidates=8", cwd=tmp_path)
    assert proc.returncode == 0
    assert "candidates: 8" in proc.stdout and "t_min: 50" in proc.stdout


@pytest.mark.parametrize("args, fragments", [
    (["generate.candidates=-1"], ["generate.candidates", "-1", "greater than or equal to 1"]),
    (["generate.steps=0"], ["generate.steps", "= 0"]),
    (["generate.keep=0"], ["generate.keep"]),
    (["generate.keep=8", "generate.candidates=4"], ["generate.keep=8 exceeds generate.candidates=4"]),
    (["generate.candidatez=4"], ["unknown config key 'generate.candidatez'"]),
    (["train.rank=big"], ["train.rank", "big"]),
    (["model.family=sd5"], ["model.family"]),
    (["model.path=/no/such/model"], ["/no/such/model does not exist"]),
])
def test_bad_configuration_is_refused_before_anything_runs(tmp_path, args, fragments):
    run = tmp_path / "run"
    proc = mitune("run", f"run.uri={run}", *args, cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert not run.exists()


def test_invalid_yaml_and_unknown_keys_in_a_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {uri: x\n")
    assert_one_line_error(mitune("run", str(bad), cwd=tmp_path), "bad.yaml is not valid YAML")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  ranks: 4\n")
    assert_one_line_error(mitune("run", str(typo), cwd=tmp_path), "unknown config key 'train.ranks'",
                          "typo.yaml")


def test_a_corrupted_model_file_is_named(tmp_path, tiny_folder):
    model = Path(shutil.copytree(tiny_folder("sd"), tmp_path / "model"))
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:500])
    run = tmp_path / "run"
    proc = mitune("run", f"run.uri={run}", f"model.path={model}", cwd=tmp_path)
    assert_one_line_error(proc, str(weights), "corrupted")
    assert_nothing_committed(run)


def _corpus_cases(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"a red cube\ncaf\xe9 on a table\n")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"a red cube\nbad\x00line\n")
    noprompt = tmp_path / "meta.parquet"
    pq.write_table(pa.table({"text": ["a"], "seed": [1]}), noprompt)
    return [(empty, ["no prompts"]), (blank, ["no prompts"]), (latin, ["latin.txt line 2"]),
            (nul, ["nul.txt line 2"]), (noprompt, ["meta.parquet", "prompt"])]


def test_bad_corpora_fail_with_the_file_and_line_and_commit_no_round(tmp_path):
    for path, fragments in _corpus_cases(tmp_path):
        run = tmp_path / f"run-{path.stem}"
        proc = mitune("run", f"run.uri={run}", *TINY, f"prompts.train=[{path}]", cwd=tmp_path)
        assert_one_line_error(proc, *fragments)
        assert_nothing_committed(run)


def test_status_export_and_eval_of_a_missing_run(tmp_path):
    assert_one_line_error(mitune("status", str(tmp_path / "nope"), cwd=tmp_path), "no run at")
    assert_one_line_error(mitune("export", str(tmp_path / "nope"), "--round", "1", "out",
                                 cwd=tmp_path), "no run at")
    assert_one_line_error(mitune("eval", str(tmp_path / "nope"), cwd=tmp_path), "no run at")
    for bad in ("0", "-3", "nan", "inf"):
        assert_one_line_error(mitune("eval", str(tmp_path / "nope"), "--guidance", bad,
                                     cwd=tmp_path), f"--guidance {float(bad)!r}", "above 0")
    assert not (tmp_path / "nope").exists()


def test_missing_bucket_and_wrong_credentials(tmp_path, s3_server, s3_bucket):
    proc = mitune("run", "run.uri=s3://no-such-bucket-xyz/run", *TINY, cwd=tmp_path)
    assert_one_line_error(proc, "s3://no-such-bucket-xyz/run", "bucket does not exist")
    proc = mitune("run", f"run.uri=s3://{s3_bucket}/run", *TINY, cwd=tmp_path,
                  env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert_one_line_error(proc, "access denied")
    assert SECRET_KEY not in proc.stderr + proc.stdout and "not-the-secret" not in proc.stderr


def test_version_prints_the_package_version(capsys):
    from mitune_ray import __version__
    from mitune_ray.cli import main

    with pytest.raises(SystemExit) as err:
        main(["--version"])
    assert err.value.code == 0 and capsys.readouterr().out.strip() == f"mitune_ray {__version__}"
