"""The bench's statistics: paired contrasts, the loop selection efficiency and the power analysis,
on synthetic per-prompt rates whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mitune_ray.errors import MituneError
from mitune_ray.shapes.bench import main
from mitune_ray.shapes.contrasts import (
    contrast, loop_efficiency, paired_gain, pilot_rates, power_analysis, power_lines,
    replicates_needed, statistics, variance_components,
)


def _series(replicates: int, prompts: int, effects: dict[str, float], *, between: float = 0.0,
            noise: float = 0.1, seed: int = 0) -> dict:
    """{replicate: {arm: {prompt: rate}}}: random's rate plus each arm's effect, plus a shift per
    replicate and arm (sd `between`) and per-prompt noise (sd `noise`)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(1, replicates + 1):
        base = rng.uniform(0.3, 0.6, size=prompts)
        out[str(k)] = {arm: {f"p{i}": float(v) for i, v in enumerate(
            base + effect + rng.normal(0, between) + rng.normal(0, noise, size=prompts))}
            for arm, effect in effects.items()}
    return out


def test_paired_gain_bootstraps_over_prompts():
    g = paired_gain({"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.5},
                    {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0})
    assert g["gain"] == 0.375 and g["prompts"] == 4
    assert 0.0 <= g["ci"][0] <= g["gain"] <= g["ci"][1] <= 1.0
    assert (g["base_rate"], g["tuned_rate"]) == (0.375, 0.75)


def test_contrasts_are_paired_per_replicate_and_pooled_over_the_series():
    rates = _series(4, 60, {"random": 0.0, "checker": 0.08, "anti": -0.05, "mi": 0.04})
    stats = statistics(rates)
    assert set(stats["contrasts"]) == {"checker-random", "checker-anti", "mi-random"}
    c = stats["contrasts"]["checker-anti"]
    assert c["diff"] == pytest.approx(0.13, abs=0.03) and c["replicates"] == 4
    assert 0.0 < c["ci"][0] < c["diff"] < c["ci"][1]
    for rep, entry in c["per_replicate"].items():  # each replicate's own paired difference
        assert entry["diff"] == pytest.approx(entry["checker"] - entry["anti"])
        assert entry["prompts"] == 60 and entry["ci"][0] < entry["diff"] < entry["ci"][1]
    assert c["diff"] == pytest.approx(np.mean([e["diff"] for e in c["per_replicate"].values()]))
    e = stats["efficiency"]
    assert e["efficiency"] == pytest.approx(0.5, abs=0.15) and e["replicates"] == 4
    assert e["ci"][0] < e["efficiency"] < e["ci"][1]
    assert e["efficiency"] == pytest.approx((e["mi"] - e["random"]) / (e["checker"] - e["random"]))
    # Only the prompts both arms evaluated are compared; arms not run give no contrast.
    del rates["1"]["anti"]["p0"]
    assert contrast(rates, "checker", "anti")["per_replicate"]["1"]["prompts"] == 59
    assert contrast(rates, "checker", "nope") is None
    assert loop_efficiency({"1": {"mi": {"p": 0.5}, "random": {"p": 0.5}}}) is None


def test_the_filter_arm_is_compared_with_random_and_with_mi_when_it_ran():
    rates = _series(2, 40, {"random": 0.0, "mi": 0.02, "mi_filter": 0.05})
    contrasts = statistics(rates)["contrasts"]
    assert set(contrasts) == {"mi-random", "mi_filter-random", "mi_filter-mi"}
    assert contrasts["mi_filter-mi"]["diff"] == pytest.approx(
        contrasts["mi_filter-random"]["diff"] - contrasts["mi-random"]["diff"])


def test_the_efficiency_interval_widens_with_replicate_spread():
    effects = {"random": 0.0, "checker": 0.1, "mi": 0.05}
    calm = loop_efficiency(_series(6, 80, effects, between=0.0, seed=1))
    spread = loop_efficiency(_series(6, 80, effects, between=0.05, seed=1))
    assert (spread["ci"][1] - spread["ci"][0]) > 1.5 * (calm["ci"][1] - calm["ci"][0])
    # No room to select (the oracle no better than random): no efficiency, not a division by 0.
    flat = {"1": {arm: {"p": 0.5, "q": 0.25} for arm in ("mi", "random", "checker")}}
    assert math.isnan(loop_efficiency(flat)["efficiency"])


def test_variance_components_recover_known_within_and_between_spread():
    rng = np.random.default_rng(4)
    groups = [rng.normal(shift, 0.3, size=400) for shift in rng.normal(0.0, 0.05, size=40)]
    parts = variance_components(groups)
    assert parts["within"] == pytest.approx(0.09, rel=0.1)
    assert parts["between"] == pytest.approx(0.0025, rel=0.5)
    assert (parts["pilot_replicates"], parts["pilot_prompts"], parts["between_estimated"]) == (
        40, 400, True)
    one = variance_components(groups[:1])
    assert one["between"] == 0.0 and not one["between_estimated"]


def test_replicates_needed_follows_the_two_level_variance():
    # Between 0.001, within 0.1 at 100 prompts: per-replicate variance 0.001 + 2 * 0.1 / 100 =
    # 0.003; an effect of 0.04 needs 0.003 * ((1.96 + 0.8416) / 0.04)^2 = 14.7 -> 15 replicates.
    assert replicates_needed(0.04, within=0.1, between=0.001, prompts=100) == 15
    assert replicates_needed(0.08, within=0.1, between=0.001, prompts=100) == 4  # a quarter
    assert replicates_needed(0.04, within=0.1, between=0.0, prompts=200) == 5  # more prompts
    assert replicates_needed(0.001, within=0.1, between=0.01, prompts=100) is None
    with pytest.raises(MituneError, match="target effect"):
        replicates_needed(0.0, within=0.1, between=0.0, prompts=100)


def test_power_analysis_reads_a_bench_result_and_a_bigger_effect_needs_fewer_replicates(tmp_path):
    rates = _series(3, 50, {"random": 0.0, "checker": 0.06, "anti": -0.04, "mi": 0.02},
                    between=0.02, noise=0.3)
    result = {"mitune": {"replicates": {rep: {"arms": {arm: {"per_prompt": {"1": r}}
                                                       for arm, r in arms.items()}}
                                        for rep, arms in rates.items()}}}
    assert pilot_rates(result) == rates
    power = power_analysis(pilot_rates(result))
    assert set(power) == {"checker-anti", "checker-random"}
    anti, rand = power["checker-anti"], power["checker-random"]
    assert (anti["target"], rand["target"]) == (0.08, 0.04)
    assert anti["pilot_replicates"] == 3 and anti["pilot_prompts"] == 50
    for n in ("64", "128", "200"):
        assert rand["replicates_needed"][n] is None or (
            anti["replicates_needed"][n] <= rand["replicates_needed"][n])
    assert anti["replicates_needed"]["200"] <= anti["replicates_needed"]["64"]
    lines = power_lines(power)
    assert len(lines) == 2 and lines[0].startswith("[power] checker-anti +0.08: pilot 3 replicates")
    # The CLI: --power prints the same lines from a results file, and runs nothing.
    path = tmp_path / "pilot.json"
    path.write_text(json.dumps(result))
    assert main(["--power", str(path)]) == 0
    with pytest.raises(MituneError, match="no per-prompt rates"):
        path.write_text(json.dumps({"mitune": {"mi": {"rounds": {}}}}))  # an earlier bench's
        main(["--power", str(path)])
    with pytest.raises(MituneError, match="cannot read it as JSON"):
        main(["--power", str(tmp_path / "missing.json")])
