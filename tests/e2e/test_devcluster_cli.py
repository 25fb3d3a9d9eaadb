"""`ringkeeper-dev` start-up, idempotence, crash reporting and clear errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import Cluster

SECOND = {
    "RINGKEEPER_DEV_APISERVER_PORT": "36443",
    "RINGKEEPER_DEV_ETCD_PORT": "32379",
    "RINGKEEPER_DEV_ETCD_PEER_PORT": "32380",
    "RINGKEEPER_DEV_KCM_PORT": "30257",
}


def _dev(state: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ringkeeper-dev", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_up_twice_does_not_start_a_second_cluster(cluster: Cluster) -> None:
    before = {p.name: p.read_text() for p in (cluster.state / "run").glob("*.pid")}
    res = _dev(cluster.state, "up", env={k: os.environ.get(k, "") for k in SECOND
                                         if k in os.environ})
    assert res.returncode == 0, res.stderr
    assert "already running" in res.stdout
    after = {p.name: p.read_text() for p in (cluster.state / "run").glob("*.pid")}
    assert before == after


def test_status_reports_every_component(cluster: Cluster) -> None:
    res = _dev(cluster.state, "status")
    assert res.returncode == 0
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "runtime"):
        assert f"{name}" in res.stdout and "running (pid" in res.stdout


@pytest.fixture
def second_state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "second"
    yield state
    _dev(state, "down", env=SECOND)


def test_crash_reported_port_conflict_and_down(cluster: Cluster, second_state: Path) -> None:
    # A port already in use stops start-up with a message that says what to do.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", int(SECOND["RINGKEEPER_DEV_APISERVER_PORT"])))
    blocker.listen()
    try:
        res = _dev(second_state, "up", env=SECOND)
        assert res.returncode == 1
        assert "kube-apiserver port 36443 already in use" in res.stderr
        assert "RINGKEEPER_DEV_APISERVER_PORT" in res.stderr
    finally:
        blocker.close()

    t0 = time.monotonic()
    res = _dev(second_state, "up", env=SECOND)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 30, "start-up with cached binaries takes well under 30 s"

    # A crashed component shows up in status, and status fails.
    pid = int((second_state / "run" / "kube-controller-manager.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    res = _dev(second_state, "status", env=SECOND)
    assert res.returncode == 1
    assert "kube-controller-manager  CRASHED" in res.stdout

    # down stops everything it started and leaves nothing running.
    pids = [int(p.read_text()) for p in (second_state / "run").glob("*.pid")]
    res = _dev(second_state, "down", env=SECOND)
    assert res.returncode == 0
    for p in pids:
        assert not Path(f"/proc/{p}").exists() or "Z" in Path(f"/proc/{p}/stat").read_text()
    res = _dev(second_state, "status", env=SECOND)
    assert "not started" in res.stdout
