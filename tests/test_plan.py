"""Round chaining options: which adapters feed generation and training (pure)."""

from mitune_ray.config import load_config
from mitune_ray.driver import plan_round, resolve
from mitune_ray.errors import MituneError
from mitune_ray.families import FAMILIES

import pytest


def uri(r):
    return f"run/round-{r:03d}/adapter"


def test_fresh_is_the_reference_a_new_adapter_each_round_generating_with_the_previous():
    cfg = load_config(None, [])
    assert plan_round(cfg, 1, uri).generate_adapters == []
    plan = plan_round(cfg, 3, uri)
    assert plan.generate_adapters == [uri(2)] and plan.base_adapters == []
    assert plan.init_adapter is None and plan.selected_rounds == [3]


def test_continue_accumulate_and_merge():
    cont = plan_round(load_config(None, ["run.chaining=continue"]), 3, uri)
    assert cont.init_adapter == uri(2) and cont.generate_adapters == [uri(2)]
    acc = plan_round(load_config(None, ["run.accumulate=true"]), 3, uri)
    assert acc.selected_rounds == [1, 2, 3]
    merged = plan_round(load_config(None, ["run.merge_previous=true"]), 3, uri)
    assert merged.generate_adapters == merged.base_adapters == [uri(1), uri(2)]
    assert merged.init_adapter is None


def test_resolve_fills_family_defaults_and_rejects_contradictions():
    cfg = resolve(load_config(None, ["train.lr=3e-5"]), FAMILIES["sd3"])
    assert cfg.train.lr == 3e-5 and cfg.train.steps == 2000 and cfg.train.warmup_steps == 400
    assert cfg.model.family == "sd3"
    with pytest.raises(MituneError, match="choose one"):
        resolve(load_config(None, ["run.chaining=continue", "run.merge_previous=true"]), FAMILIES["sd"])
