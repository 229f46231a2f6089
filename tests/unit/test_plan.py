"""The driver's planning: round chaining options (which adapters feed generation and training),
synthetic prompt sources."""

import mitune_ray.shapes  # noqa: F401 - registers the shapes:SPLIT:N prompt source
from mitune_ray.config import load_config
from mitune_ray.driver import materialize_sources, plan_round, resolve
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


def test_synthetic_sources_become_prompt_files_in_the_run(tmp_path):
    from mitune_ray.shapes.prompts import eval_prompts, tune_prompts
    from mitune_ray.storage import Store

    store = Store(str(tmp_path / "run"))
    other = str(tmp_path / "mine.txt")
    uris = materialize_sources(["shapes:tune:5", other, "shapes:eval:3"], store, "prompts.train")
    assert uris[1] == other
    assert store.read_bytes("inputs/shapes-tune-5.txt").decode().split("\n") == tune_prompts(5)
    assert store.read_bytes("inputs/shapes-eval-3.txt").decode().split("\n") == eval_prompts(3)
    for bad in ("shapes:test:5", "shapes:tune", "shapes:tune:five"):
        with pytest.raises(MituneError, match=f"prompt source '{bad}' \\(prompts.train\\) is not "
                                              "shapes:SPLIT:N with SPLIT one of train, eval, tune"):
            materialize_sources([bad], store, "prompts.train")
