"""What the console shows while a run works: a banner per stage, and a progress display for each
stage's long part (generation: prompts; training: optimizer steps; evaluation: prompts).

On a terminal a progress display is a live bar (rich): done/total, elapsed time, the rate and the
ETA. When stdout is not a terminal (a log file, `ray job logs`) it is a short line every
`PERIOD_S` seconds while the work advances (every `IDLE_PERIOD_S` while it waits, e.g. for actors
to start) and one when it is done, never carriage-return updates.

    console = Console()
    console.banner("round 1/2: generate", "20 prompts x 6 candidates, keep the best 1 by MI")
    with console.progress("generate", total=20, unit="prompts") as bar:
        bar.update(4)                       # after each batch
    # -> generate: 20/20 prompts in 1m05s (0.31 prompts/s)

`Console` is also the driver's `log` (a callable taking one line): lines print above a live bar.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Callable, TextIO

PERIOD_S = 30.0  # a progress line this often when stdout is not a terminal
IDLE_PERIOD_S = 120.0  # ... and this often while the count does not move
SMOOTHING = 0.3  # weight of the newest step in a smoothed rate


def format_duration(seconds: float | None) -> str:
    """A short duration; '?' when unknown.

        >>> format_duration(42.4), format_duration(185), format_duration(3725), format_duration(None)
        ('42s', '3m05s', '1h02m', '?')
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(count: float, seconds: float, unit: str) -> str:
    """`count` per second, three significant figures; per minute below 0.1/s; '?' when unknown.

        >>> format_rate(12, 4, "prompts"), format_rate(3, 60, "prompts"), format_rate(5, 0, "steps")
        ('3.00 prompts/s', '3.00 prompts/min', '? steps/s')
    """
    if seconds <= 0 or not math.isfinite(count / seconds):
        return f"? {unit}/s"
    rate = count / seconds
    if 0 < rate < 0.1:
        return f"{_figures(rate * 60)} {unit}/min"
    return f"{_figures(rate)} {unit}/s"


def _figures(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def eta_seconds(done: float, total: float | None, rate: float | None) -> float | None:
    """Seconds left at `rate` units per second (None: unknown; 0 once done).

        >>> eta_seconds(5, 20, 0.5), eta_seconds(20, 20, None), eta_seconds(5, None, 1.0)
        (30.0, 0.0, None)
    """
    if total is None:
        return None
    if done >= total:
        return 0.0
    if not rate or rate <= 0:
        return None
    return (total - done) / rate


def status_text(done: float, total: float | None, elapsed: float, unit: str, *,
                rate: float | None = None, rate_text: str | None = None, detail: str = "") -> str:
    """One progress reading: done/total, elapsed, rate, details, ETA.

        >>> status_text(6, 12, 65, "steps", rate=0.1, rate_text="12.3 samples/s",
        ...             detail="loss 0.1023")
        '6/12 steps | 1m05s | 12.3 samples/s | loss 0.1023 | ETA 1m00s'
        >>> status_text(0, 20, 31, "prompts")
        '0/20 prompts | 31s | ETA ?'
    """
    parts = [f"{done:g}/{total:g} {unit}" if total is not None else f"{done:g} {unit}",
             format_duration(elapsed)]
    if rate_text:
        parts.append(rate_text)
    elif rate:
        parts.append(format_rate(rate, 1.0, unit))
    if detail:
        parts.append(detail)
    if total is not None and done < total:
        parts.append(f"ETA {format_duration(eta_seconds(done, total, rate))}")
    return " | ".join(parts)


def done_text(label: str, done: float, total: float | None, elapsed: float, unit: str,
              detail: str = "", rate_text: str | None = None) -> str:
    """The line a progress display ends with (`rate_text`: instead of the count's mean rate).

        >>> done_text("generate", 20, 20, 65, "prompts")
        'generate: 20/20 prompts in 1m05s (0.31 prompts/s)'
        >>> done_text("train", 12, 12, 65, "steps", "loss 0.1023", "12.3 samples/s")
        'train: 12/12 steps in 1m05s (12.3 samples/s), loss 0.1023'
    """
    count = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
    rate = rate_text or format_rate(done, elapsed, unit)
    text = f"{label}: {count} {unit} in {format_duration(elapsed)} ({rate})"
    return f"{text}, {detail}" if detail else text


def banner_line(title: str, what: str = "") -> str:
    """A stage's banner: what runs now, and what it will do.

        >>> banner_line("round 1/2: train", "a rank-8 DoRA adapter, 12 steps")
        '== round 1/2: train ==  a rank-8 DoRA adapter, 12 steps'
    """
    return f"== {title} ==" + (f"  {what}" if what else "")


class SmoothedRate:
    """An exponentially smoothed rate (e.g. samples/s over training steps): counts and seconds
    are smoothed apart, so the reading is a recent average rate, not an average of step rates.

        >>> meter = SmoothedRate()
        >>> [round(meter.add(8, 1.0), 2) for _ in range(3)]
        [8.0, 8.0, 8.0]
        >>> round(meter.add(8, 8.0), 2)  # one slow step: down, not to 1
        2.58
    """

    def __init__(self, weight: float = SMOOTHING):
        self.weight = weight
        self.count: float | None = None
        self.seconds: float | None = None

    def add(self, count: float, seconds: float) -> float:
        if self.count is None:
            self.count, self.seconds = float(count), float(seconds)
        else:
            w = self.weight
            self.count = (1 - w) * self.count + w * count
            self.seconds = (1 - w) * self.seconds + w * seconds
        return self.rate

    @property
    def rate(self) -> float:
        if not self.seconds or self.count is None:
            return 0.0
        return self.count / self.seconds


class Progress:
    """One stage's progress: a live bar on a terminal, else a line every `period` seconds (while
    updates come or not) and a final line. Thread-safe; use as a context manager or `close()`."""

    def __init__(self, label: str, total: float | None, unit: str, *, console: Console,
                 initial: float = 0, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.console, self.clock = console, clock
        self.done, self.detail, self.rate_text = initial, "", None
        self.rate_hint: float | None = None  # units/s measured by the caller (e.g. step times)
        self.start = self.last_line = clock()
        self.last_done = initial  # the count the last line showed
        self.first: tuple[float, float] | None = None  # (time, done) of the first update
        self.closed = False
        self._stop = threading.Event()
        self._bar = console.open_bar(self) if console.live else None
        self._ticker = None
        if self._bar is None and console.period > 0:
            self._ticker = threading.Thread(target=self._tick, name=f"progress-{label}",
                                            daemon=True)
            self._ticker.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(finished=kind is None)

    def rate(self) -> float | None:
        """Units per second: the caller's own measure if it gave one, else since the first update
        (the time to the first one is mostly start-up: model loading, actors starting), or since
        the start before a second reading."""
        if self.rate_hint:
            return self.rate_hint
        now = self.clock()
        if self.first is not None and self.done > self.first[1] and now > self.first[0]:
            return (self.done - self.first[1]) / (now - self.first[0])
        elapsed = now - self.start
        return self.done / elapsed if self.done and elapsed > 0 else None

    def status(self) -> str:
        return status_text(self.done, self.total, self.clock() - self.start, self.unit,
                           rate=self.rate(), rate_text=self.rate_text, detail=self.detail)

    def update(self, done: float | None = None, *, advance: float = 0, detail: str | None = None,
               rate_text: str | None = None, rate: float | None = None) -> None:
        """Set (`done`) or advance the count; `detail` (e.g. the loss), `rate_text` (e.g. a
        smoothed samples/s, shown instead of the count's rate) and `rate` (units/s for the ETA,
        e.g. from the steps' own times) stay until replaced."""
        with self.console.lock:
            self.done = (self.done if done is None else done) + advance
            if self.first is None:
                self.first = (self.clock(), self.done)
            if detail is not None:
                self.detail = detail
            if rate_text is not None:
                self.rate_text = rate_text
            if rate is not None:
                self.rate_hint = rate
            if self._bar is not None:
                self.console.refresh_bar(self)
            elif self._line_due():
                self._line()

    def _line_due(self) -> bool:
        period = self.console.period
        if period <= 0:
            return False
        waited = self.clock() - self.last_line
        return waited >= (period if self.done != self.last_done else period * IDLE_PERIOD_S / PERIOD_S)

    def _line(self) -> None:
        self.last_line, self.last_done = self.clock(), self.done
        self.console.write(f"{self.label}: {self.status()}")

    def _tick(self) -> None:
        while not self._stop.wait(min(self.console.period, 5.0)):
            with self.console.lock:
                if not self.closed and self._line_due():
                    self._line()

    def close(self, *, finished: bool = True) -> None:
        """End the display; a finished one says how much was done in how long."""
        with self.console.lock:
            if self.closed:
                return
            self.closed = True
            self._stop.set()
            if self._bar is not None:
                self.console.close_bar()
            if finished:
                self.console.write(done_text(self.label, self.done, self.total,
                                             self.clock() - self.start, self.unit, self.detail,
                                             self.rate_text))


ProgressFactory = Callable[..., Progress]


class Console:
    """The driver's console: lines (it is a `log` callable), stage banners and progress displays.

    `live`: a live bar (None: when the stream is a terminal). `period`: seconds between progress
    lines when not live (0: none but the last)."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 period: float = PERIOD_S):
        self._stream = stream
        self.live = self.stream.isatty() if live is None else live
        self.period = period
        self.lock = threading.RLock()
        self._rich = None  # the live bar's rich.progress.Progress, while one is shown

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # resolved late: pytest and Ray swap sys.stdout

    def __call__(self, text: str) -> None:
        self.write(text)

    def write(self, text: str) -> None:
        with self.lock:
            if self._rich is not None:
                self._rich.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def banner(self, title: str, what: str = "") -> None:
        self.write(banner_line(title, what))

    def progress(self, label: str, total: float | None, unit: str, *, initial: float = 0
                 ) -> Progress:
        return Progress(label, total, unit, console=self, initial=initial)

    # -- the live bar (rich), one at a time --------------------------------------------------

    def open_bar(self, progress: Progress):
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn

        with self.lock:
            if self._rich is not None:  # nested displays: the inner one prints lines
                return None
            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=30),
                                      TextColumn("{task.fields[status]}"),
                                      console=RichConsole(file=self.stream), transient=True,
                                      refresh_per_second=2)
            task = self._rich.add_task(progress.label, total=progress.total,
                                       completed=progress.done, status=progress.status())
            self._rich.start()
            self._ticker = threading.Thread(target=self._refresh_bar_loop, args=(progress,),
                                            daemon=True)
            self._ticker.start()
            return task

    def refresh_bar(self, progress: Progress) -> None:
        if self._rich is not None:
            self._rich.update(progress._bar, completed=progress.done, status=progress.status())

    def _refresh_bar_loop(self, progress: Progress) -> None:
        while not progress._stop.wait(1.0):  # the elapsed time and ETA tick between updates
            with self.lock:
                if not progress.closed:
                    self.refresh_bar(progress)

    def close_bar(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


def silent_progress(label: str, total: float | None, unit: str, *, initial: float = 0
                    ) -> Progress:
    """A progress factory that shows nothing (library callers that pass `log=lambda m: None`)."""
    return Progress(label, total, unit, console=Console(_NullStream(), live=False, period=0),
                    initial=initial)


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
