"""The run manifest: the one file that says what a run is and how far it got.

    <run>/manifest.json = {config, fingerprint, code_version, created, lease,
                           stages: {"prompts": {...}, "round-001/generate": {...}, ...}}

A stage's outputs are written first; its entry here is written last, in one atomic write of the
whole manifest, and that entry is what "committed" means. A lease names the driver that owns the
run; a second driver refuses to start while the lease is fresh (its holder refreshes it), and takes
over a lease whose holder is gone (expired, or a dead process on this host).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mitune_ray import __version__
from mitune_ray.config import identity_changes, stored_config
from mitune_ray.errors import MituneError
from mitune_ray.layout import MANIFEST
from mitune_ray.storage import Store

LEASE_TTL_S = 90.0  # a lease not refreshed for this long belongs to a dead driver
HEARTBEAT_S = 20.0


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    owner: str
    host: str
    pid: int
    heartbeat: float

    def stale(self, now: float) -> bool:
        if now - self.heartbeat > LEASE_TTL_S:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)



def read_run(run_uri: str) -> tuple[Store, dict]:
    """The run folder at `run_uri` and its manifest; a one-line error where there is no run."""
    store = Store(run_uri)
    if not store.exists(MANIFEST):
        raise MituneError(f"no run at {run_uri} (no {MANIFEST}); check the URI")
    return store, store.read_json(MANIFEST)

class Manifest:
    """Read-modify-write access to a run's manifest (one writer: the lease holder)."""

    def __init__(self, store: Store):
        self.store = store
        self.owner = uuid.uuid4().hex
        self._lock = threading.RLock()
        self._data: dict[str, Any] = store.read_json(MANIFEST) if store.exists(MANIFEST) else {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_config: tuple[dict[str, Any], str] | None = None  # (config, fingerprint)

    @property
    def exists(self) -> bool:
        return bool(self._data)

    @property
    def data(self) -> dict[str, Any]:
        return self._data

    def _write(self) -> None:
        self.store.write_json(MANIFEST, self._data)

    # -- creation and config --------------------------------------------------------------------

    def create_or_check(self, config: dict, fingerprint: str, *, allow_change: bool) -> None:
        """Create the manifest, or refuse to resume a run stored with settings that change its
        results (another fingerprint), naming them; settings outside the fingerprint (where and
        how it runs, more rounds, evaluation) replace the stored ones.

        The stored config's fingerprint is computed again by this version's rules
        (`config.Config.fingerprint`), so a run started by an older version resumes unless its
        results would differ."""
        with self._lock:
            if not self._data:
                self._data = {"config": config, "fingerprint": fingerprint,
                              "code_version": code_version(), "created": time.time(),
                              "stages": {}, "lease": None}
                self._write()
                return
            before = stored_config(self._data.get("config"))
            stored = before.fingerprint() if before is not None else self._data.get("fingerprint")
            if stored != fingerprint and not allow_change:
                now = stored_config(config)
                changes = identity_changes(before, now) if before and now else []
                what = (", ".join(changes) if changes
                        else f"fingerprint {stored}, now {fingerprint}")
                raise MituneError(
                    f"the run at {self.store.uri} was started with other settings that change its "
                    f"results ({what}); use another run.uri, or pass run.allow_config_change=true "
                    "to resume it with the new settings")
            if stored != fingerprint:
                self._data.setdefault("config_history", []).append({
                    "fingerprint": self._data.get("fingerprint"),
                    "config": self._data.get("config")})
                self._data.update(config=config, fingerprint=fingerprint)
                self._write()
            elif self._data.get("config") != config or self._data.get("fingerprint") != fingerprint:
                # Settings outside the fingerprint (more rounds, other evaluation metrics, other
                # worker counts) become the stored config, so `mitune status` counts the new
                # rounds; written once the lease is held, never over the manifest of a driver
                # still running.
                self._pending_config = config, fingerprint

    # -- the lease ------------------------------------------------------------------------------

    def acquire(self) -> None:
        with self._lock:
            self._data = self.store.read_json(MANIFEST)
            current = self._data.get("lease")
            if current and current["owner"] != self.owner and not Lease(**current).stale(time.time()):
                age = time.time() - current["heartbeat"]
                raise MituneError(
                    f"the run at {self.store.uri} is held by another driver ({current['host']} pid "
                    f"{current['pid']}, alive {age:.0f}s ago); wait for it to finish, or stop it "
                    f"and rerun after {LEASE_TTL_S:.0f}s")
            self._data["lease"] = {"owner": self.owner, "host": socket.gethostname(),
                                   "pid": os.getpid(), "heartbeat": time.time()}
            if self._pending_config is not None:
                self._data["config"], self._data["fingerprint"] = self._pending_config
                self._pending_config = None
            self._write()
        # Two drivers starting together both write; the later write wins. Check who won.
        time.sleep(0.5)
        if self.store.read_json(MANIFEST).get("lease", {}).get("owner") != self.owner:
            raise MituneError(f"another driver took the run at {self.store.uri} at the same time; "
                              "only one driver may run it")
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="mitune-lease")
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self._lock:
                    if self._data.get("lease", {}).get("owner") == self.owner:
                        self._data["lease"]["heartbeat"] = time.time()
                        self._write()
            except MituneError:
                pass  # storage briefly unreachable: the main thread will report it

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self._data.get("lease", {}) and self._data["lease"].get("owner") == self.owner:
                self._data["lease"] = None
                self._write()

    # -- stages ---------------------------------------------------------------------------------

    def stage(self, name: str) -> dict[str, Any] | None:
        """The committed entry of a stage, or None."""
        entry = self._data.get("stages", {}).get(name)
        return entry if entry and entry.get("status") == "committed" else None

    def commit(self, name: str, **info: Any) -> dict[str, Any]:
        """Commit a stage whose outputs are already written: its entry is the last write."""
        with self._lock:
            entry = {"status": "committed", "committed_at": time.time(), **info}
            self._data.setdefault("stages", {})[name] = entry
            self._write()
            return entry

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._write()
