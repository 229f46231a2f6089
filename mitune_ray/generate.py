"""Not a module of the package any more: kept only because mitune_ray/shapes/pool.py imports
`ModelSpec` and `load_model` from here. They live in `mitune_ray.models` (the generation stage is
`mitune_ray.stages.generate`); delete this file once pool.py imports them from there."""

from mitune_ray.models import ModelSpec, load_model

__all__ = ["ModelSpec", "load_model"]
