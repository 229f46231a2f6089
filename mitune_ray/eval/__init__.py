"""The Ray Data scoring stage of the evaluation metrics (moving to mitune_ray.stages.evaluate)."""
