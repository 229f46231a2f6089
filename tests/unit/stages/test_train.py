"""The training stage's stored inputs: a resumed training is the same training, or refused."""

from __future__ import annotations

import pytest

from mitune_ray.config import load_config
from mitune_ray.errors import MituneError
from mitune_ray.stages.train import INPUTS_REL, stored_inputs
from mitune_ray.storage import Store


def _inputs(*overrides: str) -> dict:
    """A training's inputs as the stage stores them (`train._inputs`), from a config."""
    cfg = load_config(None, list(overrides))
    return {"run_name": "train-round-001", "model_path": "tiny:sd", "family": "sd",
            "resolution": None, "selected": ["selected/part-0.parquet"], "init_adapter": None,
            "base_adapters": [], "train": cfg.train.model_dump(mode="json"),
            "validation_prompts": ["p0"],
            "validation_sampling": {"generate": cfg.generate.model_dump(mode="json"),
                                    "mi": cfg.mi.model_dump(mode="json")}}


def test_inputs_stored_by_an_older_version_without_a_setting_added_since_resume(tmp_path):
    out = Store(str(tmp_path / "round-001"))
    assert stored_inputs(out, _inputs()) is None  # the first attempt: nothing stored
    older = _inputs()
    del older["validation_sampling"]["generate"]["filter_drop"]  # added 2026-12-08
    del older["train"]["min_timestep"]
    out.write_json(INPUTS_REL, older)
    assert stored_inputs(out, _inputs()) == older
    # Where it runs is not part of the training: other CPUs per worker, another actor count.
    assert stored_inputs(out, _inputs("train.cpus_per_worker=0.5", "generate.actors=3")) == older


@pytest.mark.parametrize("change, key", [
    (["train.lr=0.5"], "train.lr"),
    (["generate.steps=7"], "validation_sampling.generate.steps"),
    (["mi.renoise_draws=4"], "validation_sampling.mi.renoise_draws"),
])
def test_inputs_that_change_the_result_are_refused_in_one_line(tmp_path, change, key):
    out = Store(str(tmp_path / "round-001"))
    out.write_json(INPUTS_REL, _inputs())
    with pytest.raises(MituneError) as err:
        stored_inputs(out, _inputs(*change))
    assert f"another '{key}'" in str(err.value) and "\n" not in str(err.value)


def test_a_stored_setting_since_removed_is_compared_as_stored_and_refused(tmp_path):
    out = Store(str(tmp_path / "round-001"))
    stored = _inputs()
    stored["train"]["a_removed_setting"] = 3
    out.write_json(INPUTS_REL, stored)
    with pytest.raises(MituneError, match="another 'train.a_removed_setting'"):
        stored_inputs(out, _inputs())
