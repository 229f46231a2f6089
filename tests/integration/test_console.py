"""What a run prints when its output goes to a file (mitune_ray/progress.py, runtime.py,
training/feed.py): a banner per stage, short progress lines, the stages' own lines; none of Ray's
progress blocks, worker output or third-party warnings."""

import re

PERIODIC = re.compile(r"^[\w ]+: \d+/\d+ \w+ \| ")  # "generate: 3/7 prompts | 30s | ... | ETA 1m10s"
RAYS_OWN = ("Total Progress", "Running Dataset", "logging_progress", "streaming_executor",
            "(raylet)", "RayTrainWorker", "TrainController", "SplitCoordinator",
            "Loading pipeline components", "FutureWarning", "DeprecationWarning",
            "Token authentication", "Setting accelerator to CPU")


def test_a_run_logged_to_a_file_shows_banners_and_progress_lines_and_nothing_of_rays(tracked_run):
    """One round with its evaluation and both trackers on (tests/integration/conftest.py)."""
    log, seconds = tracked_run.log, tracked_run.seconds
    text = log.read_text()
    lines = text.splitlines()

    for banner in ("== prompts ==", "== round 1/1: generate ==  7 training prompts x 2 candidates",
                   "== round 1/1: train ==  a rank-4 DoRA adapter, 2 steps",
                   "== round 1/1: evaluate ==  the base model and the model after round 1"):
        assert any(line.startswith(banner) for line in lines), (banner, text)
    # Each progress display ends with one line; training's has the loss, and rank 0's own lines
    # reach the console through the feed (no worker output is forwarded).
    assert re.search(r"^generate: 7/7 prompts in \w+ \([\d.]+ prompts/(s|min)\), 14 candidates$",
                     text, re.M), text
    assert re.search(r"^train: 2/2 steps in \w+ \(.+\), loss \d+\.\d{4}$", text, re.M), text
    assert re.search(r"^checkpoint at step 2: fixed-batch loss ", text, re.M), text

    for noise in RAYS_OWN:
        assert noise not in text, (noise, text)
    assert "\r" not in text  # no live bar in a file
    periodic = [line for line in lines if PERIODIC.match(line)]
    assert len(lines) - len(periodic) <= 40, text  # 8 of them the evaluation's
    assert len(periodic) <= seconds / 30 + 4, text  # a line per 30 s, per display at most
