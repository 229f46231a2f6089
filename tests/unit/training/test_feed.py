"""What the driver does with rank 0's messages (mitune_ray/training/feed.py): lines to the log,
steps to the progress display with the loss and a smoothed samples/s. The Ray queue between them
is exercised by the CLI run in tests/integration/test_console.py."""

import io

import pytest

from mitune_ray.progress import Console
from mitune_ray.training.feed import Display


def test_lines_go_to_the_log_and_steps_to_the_progress_display():
    out, lines = io.StringIO(), []
    console = Console(out, live=False, period=0)
    with console.progress("train", 3, "steps") as bar:
        display = Display(lines.append, bar)
        display.show("line", "fixed-batch loss before training: 1.03849")
        for step, seconds in ((1, 0.5), (2, 0.5), (3, 4.0)):  # the third waited on a checkpoint
            display.show("step", {"step": step, "loss": 1.0 / step, "lr": 1e-4, "samples": 8,
                                  "seconds": seconds})
        assert bar.done == 3 and bar.detail == "loss 0.3333"
        # smoothed: the slow step pulls it down from 16/s, not to 2/s
        assert bar.rate_text == "5.16 samples/s"
        # the ETA from the steps' times, not from the start (the workers' start-up)
        assert bar.rate() == pytest.approx(1 / 1.55)
    assert lines == ["fixed-batch loss before training: 1.03849"]
    final = out.getvalue().splitlines()[-1]
    assert final.startswith("train: 3/3 steps in ") and final.endswith(
        "(5.16 samples/s), loss 0.3333")
