"""The stages of a run, each with explicit inputs (sections, stores, adapter URIs) and outputs.

- `generate`: prompts -> MI-scored candidates -> a selected set (Ray Data).
- `train`: a selected set -> a DoRA adapter (Ray Train + DeepSpeed; its pieces in `training/`).
- `evaluate`: a version's evaluation images -> metric values and means (Ray Data for the metric
  models).
- `score`: `mitune score`, the MI of existing (image, prompt) pairs (Ray Data).

A stage never imports the driver or another stage: `mitune_ray.driver` composes them.
"""
