"""An interrupted test run leaves no server or process behind (SIGTERM as a CI time-out
sends it, SIGINT as Ctrl-C does), and without the guard it would: the check can fail."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import procguard
from conftest import REPO
from integration.localcampus import unavailable
from waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str) -> bool:
    """Alive and the same process (not a reused pid), zombies excluded."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and _start_time(pid) == started


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _as_from_a_terminal() -> None:
    """SIGINT as a terminal's run has it. A run started in the background by a
    non-interactive shell (`cmd &`, as a CI script may be) inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: the child would sleep through the
    signal (CI: timed out after 120 s; passed wherever SIGINT was not ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "guard"), [
    pytest.param(signal.SIGTERM, True, id="sigterm"),
    pytest.param(signal.SIGINT, True, id="sigint"),
    pytest.param(signal.SIGTERM, False, id="sigterm-without-guard-leaves-processes"),
])
def test_interrupted_run_leaves_nothing(tmp_path: Path, sig: signal.Signals,
                                        guard: bool) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    run = f"interrupt-{uuid.uuid4().hex[:8]}"
    ready = tmp_path / "ready.json"
    env = {**os.environ, procguard.MARKER: run, "RK_INTERRUPT_READY": str(ready),
           "RINGKEEPER_PROCGUARD": "on" if guard else "off"}
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/integration/interrupt_target.py"],
        cwd=REPO, env=env, start_new_session=True, preexec_fn=_as_from_a_terminal,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: dict[int, str] = {}
    try:
        wait_until("the interrupted run's servers and agents", ready.exists, 90)

        def servers_up() -> bool:
            marked = procguard._marked_pids(run)
            return sum(_comm(p) == "postgres" for p in marked) >= 2  # pg_ctl's + an agent's

        wait_until("PostgreSQL started by pg_ctl and by an agent", servers_up, 90)
        info = json.loads(ready.read_text())
        for pid in [info["postmaster"], *info["agents"], *procguard._marked_pids(run)]:
            started = _start_time(pid)
            if started is not None:
                seen[pid] = started
        assert info["postmaster"] in seen and all(a in seen for a in info["agents"])
        child.send_signal(sig)
        out, _ = child.communicate(timeout=120)
        left = {p: _comm(p) for p, t in seen.items() if _alive(p, t)}
        left.update({p: _comm(p) for p in procguard._marked_pids(run)})
        if guard:
            assert not left, (f"processes left after {sig.name}: {left}\n"
                              f"{out.decode(errors='replace')[-3000:]}")
        else:
            # Without the guard a terminated run leaves its servers and agents running:
            # this is the failure the guard exists for, and proof that the check sees it.
            assert info["postmaster"] in left and any(a in left for a in info["agents"]), left
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()
        procguard._stop([p for p, t in seen.items() if _alive(p, t)]
                        + procguard._marked_pids(run), grace=5)
