"""`mitune shapes bench --resume-from`: a series kept in a results file continues elsewhere."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from mitune_ray.errors import MituneError
from mitune_ray.shapes.bench import (
    Scale, arm_config, arm_from_results, main, mitune_series, resumable_series,
)


def _arm(rate: float) -> dict:
    rates = {"p0": rate, "p1": 1.0 - rate}
    return {"per_prompt": {"base": {"p0": 0.5, "p1": 0.5}, "1": rates},
            "per_prompt_control": {"base": {"p0": 0.5, "p1": 0.5}, "1": rates},
            "rounds": {"1": {"gain": 0.0}}, "finished_earlier": False}


def _results(tmp_path, scale: Scale, **changes) -> str:
    stored = asdict(scale)
    series = {"arms": ["checker", "random"], "replicates": {
        "1": {"seeds": {"generate": 0, "train": 0}, "arms": {"checker": _arm(1.0),
                                                            "random": _arm(0.5)}},
        "2": {"seeds": {"generate": 1, "train": 1}, "arms": {"checker": _arm(0.75)}}}}
    path = tmp_path / "kept.json"
    path.write_text(json.dumps({"model": "bundled:shapes", "scale": stored | changes,
                                "mitune": series}))
    return str(path)


def test_finished_arms_come_from_the_file_and_only_the_others_run(tmp_path, monkeypatch):
    """The series' orchestration: the runs themselves are the integration tier's
    (tests/integration/shapes/test_bench.py); here `run_arm` only records what would run."""
    from mitune_ray.shapes import bench

    scale = Scale(rounds=1, control_guidance=5.0, eval_split="val", train_prompts=96)
    earlier = resumable_series(_results(tmp_path, scale), "bundled:shapes", scale)
    ran: list[tuple[int, str]] = []

    def run_arm(model_path, root, arm, replicate, scale, quick, log):
        ran.append((replicate, arm))
        return _arm(0.25)

    monkeypatch.setattr(bench, "run_arm", run_arm)
    logged: list[str] = []
    series = mitune_series("bundled:shapes", str(tmp_path / "out"), scale, quick=False,
                           log=logged.append, arms=("checker", "random"), replicates=2,
                           earlier=earlier)
    assert ran == [(2, "random")]  # the one arm the file lacks
    read = [line for line in logged if "read from it" in line]
    assert len(read) == 3 and "replicate 2, select by checker" in read[2]
    arms = series["replicates"]["1"]["arms"]
    assert arms["random"]["per_prompt"]["1"] == {"p0": 0.5, "p1": 0.5}
    assert arms["checker"]["finished_earlier"] and not series["replicates"]["2"]["arms"][
        "random"]["finished_earlier"]
    contrast = series["statistics"]["primary_endpoint"]["contrasts"]["checker-random"]
    assert contrast["replicates"] == 2 and contrast["per_replicate"]["2"]["diff"] == \
        pytest.approx(0.0)  # 0.75 - 0.25 and 0.25 - 0.75 over the two prompts
    assert not any("not paired" in line for line in logged)


def test_an_arm_without_every_round_or_with_other_seeds_is_not_taken():
    earlier = {"replicates": {"1": {"seeds": {"generate": 0, "train": 0},
                                    "arms": {"mi": _arm(0.5)}},
                              "2": {"seeds": {"generate": 5, "train": 5},
                                    "arms": {"mi": _arm(0.5)}}}}
    assert arm_from_results(earlier, 1, "mi", Scale(rounds=1))["finished_earlier"]
    assert arm_from_results(earlier, 1, "mi", Scale(rounds=2)) is None  # round 2 not run there
    assert arm_from_results(earlier, 2, "mi", Scale(rounds=1)) is None  # not replicate 2's seeds
    assert arm_from_results(earlier, 1, "anti", Scale(rounds=1)) is None
    no_control = {"replicates": {"1": {"seeds": {"generate": 0, "train": 0}, "arms": {
        "mi": {"per_prompt": {"1": {}}}}}}}
    assert arm_from_results(no_control, 1, "mi", Scale(rounds=1, control_guidance=5.0)) is None
    assert arm_from_results(None, 1, "mi", Scale(rounds=1)) is None


@pytest.mark.parametrize("changes, words", [
    ({"keep": 1}, "keep=1 (here 2)"), ({"guidance": 7.5}, "guidance=7.5 (here 5.0)")])
def test_a_file_of_other_settings_is_refused_in_one_line(tmp_path, changes, words):
    path = _results(tmp_path, Scale(), **changes)
    with pytest.raises(MituneError) as err:
        resumable_series(path, "bundled:shapes", Scale())
    message = str(err.value)
    assert message.startswith(f"--resume-from {path}: its runs used other workload settings")
    assert words in message and "\n" not in message


def test_a_file_without_a_setting_added_later_ran_with_its_old_value(tmp_path):
    scale = Scale(candidate_guidance=0.0, eval_split="eval")  # what series ran before the fields
    kept = json.loads(open(_results(tmp_path, scale)).read())
    del kept["scale"]["eval_split"], kept["scale"]["candidate_guidance"]
    del kept["scale"]["filter_drop"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(kept))
    assert resumable_series(str(path), "bundled:shapes", scale)["arms"] == ["checker", "random"]
    with pytest.raises(MituneError, match="candidate_guidance=0.0 \\(here 7.5\\)"):
        resumable_series(str(path), "bundled:shapes", Scale(eval_split="eval"))
    del kept["scale"]["min_timestep"]  # older than any series: nothing to check it against
    path.write_text(json.dumps(kept))
    with pytest.raises(MituneError, match="written by an earlier bench, without the settings "
                                          "min_timestep; .* rerun them"):
        resumable_series(str(path), "bundled:shapes", scale)


def test_another_model_a_bad_file_or_no_series_is_refused(tmp_path):
    path = _results(tmp_path, Scale())
    with pytest.raises(MituneError, match="its runs tuned model 'bundled:shapes', this bench "
                                          "'models/other'"):
        resumable_series(path, "models/other", Scale())
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(MituneError, match="cannot read it as JSON"):
        resumable_series(str(broken), "bundled:shapes", Scale())
    agreement_only = tmp_path / "agreement.json"
    agreement_only.write_text(json.dumps({"model": "bundled:shapes", "agreement": {}}))
    with pytest.raises(MituneError, match="holds no MI-TUNE series"):
        resumable_series(str(agreement_only), "bundled:shapes", Scale())


def test_the_filter_arm_runs_only_when_named_and_unknown_arms_are_refused(tmp_path):
    from mitune_ray.shapes.bench import ARMS

    assert "mi_filter" not in ARMS  # the series' default arms are the registered four
    cfg = arm_config(str(tmp_path), "mi_filter", "bundled:shapes", Scale(), quick=False)
    assert (cfg.generate.select_by, cfg.generate.filter_drop) == ("mi_filter", 0.5)
    quarter = arm_config(str(tmp_path), "mi_filter", "bundled:shapes", Scale(filter_drop=0.25),
                         quick=False)
    assert quarter.generate.filter_drop == 0.25
    # The same candidates as the other arms: only the selection differs.
    mi = arm_config(str(tmp_path), "mi", "bundled:shapes", Scale(), quick=False).to_dict()
    other = cfg.to_dict()
    for c in (mi, other):
        c["run"].pop("uri"), c["generate"].pop("select_by")
    assert other == mi
    with pytest.raises(MituneError, match="names unknown arms \\['best'\\]; use some of mi, "
                                          "random, checker, anti, mi_filter"):
        main(["--arms", "mi,best", "--out", str(tmp_path / "out")])
