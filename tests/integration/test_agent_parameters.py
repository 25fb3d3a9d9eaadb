"""A real agent given a Campus whose spec.parameters never went through admission (a
Campus stored before the allow-list, or written around it): it starts the server with the
allowed tuning, writes none of the rest, and says what it dropped."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from integration.localcampus import LocalCampus, agent_client, pg_bin, unavailable, wait_until

pytestmark = pytest.mark.postgres

HOSTILE = {
    "work_mem": "48MB",
    "Log_Min_Duration_Statement": "250ms",
    "ARCHIVE_COMMAND": "touch {marker}",
    "archive_mode\narchive_mode": "on",
    "log_line_prefix": "%m\narchive_command = 'touch {marker}'",
    "include": "/etc/passwd",
    "no_such_setting": "1",
    "": "on",
}


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ringkeeper-params-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_agent_renders_only_allowed_parameters(root: Path) -> None:
    major = "17" if pg_bin("17") else "15"
    reason = unavailable() or (None if pg_bin(major) else f"PostgreSQL {major} not installed")
    if reason:
        pytest.skip(reason)
    marker = root / "pwned"
    params = {k: v.format(marker=marker) for k, v in HOSTILE.items()}
    c = LocalCampus(root / "campus", major, instances=1, subnet=11)
    try:
        c.write_campus({"synchronous": {"number": 0, "dataDurability": "preferred"},
                        "parameters": params}, {"targetPrimary": c.names[0]})
        c.start(c.names[0])
        async with aiohttp.ClientSession() as session:
            agents = agent_client(session)

            async def primary_up() -> bool:
                st = await agents.status(c.ips[c.names[0]])
                return bool(st and st["role"] == "primary")

            await wait_until("the primary", primary_up, timeout=90)

        async def connected() -> asyncpg.Connection | None:
            try:
                return await asyncpg.connect(**c.dsn(c.names[0]), timeout=5)
            except (OSError, asyncpg.PostgresError):
                return None  # roles and the app database come right after promotion

        conn = await wait_until("the app database", connected, timeout=60)
        try:
            assert await conn.fetchval("SHOW work_mem") == "48MB"
            assert await conn.fetchval("SHOW log_min_duration_statement") == "250ms"
            assert await conn.fetchval("SHOW archive_mode") == "off"
            assert await conn.fetchval("SHOW archive_command") in ("", "(disabled)")
            assert await conn.fetchval("SHOW log_line_prefix") != params["log_line_prefix"]
        finally:
            await conn.close()
        conf = (root / "campus" / c.names[0] / "data" / "pgdata" / "ringkeeper.conf").read_text()
        user_part = conf.split("# Managed by Ringkeeper:")[0]
        settings = [ln for ln in user_part.splitlines() if not ln.startswith("#")]
        assert settings == ["log_min_duration_statement = '250ms'", "work_mem = '48MB'"]
        assert "/etc/passwd" not in conf and str(marker) not in conf
        log = (root / "campus" / c.names[0] / "agent.log").read_text(errors="replace")
        assert "spec.parameters entry 'ARCHIVE_COMMAND' not written: parameters may not set " \
               "archive_command: it runs a shell command as the database user" in log
        assert not marker.exists()
    except BaseException:
        print(c.log(c.names[0]))
        raise
    finally:
        c.stop_all()
