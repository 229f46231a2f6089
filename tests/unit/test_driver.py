"""The driver's checks before a resumed run touches anything."""

import pytest

from mitune_ray.config import load_config
from mitune_ray.driver import Recipe
from mitune_ray.errors import MituneError


def test_a_resumed_run_refuses_another_evaluation_guidance(tmp_path):
    def recipe(*overrides):
        cfg = load_config(None, [f"run.uri={tmp_path}", "model.path=bundled:shapes",
                                 "run.evaluate=true", "generate.guidance=3", *overrides])
        return Recipe(cfg, log=lambda line: None)

    first = recipe("eval.guidance=7.5")
    first.setup()
    first.manifest.commit("eval-base/evaluate", summary={"guidance": 7.5})
    first.cleanup()
    again = recipe("eval.guidance=7.5")
    again.setup()  # the same evaluation guidance resumes
    again.cleanup()
    other = recipe()  # evaluation at generate.guidance, 3, against the base's 7.5
    with pytest.raises(MituneError) as err:
        other.setup()
    message = str(err.value)
    assert message.startswith("eval.guidance 3: ") and "base model at guidance 7.5" in message
    assert f"mitune eval {tmp_path} --guidance 3" in message and "\n" not in message
    assert other.manifest.data["lease"] is None  # refused before taking the run's lease
