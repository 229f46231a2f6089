"""Fixtures for tests, benches and research: ground truth and tiny stand-ins, never used by a run.

- `gaussian`: jointly Gaussian (x, y) with closed-form optimal denoisers and velocities, the
  ground truth the MI estimators are checked against (pure torch).
"""
