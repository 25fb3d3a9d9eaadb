"""The Satellite controller reads its sync figures from the parent's sync sidecar: a real
HTTP server stands in for the sidecar's /status (issue 17, step 2)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from pgserver import free_port
from ringkeeper.adapters import resources
from ringkeeper.controller import satellite_sync
from ringkeeper.core import manifests
from ringkeeper.core.satsync import sync_status

SAT = {"metadata": {"name": "xindeng", "namespace": "lis"},
       "spec": {"parentRef": {"name": "fuyang"}}}
ENTRY = {"name": "xindeng", "connected": False, "parentBacklogRows": 7,
         "parentBacklogBytes": 700, "satelliteBacklogBytes": 0,
         "lastContact": "2026-12-01T10:00:00+00:00"}


async def serve(report: Any, status: int = 200) -> tuple[web.AppRunner, int]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(report, status=status)

    app = web.Application()
    app.router.add_get("/status", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def campus(ip: str | None) -> dict[str, Any]:
    return {"status": {"currentPrimary": "fuyang-0",
                       "instances": [{"name": "fuyang-0", "podIP": ip}]}}


@pytest.mark.parametrize(("report", "status", "want"), [
    ({"satellites": [{"name": "other"}, ENTRY]}, 200, ENTRY),
    ({"satellites": [{"name": "other"}]}, 200, None),  # not synced by this parent (yet)
    ({"member": "fuyang"}, 200, None),  # a sidecar from before satellites
    ({"satellites": [ENTRY]}, 503, None),
])
async def test_parent_report(monkeypatch: pytest.MonkeyPatch, report: Any, status: int,
                             want: Any) -> None:
    runner, port = await serve(report, status)
    monkeypatch.setattr(manifests, "SYNC_PORT", port)

    async def read_campus(_api: Any, ns: str, name: str) -> dict[str, Any]:
        assert (ns, name) == ("lis", "fuyang")
        return campus("127.0.0.1")

    monkeypatch.setattr(resources, "read_campus", read_campus)
    try:
        got = await satellite_sync.parent_report(None, SAT)  # type: ignore[arg-type]
    finally:
        await runner.cleanup()
    assert got == want
    if want is not None:
        assert sync_status(got, ready=True) == {
            "connected": False, "backlogRows": 7, "backlogBytes": 700,
            "parentBacklogRows": 7, "parentBacklogBytes": 700, "satelliteBacklogBytes": 0,
            "lastSyncAt": "2026-12-01T10:00:00+00:00", "phase": "Offline"}


async def test_no_primary_or_no_answer_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifests, "SYNC_PORT", free_port())  # nothing listens there

    async def no_primary(*_: Any) -> dict[str, Any]:
        return campus(None)

    async def there(*_: Any) -> dict[str, Any]:
        return campus("127.0.0.1")

    monkeypatch.setattr(resources, "read_campus", no_primary)
    assert await satellite_sync.parent_report(None, SAT) is None  # type: ignore[arg-type]
    monkeypatch.setattr(resources, "read_campus", there)
    assert await satellite_sync.parent_report(None, SAT) is None  # type: ignore[arg-type]
