"""ShapesWorld: a synthetic text-to-image world with an exact checker and a small trained model.

- `world`: scenes, rendering, the held-out split.
- `prompts`: templates, the exact prompt parser, train / held-out prompt lists.
- `checker`: scores an image against a prompt's facts from the pixels.
- `model` / `train`: the small diffusers text-to-image model and its CPU training recipe.
- `plugins`: what `register` plugs into the framework (`mitune_ray.registry`): the `shapes:SPLIT:N`
  prompt source, the `checker` and `anti` selectors, the `shapes` pool and evaluation metrics.

The framework never imports this package: the CLI calls `register()`, and so does importing it
(e.g. a script that imports `mitune_ray.shapes.bench`).
"""

from mitune_ray import registry


def register() -> None:
    """Plug ShapesWorld into the framework's registries (idempotent; entry points are strings,
    imported where used: Ray actors import them themselves)."""
    registry.register(registry.PROMPT_SOURCES, "shapes", "mitune_ray.shapes.plugins:prompt_source")
    registry.register(registry.SELECTORS, "checker", "mitune_ray.shapes.checker:checker_scores")
    registry.register(registry.SELECTORS, "anti", "mitune_ray.shapes.plugins:anti_checker_scores")
    registry.register(registry.POOL_METRICS, "shapes", "mitune_ray.shapes.checker:fully_correct")
    registry.register(registry.EVAL_METRICS, "shapes", "mitune_ray.shapes.plugins:eval_columns")
    # pool_metric=auto on the bundled ShapesWorld model: judge every candidate by the checker
    registry.register_default_pool_metric("bundled:shapes", "shapes")


register()
