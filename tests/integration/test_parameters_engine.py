"""The PostgreSQL allow-list against real servers: every value the check accepts is one the
server accepts too, in every unit and at every bound, and a tuned server starts with the
agent's rendered file and reports the values it was given.

`postgres -C` reads the whole configuration (including the agent's include file) and exits
non-zero on any line it refuses, without starting a server; one real start per major then
covers what only a running server shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgserver import MAJORS, POD_USER, PgServer, _as_pod_user, pg_bin, unavailable
from ringkeeper.agent.config import render_config
from ringkeeper.engines import Param, ParamType, profile_for
from ringkeeper.engines.parameters import BASE_UNITS

AVAILABLE = [m for m in MAJORS if not unavailable(m)]
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no PostgreSQL binaries installed")
STRINGS = {"timezone": ["UTC", "Asia/Shanghai", "Etc/GMT-8"],
           "log_timezone": ["UTC", "Asia/Shanghai"],
           "datestyle": ["ISO, YMD", "iso, dmy", "SQL", "German, DMY"],
           "log_line_prefix": ["%m [%p] %q%u@%d app=%a ", "", "<%t>|%r|~!#$%^&*()[]{}:;,./?"]}


def _values(p: Param) -> list[str]:
    """Edge and typical values of one parameter, in every unit it takes."""
    if p.type is ParamType.BOOL:
        return ["on", "OFF", "true", "No", "1", "0"]
    if p.type is ParamType.ENUM:
        return [*p.values, p.values[0].upper()]
    if p.type is ParamType.STRING:
        return STRINGS[p.name]
    if p.type is ParamType.REAL:
        out = [repr(float(p.min)), repr(float(p.max)), "0.5" if p.min <= 0.5 <= p.max else "1"]
        return [v.removesuffix(".0") if v.endswith(".0") else v for v in out] + (
            ["1s" if p.max >= 1000 else "1ms"] if p.unit else [])
    out = [str(int(p.min)), str(int(p.max))]
    if p.unit:
        for unit in BASE_UNITS[p.unit][0]:
            lo, hi, step = p._int_bounds(unit)
            out += [f"{lo + (-lo) % step}{unit}", f"{hi - hi % step}{unit}"]
    return [v for v in out if p.accepts(v)]


def _sets(params: list[Param]) -> list[dict[str, str]]:
    """Configurations that, together, give every parameter each of its edge values."""
    values = {p.name: _values(p) for p in params}
    depth = max(len(v) for v in values.values())
    return [{n: v[i] for n, v in values.items() if i < len(v)} for i in range(depth)]


@pytest.fixture(scope="module")
def confdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="rk-params-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _postgres_c(major: str, root: Path, user: dict[str, str], show: str
                ) -> subprocess.CompletedProcess[str]:
    """Render `user` as the agent would and ask the server's own parser about the file."""
    profile = profile_for("postgresql", major)
    out = render_config(profile, {}, user)
    assert out.refused == (), out.refused
    data = root / f"pg{major}"
    data.mkdir(exist_ok=True)
    (data / "postgresql.conf").write_text("include_if_exists = 'ringkeeper.conf'\n")
    (data / "ringkeeper.conf").write_text(out.text)
    if os.geteuid() == 0:
        for path in (data, data / "postgresql.conf", data / "ringkeeper.conf"):
            shutil.chown(path, POD_USER, POD_USER)
    os.chmod(data, 0o700)
    binary = pg_bin(major)
    assert binary is not None
    return subprocess.run(_as_pod_user([str(binary / "postgres"), "-D", str(data), "-C", show]),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("major", AVAILABLE)
def test_server_parses_every_accepted_edge_value(major: str, confdir: Path) -> None:
    profile = profile_for("postgresql", major)
    params = list(profile.parameters.allowed(profile.major).values())
    for user in _sets(params):
        res = _postgres_c(major, confdir, user, "work_mem")
        assert res.returncode == 0, f"{user}\n{res.stderr}"


@pytest.mark.parametrize("major", AVAILABLE)
def test_server_refuses_what_the_check_refuses_at_the_edges(major: str, confdir: Path) -> None:
    """The check is not looser than the server: one step past each of a few bounds, the
    server refuses too (and so this test's harness can see a refusal)."""
    outside = {"work_mem": "63kB", "checkpoint_timeout": "29s", "max_wal_size": "1MB",
               "checkpoint_completion_target": "1.5", "log_statement": "everything"}
    profile = profile_for("postgresql", major)
    for name, value in outside.items():
        assert not profile.parameters.by_name[name].accepts(value)
        profile_check = profile.parameter_problems({name: value})
        assert profile_check, (name, value)
        data = confdir / f"raw{major}"
        data.mkdir(exist_ok=True)
        (data / "postgresql.conf").write_text(f"{name} = '{value}'\n")
        if os.geteuid() == 0:
            shutil.chown(data, POD_USER, POD_USER)
        os.chmod(data, 0o700)
        binary = pg_bin(major)
        assert binary is not None
        res = subprocess.run(_as_pod_user([str(binary / "postgres"), "-D", str(data), "-C",
                                           name]), capture_output=True, text=True, timeout=60)
        assert res.returncode != 0, (name, value, res.stdout)
        assert name in res.stderr


@pytest.mark.parametrize("major", AVAILABLE)
def test_server_reports_the_units_the_check_assumes(major: str, confdir: Path) -> None:
    """A value with a unit means what the check converted it to: the server shows the same
    amount (wrong base units would show up here as a different number)."""
    user = {"shared_buffers": "256MB", "work_mem": "2GB", "checkpoint_timeout": "15min",
            "max_wal_size": "2GB", "log_min_duration_statement": "2s",
            "autovacuum_naptime": "1min", "temp_buffers": "16MB"}
    expect = {"shared_buffers": "32768", "work_mem": "2097152", "checkpoint_timeout": "900",
              "max_wal_size": "2048", "log_min_duration_statement": "2000",
              "autovacuum_naptime": "60", "temp_buffers": "2048"}
    for name, base_value in expect.items():
        res = _postgres_c(major, confdir, user, name)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == base_value, (name, res.stdout)


@pytest.mark.parametrize("major", AVAILABLE[-1:])
def test_tuned_server_starts_with_the_rendered_file(major: str) -> None:
    tuning = {
        "shared_buffers": "64MB", "work_mem": "32MB", "maintenance_work_mem": "256MB",
        "effective_cache_size": "1GB", "max_connections": "50", "max_wal_size": "1GB",
        "min_wal_size": "32MB", "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9", "wal_buffers": "-1", "wal_compression": "on",
        "wal_keep_size": "512MB", "random_page_cost": "1.1", "effective_io_concurrency": "200",
        "default_statistics_target": "500", "log_min_duration_statement": "500ms",
        "log_statement": "ddl", "log_connections": "on", "log_disconnections": "ON",
        "log_lock_waits": "true", "log_line_prefix": "%m [%p] %q%u@%d app=%a ",
        "log_timezone": "Asia/Shanghai", "TimeZone": "Asia/Shanghai", "DateStyle": "ISO, YMD",
        "autovacuum_vacuum_scale_factor": "0.05", "autovacuum_max_workers": "6",
        "autovacuum_naptime": "30s", "autovacuum_vacuum_cost_delay": "2ms",
        "lock_timeout": "30s", "idle_in_transaction_session_timeout": "10min",
        "max_parallel_workers": "8", "max_parallel_workers_per_gather": "4", "jit": "off",
        "default_transaction_isolation": "read committed", "huge_pages": "try"}
    profile = profile_for("postgresql", major)
    server = PgServer(major, name=f"params-{major}")
    try:
        server.init()
        out = render_config(profile, {}, tuning)
        assert out.refused == ()
        with (server.data / "postgresql.conf").open("a") as f:
            f.write("include_if_exists = 'ringkeeper.conf'\n")
        (server.data / "ringkeeper.conf").write_text(out.text)
        server.start()
        shown = server.psql("SELECT current_setting('work_mem') || ' ' || "
                            "current_setting('log_line_prefix') || '|' || "
                            "current_setting('TimeZone') || '|' || "
                            "current_setting('default_transaction_isolation')")
        assert shown == "32MB %m [%p] %q%u@%d app=%a |Asia/Shanghai|read committed"
    finally:
        server.destroy()
