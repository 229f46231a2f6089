"""Rank 0's console lines and step readings, from the Ray Train workers to the driver's console.

A worker's stdout reaches the driver only with `mitune --verbose` (`runtime.ensure_ray`), so rank 0
sends what the console shows through a Ray queue (an actor that takes no CPU), which a thread of
the driver reads while `trainer.fit()` blocks: lines go to the driver's `log`, steps to a progress
display (step/total, loss, smoothed samples/s, the ETA from the steps' own times; checkpoints
come on top; `mitune_ray.progress`).

    with driver_feed(log, progress, total_steps=12) as feed:       # the driver
        TorchTrainer(train_loop, train_loop_config={"spec": spec, "feed": feed}, ...).fit()

    feed.line("checkpoint at step 6: ...")                         # rank 0
    feed.step(6, loss=0.102, lr=1e-4, samples=8, seconds=0.6)

A message that cannot be sent (the queue's actor gone) is dropped: the console never stops a
training.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from mitune_ray.progress import ProgressFactory, SmoothedRate, format_rate

_logger = logging.getLogger(__name__)
POLL_S = 0.5  # the driver's thread waits this long for a message before looking at its stop flag


class WorkerFeed:
    """The worker's end (sent to every worker in the train loop's config; rank 0 uses it)."""

    def __init__(self, queue):
        self.queue = queue

    def line(self, text: str) -> None:
        self._put(("line", text))

    def step(self, step: int, *, loss: float, lr: float, samples: int, seconds: float) -> None:
        self._put(("step", {"step": step, "loss": loss, "lr": lr, "samples": samples,
                            "seconds": seconds}))

    def _put(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except Exception as exc:  # noqa: BLE001 - the console must not fail a training
            _logger.warning("the driver's console did not get a training message: %s", exc)


class Display:
    """What the driver does with the messages: lines to `log`, steps to the progress display."""

    def __init__(self, log: Callable[[str], None], bar):
        self.log, self.bar = log, bar
        self.samples, self.steps = SmoothedRate(), SmoothedRate()

    def show(self, kind: str, value) -> None:
        if kind == "line":
            self.log(value)
            return
        samples_per_s = self.samples.add(value["samples"], value["seconds"])
        # The ETA from the steps' own times: the time to the first step is the workers' start-up
        # (model loading, DeepSpeed), and checkpoints come on top.
        self.bar.update(value["step"], detail=f"loss {value['loss']:.4f}",
                        rate_text=format_rate(samples_per_s, 1.0, "samples"),
                        rate=self.steps.add(1, value["seconds"]))


@contextmanager
def driver_feed(log: Callable[[str], None], progress: ProgressFactory, total_steps: int
                ) -> Iterator[WorkerFeed]:
    """The driver's end, for the duration of one `trainer.fit()`."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()
    with progress("train", total_steps, "steps") as bar:
        display = Display(log, bar)

        def pump() -> None:
            while not stop.is_set():
                try:
                    kind, value = queue.get(timeout=POLL_S)
                except Empty:
                    continue
                except Exception:  # noqa: BLE001 - the queue's actor is gone: nothing more comes
                    return
                display.show(kind, value)

        thread = threading.Thread(target=pump, name="training-feed", daemon=True)
        thread.start()
        try:
            yield WorkerFeed(queue)  # an error raised here ends the display unfinished
        finally:
            stop.set()
            thread.join()
            try:  # what arrived after the thread's last look
                for kind, value in queue.get_nowait_batch(queue.qsize()):
                    display.show(kind, value)
            except Exception:  # noqa: BLE001
                pass
            queue.shutdown()
