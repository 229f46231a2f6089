"""The evaluation stage's generation settings: every candidate kept, at the evaluation guidance."""

from mitune_ray.config import EvalSection, GenerateSection
from mitune_ray.stages.evaluate import generation_settings


def test_evaluation_images_are_at_eval_guidance_else_the_candidates_guidance():
    gen = GenerateSection(candidates=16, keep=2, guidance=3.0, select_by="random")
    plain = generation_settings(gen, EvalSection(candidates=4))
    assert (plain.candidates, plain.keep, plain.guidance) == (4, 4, 3.0)
    assert (plain.select_by, plain.pool_metric, plain.prune.enabled) == ("mi", "none", False)
    judged = generation_settings(gen, EvalSection(candidates=4, guidance=7.5))
    assert judged.guidance == 7.5 and gen.guidance == 3.0  # the candidates' stay as they are
    # `mitune eval --guidance G` (a control evaluation) wins over both.
    assert generation_settings(gen, EvalSection(guidance=7.5), guidance=5.0).guidance == 5.0
