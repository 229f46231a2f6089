"""Measurements, the guard that runs each one (time budget, timeout, out of memory), the table and
the JSON file."""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


class BudgetExceeded(Exception):
    """A measurement ran past the time it was given."""


@dataclass
class Measurement:
    name: str  # e.g. "generate/sd21-base/bf16+compile"
    kind: str  # peak | flops | generate | train | mi_overhead | raydata | prune | params
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    seconds: float = 0.0  # wall time of the whole measurement (builds and warm-ups included)
    values: dict[str, Any] = field(default_factory=dict)


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on a CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> tuple[Callable[[], float], str]:
    """The timer for in-process measurements and its name. On a CPU with one torch thread, the
    process's CPU time: load from other processes on a shared machine does not count, so ratios
    measured minutes apart stay comparable. Otherwise (a GPU, or several threads) wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time, "process_cpu"
    return time.perf_counter, "wall"


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _is_budget(err: BaseException) -> bool:
    """The budget alarm, also where a library caught it and raised its own error: torch.compile's
    tracer reports it as a TorchRuntimeError whose text says "got BudgetExceeded()" (seen on an
    H100 compiling SD3.5, 2026-11-27), with the cause chain cut (`from None`)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, BudgetExceeded) or "BudgetExceeded" in str(err):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


class Recorder:
    """Runs measurements one at a time within a total time budget and keeps their results.

    A measurement that runs out of memory or past the remaining budget is recorded as skipped
    with the reason, and the next one runs: a suite on a new GPU reports what it could measure.
    """

    def __init__(self, device: torch.device, *, budget_s: float | None = None, log=print):
        self.device, self.budget_s, self.log = device, budget_s, log
        self.start = time.perf_counter()
        self.measurements: list[Measurement] = []

    def remaining_s(self) -> float | None:
        if self.budget_s is None:
            return None
        return self.budget_s - (time.perf_counter() - self.start)

    def run(self, name: str, kind: str, fn: Callable[[], dict[str, Any]]) -> Measurement:
        m = Measurement(name, kind)
        left = self.remaining_s()
        if left is not None and left < 1.0:
            m.status, m.reason = "skipped", "time budget spent (raise --budget-s)"
            return self._keep(m)
        reset_memory(self.device)
        start = time.perf_counter()
        alarm = left is not None and hasattr(signal, "setitimer") and _main_thread()
        if alarm:
            previous = signal.signal(signal.SIGALRM, _raise_budget)
            signal.setitimer(signal.ITIMER_REAL, left)
        try:
            m.values = fn()
        except BudgetExceeded:
            m.status, m.reason = "skipped", f"ran past the remaining budget ({left:.0f} s)"
        except Exception as err:  # noqa: BLE001 - one failed measurement must not end the suite
            if _is_budget(err):
                m.status, m.reason = "skipped", f"ran past the remaining budget ({left:.0f} s)"
            elif _is_oom(err):
                m.status, m.reason = "skipped", f"out of memory: {str(err).splitlines()[0][:200]}"
            else:
                m.status, m.reason = "failed", f"{type(err).__name__}: {str(err)[:300]}"
                if os.environ.get("MITUNE_BENCH_TRACEBACK"):
                    traceback.print_exc()
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        m.seconds = time.perf_counter() - start
        reset_memory(self.device)
        return self._keep(m)

    def _keep(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        self.log(_line(m))
        return m

    def find(self, name: str) -> Measurement | None:
        return next((m for m in self.measurements if m.name == name and m.status == "ok"), None)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_budget(signum, frame):
    raise BudgetExceeded


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = str(value)
    return text + unit


def count(n: float) -> str:
    """865910724 -> '865.9M', 2.5e9 -> '2.5B'."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:g}"


def _line(m: Measurement) -> str:
    """One progress line while the bench runs."""
    if m.status != "ok":
        return f"  {m.name}: {m.status} ({m.reason})"
    return f"  {m.name}: {_rate(m.values)} ({m.seconds:.1f} s)"


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    import diffusers

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    return {
        "device": str(device), "device_name": name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "host": platform.node(),
        "cpu_count": os.cpu_count(), "torch_threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
    }


def write_json(path: str | Path, env: dict[str, Any], measurements: list[Measurement]) -> None:
    data = {**env, "measurements": [asdict(m) for m in measurements]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


_COLUMNS = ("measurement", "rate", "peak mem", "% peak", "% peak (issue)", "notes")


# The headline number of each kind of measurement: (values key, how to show it).
_RATES = (
    ("images_per_s", lambda x: f"{_fmt(x)} img/s"),
    ("samples_per_s", lambda x: f"{_fmt(x)} samples/s"),
    ("tflops", lambda x: f"{_fmt(x)} TFLOP/s"),
    ("tflop_per_forward", lambda x: f"{_fmt(x)} TFLOP/fwd"),
    ("overhead_pct", lambda x: f"{x:+.2f}%"),
    ("throughput_ratio", lambda x: f"x{x:.2f}"),
    ("compute_saved", lambda x: f"{100 * x:.0f}% saved"),
)


def _rate(values: dict[str, Any]) -> str:
    return next((show(values[key]) for key, show in _RATES if key in values), "-")


def _share(values: dict[str, Any], key: str) -> str:
    return f"{100 * values[key]:.1f}%" if values.get(key) is not None else "-"


def _row(m: Measurement) -> tuple[str, ...]:
    v = m.values
    if m.status != "ok":
        return (m.name, "-", "-", "-", "-", f"{m.status}: {m.reason}")
    mem = f"{v['peak_mem_mib'] / 1024:.2f} GiB" if "peak_mem_mib" in v else "-"
    return (m.name, _rate(v), mem, _share(v, "peak_share"), _share(v, "peak_share_issue"),
            v.get("notes", ""))


def table(measurements: list[Measurement]) -> str:
    rows = [_COLUMNS] + [_row(m) for m in measurements]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        if j == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths) + len(_COLUMNS[-1])))
    return "\n".join(line.rstrip() for line in lines)
