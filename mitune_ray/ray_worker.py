"""The setup hook of every worker process of a local Ray cluster this package starts
(`runtime_env={"worker_process_setup_hook": ...}` in `runtime.ensure_ray`).

It runs before any task in every new worker, so it imports nothing heavy: importing torch here
cost 5-6 s per worker start (measured: 8 tasks 1.6 s -> 8.5 s) and ten minutes of the test suite.
"""

from __future__ import annotations

import logging
import os

# Ray Train's PlacementGroupCleaner asks the state API every second whether the training
# controller lives; a local cluster started without the dashboard has no state API, so it logged
# "Failed to query Ray Train Controller actor state" about once a second of training (153 lines
# in the demo). It only matters when the controller dies without cleaning up, which the driver's
# own process exit already covers on a local cluster.
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def local_worker_setup() -> None:
    """Runs in every worker process of a local cluster this package started.

    Ray's state API finds its cluster by $RAY_ADDRESS or, without it, by looking for running
    clusters, and fails when it finds two (a test run beside the demo): name this worker's own.
    """
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)
