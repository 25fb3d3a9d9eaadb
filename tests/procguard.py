"""Nothing a test run starts outlives it, even when the run is interrupted.

Why: tests start PostgreSQL servers (`pg_ctl` daemonises them, so they are not our
children), instance agents and sync sidecars in new sessions, and a whole local
Kubernetes cluster whose pods are processes. A CI time-out sends SIGTERM, a developer
presses Ctrl-C; fixtures' finalizers are the first line of clean-up, but they do not run
when the interpreter is simply terminated, and they can themselves be interrupted.

Two mechanisms, both installed by `tests/conftest.py`:
- SIGTERM (and SIGHUP) become KeyboardInterrupt in the main thread, so pytest stops
  the way Ctrl-C stops it and runs every fixture's finalizer.
- The run puts itself in a cgroup of its own (cgroup v1 `pids` or v2, when running as
  root and the hierarchy is writable). Every process started below it stays in that
  cgroup whatever it does (setsid, double fork, re-parenting to init), so at the end of
  the run, interrupted or not, whatever is still in it is stopped: SIGTERM, a grace
  period, then SIGKILL. A cgroup left by a run that died by SIGKILL is emptied by the
  next run. Without a usable cgroup, processes are found by the marker
  RINGKEEPER_TEST_RUN in their environment (inherited unless a test replaces the
  environment, which is why the test helpers pass it on).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

MARKER = "RINGKEEPER_TEST_RUN"
_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
_GROUP = "ringkeeper-tests"


def run_id() -> str:
    """This run's marker value (set once, inherited by every child)."""
    return os.environ.setdefault(MARKER, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


def marker_env() -> dict[str, str]:
    """What a test helper that builds a child's environment from scratch must pass on."""
    return {MARKER: run_id()}


def _cgroup_root() -> Path | None:
    if os.geteuid() != 0:
        return None
    for root in _ROOTS:
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            return root / _GROUP
    return None


def _pids_in(cgroup: Path) -> list[int]:
    try:
        text = (cgroup / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _marked_pids(value: str) -> list[int]:
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _stop(pids: Iterable[int], grace: float) -> list[int]:
    """SIGTERM, wait up to `grace`, SIGKILL what is left; returns every pid signalled."""
    me = os.getpid()
    targets = [p for p in pids if p != me]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p) for p in targets):
        time.sleep(0.1)
    for pid in targets:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return targets


class Guard:
    """One per test run (the pytest main process)."""

    def __init__(self) -> None:
        self.run = run_id()
        self.cgroup: Path | None = None
        self.left_behind: list[int] = []

    def install(self) -> None:
        if os.environ.get("RINGKEEPER_PROCGUARD") == "off":
            return  # only for the test that shows what happens without the guard
        root = _cgroup_root()
        if root is not None:
            with contextlib.suppress(OSError):
                root.mkdir(exist_ok=True)
                self._sweep_stale(root)
                mine = root / str(os.getpid())
                mine.mkdir(exist_ok=True)
                (mine / "cgroup.procs").write_text(str(os.getpid()))
                self.cgroup = mine
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _interrupt)

    @staticmethod
    def _sweep_stale(root: Path) -> None:
        """Empty and remove cgroups of earlier runs whose pytest is gone (killed by SIGKILL)."""
        for group in root.iterdir():
            if not group.is_dir() or not group.name.isdigit() or _pid_alive(int(group.name)):
                continue
            _stop(_pids_in(group), grace=5)
            with contextlib.suppress(OSError):
                group.rmdir()

    def remaining(self) -> list[int]:
        me = os.getpid()
        pids = set(_marked_pids(self.run))
        if self.cgroup is not None:
            pids.update(_pids_in(self.cgroup))
        return sorted(p for p in pids if p != me and _pid_alive(p))

    def reap(self, grace: float = 10) -> list[int]:
        """Stop everything this run started that is still running; returns what was stopped."""
        if os.environ.get("RINGKEEPER_PROCGUARD") == "off":
            return []
        stopped: list[int] = []
        for _ in range(5):  # a dying process may start another (a supervisor's restart)
            pids = self.remaining()
            if not pids:
                break
            stopped += _stop(pids, grace)
        self.left_behind = stopped
        if self.cgroup is not None and set(_pids_in(self.cgroup)) <= {os.getpid()}:
            # Leave the cgroup before removing it (a cgroup with members cannot go).
            with contextlib.suppress(OSError):
                (self.cgroup.parent.parent / "cgroup.procs").write_text(str(os.getpid()))
                self.cgroup.rmdir()
        return stopped


def _interrupt(signum: int, _frame: object) -> None:
    # Ignore further signals while pytest unwinds: a second SIGTERM would cut the
    # finalizers short. The cgroup reaper still runs at the end.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
