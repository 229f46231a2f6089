"""Typed config: YAML + overrides, one-line errors naming the key and the source."""

import pytest

from mitune_ray.config import (
    Config, identity_changes, keep_effective_batch, load_config, parse_override,
)
from mitune_ray.errors import MituneError


def test_defaults_are_the_reference_settings():
    cfg = Config()
    assert (cfg.generate.candidates, cfg.generate.keep, cfg.generate.steps) == (50, 1, 100)
    assert cfg.generate.guidance == 7.5 and cfg.mi.t_min == 50 and cfg.mi.sigma_min == 0.05
    assert cfg.train.rank == 32 and cfg.train.zero_stage == 2 and cfg.run.chaining == "fresh"


def test_yaml_and_overrides_combine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("generate:\n  candidates: 16\nrun:\n  rounds: 2\n")
    cfg = load_config(path, ["generate.keep=4", "mi.kappa=reference", "prompts.train=[a.txt, b.txt]"])
    assert (cfg.generate.candidates, cfg.generate.keep, cfg.run.rounds) == (16, 4, 2)
    assert cfg.mi.kappa == "reference" and cfg.prompts.train == ["a.txt", "b.txt"]
    assert parse_override("generate.steps=20") == ("generate.steps", 20)
    assert load_config(None, ["train.lr=1e-5"]).train.lr == 1e-5  # YAML 1.1 reads it as text


@pytest.mark.parametrize("override, expected", [
    ("generate.candidats=3", "unknown config key 'generate.candidats'"),
    ("generate.candidates=0", "config key 'generate.candidates' = 0"),
    ("generate.keep=0", "config key 'generate.keep' = 0"),
    ("generate.steps=0", "config key 'generate.steps' = 0"),
    ("train.lr=fast", "config key 'train.lr' = \"fast\""),
    ("model.family=sd4", "config key 'model.family' = \"sd4\""),
    ("run.rounds=-1", "config key 'run.rounds' = -1"),
    ("eval.metrics=[blip_vqa]", "eval.blip_path is not set"),
    ("mi.estimator=trajectory", "for the paper's trajectory estimator set mi.form=orthogonal"),
    ("train.min_timestep=1000", "config key 'train.min_timestep' = 1000"),
])
def test_bad_values_are_one_line_errors_naming_key_and_source(override, expected):
    with pytest.raises(MituneError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert f"override '{override}'" in message


def test_keep_larger_than_candidates_is_refused_whatever_the_order():
    with pytest.raises(MituneError, match="generate.keep=9 exceeds generate.candidates=3"):
        load_config(None, ["generate.keep=9", "generate.candidates=3"])
    assert load_config(None, ["generate.keep=60", "generate.candidates=100"]).generate.keep == 60


def test_bad_files(tmp_path):
    with pytest.raises(MituneError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate: [unclosed\n")
    with pytest.raises(MituneError, match="not valid YAML at line"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("generat:\n  candidates: 3\n")
    with pytest.raises(MituneError, match=f"unknown config key 'generat' \\(from {typo}\\)"):
        load_config(typo)
    wrong = tmp_path / "list.yaml"
    wrong.write_text("- 1\n- 2\n")
    with pytest.raises(MituneError, match="must hold a mapping"):
        load_config(wrong)


def test_fingerprint_tracks_results_not_location_or_evaluation():
    a = load_config(None, ["run.uri=/tmp/a"])
    b = load_config(None, ["run.uri=s3://b/c", "eval.candidates=5", "run.evaluate=true"])
    c = load_config(None, ["generate.candidates=8"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    longer = load_config(None, ["run.rounds=5"])  # extending a run: round r does not change
    assert longer.fingerprint() == a.fingerprint()
    assert load_config(None, ["run.chaining=continue"]).fingerprint() != a.fingerprint()


def test_fingerprint_leaves_out_where_and_how_the_work_runs():
    base = load_config(None, ["train.grad_accum=50"])
    moved = load_config(None, [
        "train.grad_accum=25", "train.workers=2", "generate.actors=16", "generate.max_batch=8",
        "generate.prompts_per_batch=2", "generate.cpus_per_actor=4", "generate.gpus_per_actor=1",
        "generate.compile=true", "train.cpus_per_worker=8", "train.use_gpu=true",
        "train.gradient_checkpointing=true", "train.max_failures=5", "ray.num_cpus=64",
        "storage.region=eu-west-1"])
    assert moved.fingerprint() == base.fingerprint()
    assert moved.identity()["train"]["effective_batch"] == 400
    for results in ("train.lr=2e-4", "train.steps=10", "train.seed=1", "generate.seed=1",
                    "model.path=tiny:sd", "prompts.train=[a.txt]", "mi.estimator=trajectory",
                    "train.grad_accum=10", "train.batch_size=4", "train.zero_stage=3"):
        other = load_config(None, ["train.grad_accum=50", results] + (
            ["mi.form=orthogonal"] if "trajectory" in results else []))
        assert other.fingerprint() != base.fingerprint(), results
        assert identity_changes(base, other), results


def test_other_worker_counts_keep_the_effective_batch_or_are_refused_in_one_line():
    stored = load_config(None, ["train.grad_accum=50"])  # 8 x 50 x 1 = 400
    cfg, note = keep_effective_batch(load_config(None, ["train.grad_accum=50", "train.workers=5"]),
                                     stored)
    assert (cfg.train.grad_accum, cfg.train.workers) == (10, 5) and "50 -> 10" in note
    assert cfg.fingerprint() == stored.fingerprint()
    same = load_config(None, ["train.grad_accum=25", "train.workers=2"])  # the job files' tip
    assert keep_effective_batch(same, stored) == (same, None)
    with pytest.raises(MituneError) as err:
        keep_effective_batch(load_config(None, ["train.grad_accum=50", "train.workers=3"]), stored)
    message = str(err.value)
    assert "\n" not in message and "train.workers=3" in message and "400" in message
    assert "use train.workers=1 or 2 or 5 or 10 or 25 or 50" in message
    # A changed grad_accum or batch size is a change of results: left for the manifest to refuse.
    other = load_config(None, ["train.grad_accum=10", "train.workers=2"])
    assert keep_effective_batch(other, stored) == (other, None)
    assert other.fingerprint() != stored.fingerprint()


def test_filter_drop_is_part_of_a_run_only_where_it_selects():
    from mitune_ray.config import load_config

    def fingerprint(*overrides):
        return load_config(None, list(overrides)).fingerprint()

    # MI's own selection: the filter's share is not read, so it is not part of the run.
    assert fingerprint("generate.filter_drop=0.25") == fingerprint()
    filtered = ["generate.select_by=mi_filter"]
    assert fingerprint(*filtered, "generate.filter_drop=0.25") != fingerprint(*filtered)
