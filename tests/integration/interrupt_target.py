"""The run that test_interrupt_cleanup interrupts (not collected by the suite itself).

It starts what the suite's tests start, a plain PostgreSQL server through pg_ctl (a
daemon, not our child) and a three-instance campus of instance agents in sessions of
their own, writes their pids where the parent test can read them, and waits to be
interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from integration.localcampus import LocalCampus, unavailable
from pgserver import servers


def test_hold_servers_and_agents() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    ready = Path(os.environ["RK_INTERRUPT_READY"])
    root = Path(tempfile.mkdtemp(prefix="ringkeeper-intr-"))
    root.chmod(0o755)
    try:
        with servers("15") as [pg]:
            campus = LocalCampus(root / "campus", "15", name="intr", subnet=9)
            campus.write_campus({}, {"targetPrimary": "intr-0"})
            for name in campus.names:
                campus.start(name)
            postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
            ready.write_text(json.dumps({
                "postmaster": postmaster, "agents": [p.pid for p in campus.procs.values()]}))
            try:
                time.sleep(600)
            finally:
                campus.stop_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)
