"""Fixtures for tests, benches and research: ground truth and tiny stand-ins, never used by a run.

- `gaussian`: jointly Gaussian (x, y) with closed-form optimal denoisers and velocities, the
  ground truth the MI estimators are checked against (pure torch).
- `tiny_pipelines`: tiny random-weight pipelines of every family (`model.path=tiny:sd`, ...).
- `tiny_metrics`: tiny random-weight BLIP-VQA and CLIP folders, and an OpenCLIP state dict.
"""
