"""Fault injection for the reliability tests: fail at a named point, once.

`MITUNE_FAULTS="generate.batch:3,driver.after_commit:generate"` makes the 3rd batch of the
generation stage raise, and the driver SIGKILL itself after committing a generate stage.
`MITUNE_FAULTS_DIR` holds one marker per fired fault, so each fires once per directory (a rerun
of the same command then succeeds). Unset in normal use: every check is then one dict lookup.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

ENV, DIR_ENV = "MITUNE_FAULTS", "MITUNE_FAULTS_DIR"


class InjectedFault(RuntimeError):
    """Raised where a test asked for a failure."""


def _spec() -> dict[str, str]:
    raw = os.environ.get(ENV, "")
    out = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        point, _, arg = item.partition(":")
        out[point] = arg
    return out


def _fire_once(tag: str) -> bool:
    folder = Path(os.environ.get(DIR_ENV, "/tmp/mitune-faults"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / re.sub(r"[^A-Za-z0-9_.-]", "_", tag)).open("x").close()
        return True
    except FileExistsError:
        return False


def maybe_fail(point: str, value: str | int | None = None, *, kill: bool = False) -> None:
    """Fail at `point` if asked to (and `value` matches the requested argument, when given).

    `kill=True` sends SIGKILL to this process (a crash no handler sees); otherwise it raises.
    """
    spec = _spec()
    if point not in spec:
        return
    wanted = spec[point]
    if wanted and value is not None and str(value) != wanted:
        return
    if not _fire_once(f"{point}-{wanted or 'any'}"):
        return
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point} ({wanted})")


def runtime_env() -> dict:
    """The fault settings for Ray workers (only these variables; never credentials)."""
    env = {k: os.environ[k] for k in (ENV, DIR_ENV) if os.environ.get(k)}
    return {"env_vars": env} if env else {}
