"""The console's progress displays and their formatting (mitune_ray/progress.py)."""

import io

import pytest

from mitune_ray.progress import (
    Console, SmoothedRate, banner_line, done_text, eta_seconds, format_duration, format_rate,
    silent_progress, status_text,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59.4, "59s"), (60, "1m00s"), (185, "3m05s"), (3599, "59m59s"), (3600, "1h00m"),
    (7322, "2h02m"), (None, "?"), (float("inf"), "?"), (float("nan"), "?"), (-1, "?"),
])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("count, seconds, text", [
    (12, 4, "3.00 prompts/s"), (250, 2, "125 prompts/s"), (45, 2, "22.5 prompts/s"),
    (1, 20, "3.00 prompts/min"),  # below 0.1/s: per minute
    (0, 10, "0.00 prompts/s"), (5, 0, "? prompts/s"),
])
def test_rates(count, seconds, text):
    assert format_rate(count, seconds, "prompts") == text


def test_eta_is_the_remaining_work_at_the_rate():
    assert eta_seconds(5, 20, 0.5) == 30.0
    assert eta_seconds(20, 20, None) == 0.0  # done
    assert eta_seconds(5, 20, None) is None and eta_seconds(5, 20, 0.0) is None
    assert eta_seconds(5, None, 1.0) is None  # total unknown


def test_status_and_final_lines():
    assert status_text(6, 12, 65, "steps", rate=0.1, rate_text="12.3 samples/s",
                       detail="loss 0.1023") == \
        "6/12 steps | 1m05s | 12.3 samples/s | loss 0.1023 | ETA 1m00s"
    assert status_text(4, 20, 10, "prompts", rate=0.4) == \
        "4/20 prompts | 10s | 0.40 prompts/s | ETA 40s"
    assert status_text(3, None, 10, "prompts", rate=0.3) == "3 prompts | 10s | 0.30 prompts/s"
    assert done_text("train", 12, 12, 130, "steps", "loss 0.1") == \
        "train: 12/12 steps in 2m10s (5.54 steps/min), loss 0.1"
    assert done_text("train", 12, 12, 130, "steps", "loss 0.1", "9.80 samples/s") == \
        "train: 12/12 steps in 2m10s (9.80 samples/s), loss 0.1"
    assert banner_line("round 2/3: evaluate") == "== round 2/3: evaluate =="


def test_a_smoothed_rate_follows_recent_steps_without_jumping():
    meter = SmoothedRate(weight=0.5)
    assert meter.rate == 0.0
    assert meter.add(10, 1.0) == pytest.approx(10.0)
    assert meter.add(10, 1.0) == pytest.approx(10.0)
    slow = meter.add(10, 9.0)  # one slow step (e.g. a checkpoint's wait)
    assert 1.0 < slow < 10.0 and slow == pytest.approx(10 / 5.0)


def test_without_a_terminal_progress_is_a_line_per_period_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    console = Console(out, live=False, period=30)
    bar = console.progress("generate", 20, "prompts")
    bar.clock = clock  # the test's clock from here on
    bar.start = bar.last_line = clock.now
    for done in range(1, 11):  # ten updates 5 s apart: two periodic lines
        clock.now += 5
        bar.update(done * 2, detail=f"{done * 4} candidates")
    console("generated ...")  # a line of the stage's own
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "generate: 12/20 prompts | 30s | 0.40 prompts/s | 24 candidates | ETA 20s",
        "generated ...",
        "generate: 20/20 prompts in 50s (0.40 prompts/s), 40 candidates",
    ]
    assert "\r" not in out.getvalue()


def test_while_nothing_advances_a_line_every_two_minutes():
    out, clock = io.StringIO(), Clock()
    bar = Console(out, live=False, period=30).progress("generate", 7, "prompts")
    bar.clock = clock
    bar.start = bar.last_line = clock.now
    for _ in range(10):  # five minutes of waiting for the actors to start
        clock.now += 30
        bar.update()
    clock.now += 30
    bar.update(3)  # it moves: a line 30 s after the last
    assert out.getvalue().splitlines() == [
        "generate: 0/7 prompts | 2m00s | ETA ?",
        "generate: 0/7 prompts | 4m00s | ETA ?",
        "generate: 3/7 prompts | 5m30s | 0.60 prompts/min | ETA 6m40s",
    ]


def test_the_rate_leaves_the_time_to_the_first_result_out():
    out, clock = io.StringIO(), Clock()
    bar = Console(out, live=False, period=0).progress("train", 12, "steps")
    bar.clock, bar.start = clock, clock.now
    clock.now += 60  # start-up: model loading, workers starting
    bar.update(1)
    assert bar.rate() == pytest.approx(1 / 60)  # one reading: from the start
    clock.now += 10
    bar.update(6)
    assert bar.rate() == pytest.approx(0.5)  # from the first reading: 5 steps in 10 s
    assert "ETA 12s" in bar.status()


def test_a_failed_stage_ends_its_display_without_a_final_line():
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with Console(out, live=False, period=0).progress("train", 12, "steps") as bar:
            bar.update(3)
            raise RuntimeError("worker died")
    assert out.getvalue() == ""


def test_a_live_bar_ends_with_the_final_line():
    out = io.StringIO()
    console = Console(out, live=True)
    with console.progress("evaluate base", 2, "prompts") as bar:
        console("a line above the bar")
        bar.update(2)
    text = out.getvalue()
    assert "a line above the bar" in text
    assert text.rstrip().splitlines()[-1].startswith("evaluate base: 2/2 prompts in ")


def test_silent_progress_shows_nothing(capsys):
    with silent_progress("generate", 3, "prompts") as bar:
        bar.update(3)
    assert capsys.readouterr().out == ""
