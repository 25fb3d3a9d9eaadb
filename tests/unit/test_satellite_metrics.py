"""The sync sidecar exports ringkeeper_satellite_* gauges from its satellite reports
(issue 17, Surfaces): read back from the real Prometheus registry."""

from __future__ import annotations

import time
from types import SimpleNamespace

from aiohttp import ClientSession, web
from prometheus_client import REGISTRY

from pgserver import free_port
from ringkeeper.core.catchup import catch_up
from ringkeeper.sync.linkreport import LinkReport
from ringkeeper.sync.memberstate import MemberState
from ringkeeper.sync.run import build_app, export_satellite
from ringkeeper.sync.satreport import SatelliteReport


def value(name: str, sat: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"ring": "lis", "parent": "fuyang",
                                            "satellite": sat})


def report(name: str, *, rows: int | None, drained: int, contact: float | None,
           running: bool = True) -> SatelliteReport:
    up = LinkReport("xindeng", "fuyang", "rk_lis_s_to_a", lag_bytes=4096, running=running)
    down = LinkReport("fuyang", "xindeng", "rk_lis_a_to_s")
    return SatelliteReport(name, "fuyang", up, down, contact_at=contact, spool_rows=rows,
                           spool_bytes=None if rows is None else rows * 100,
                           drained_rows=drained)


def test_catch_up_share_rate_and_eta() -> None:
    assert catch_up(0, 0, 0, []).percent == 100.0
    assert catch_up(100, 400, 900, []).percent == 25.0
    assert catch_up(500, 400, 10, []).percent == 0.0  # a restarted count: never negative
    assert catch_up(0, 0, 0, []).eta_seconds == 0.0  # nothing spooled: done
    # 2,000 rows drained over the last 4 s: 500 rows/s, 1,000 left: 2 s.
    samples = [(100.0, 0), (101.0, 500), (102.0, 1000), (104.0, 2000)]
    c = catch_up(0, 2000, 1000, samples)
    assert (c.rows_per_second, c.eta_seconds) == (500.0, 2.0)
    # Only the last 10 s count: an idle stretch before them does not slow the rate.
    c = catch_up(0, 2000, 1000, [(50.0, 0), (93.0, 0), *samples[1:]])
    assert c.rows_per_second == 500.0 and c.eta_seconds == 2.0
    # Nothing drains (cut off): a rate of 0 and no ETA, never a made-up one.
    stalled = catch_up(0, 500, 300, [(10.0, 500), (15.0, 500)])
    assert (stalled.rows_per_second, stalled.eta_seconds) == (0.0, None)
    assert catch_up(0, 500, 300, [(10.0, 500)]).rows_per_second is None  # under 1 s
    assert catch_up(0, 10, 5, [(0.0, 900), (5.0, 10)]).rows_per_second == 0.0  # restarted


def test_gauges_follow_the_report_through_an_outage_and_a_catch_up() -> None:
    sat = report("xindeng", rows=0, drained=50, contact=time.monotonic() - 2)
    sat.measured()
    export_satellite("lis", sat)
    assert value("ringkeeper_satellite_connected", "xindeng") == 1
    assert value("ringkeeper_satellite_parent_backlog_rows", "xindeng") == 0
    assert value("ringkeeper_satellite_satellite_backlog_bytes", "xindeng") == 4096
    assert 1.5 <= (value("ringkeeper_satellite_last_contact_age_seconds", "xindeng") or 0) < 5
    assert value("ringkeeper_satellite_catchup_percent", "xindeng") == 100
    # Cut off: the spool grows, contact ages past the window.
    sat.contact_at = time.monotonic() - 60
    sat.spool_rows, sat.spool_bytes = 300, 30000
    sat.measured()
    export_satellite("lis", sat)
    assert value("ringkeeper_satellite_connected", "xindeng") == 0
    assert value("ringkeeper_satellite_parent_backlog_rows", "xindeng") == 300
    assert value("ringkeeper_satellite_parent_backlog_bytes", "xindeng") == 30000
    assert value("ringkeeper_satellite_catchup_percent", "xindeng") == 0
    # Healed: 200 drained since the spool was last empty, 100 left.
    sat.contact_at = time.monotonic()
    sat.drained_rows, sat.spool_rows = 250, 100
    sat.measured()
    export_satellite("lis", sat)
    assert value("ringkeeper_satellite_connected", "xindeng") == 1
    assert value("ringkeeper_satellite_drained_rows", "xindeng") == 250
    assert value("ringkeeper_satellite_catchup_percent", "xindeng") == round(200 / 3, 1)
    # Caught up; the next outage's catch-up counts from there: 50 drained, 50 left.
    sat.drained_rows, sat.spool_rows = 350, 0
    sat.measured()
    export_satellite("lis", sat)
    sat.drained_rows, sat.spool_rows = 400, 50
    sat.measured()
    export_satellite("lis", sat)
    assert value("ringkeeper_satellite_catchup_percent", "xindeng") == 50


def test_unknown_values_are_minus_one_not_zero() -> None:
    export_satellite("lis", report("baihe", rows=None, drained=0, contact=None,
                                   running=False))
    assert value("ringkeeper_satellite_connected", "baihe") == 0
    assert value("ringkeeper_satellite_parent_backlog_rows", "baihe") == -1
    assert value("ringkeeper_satellite_parent_backlog_bytes", "baihe") == -1
    assert value("ringkeeper_satellite_last_contact_age_seconds", "baihe") == -1


async def test_the_sidecars_metrics_endpoint_serves_its_satellites() -> None:
    """Through build_app's /metrics, as Prometheus scrapes it: the member's report's
    satellites are exported (a stand-in sidecar holds a real MemberState)."""
    state = MemberState("fuyang")
    state.satellites["qingshan"] = report("qingshan", rows=12, drained=0,
                                          contact=time.monotonic())
    sidecar = SimpleNamespace(state=state, ring="lis", member="fuyang")
    runner = web.AppRunner(build_app(sidecar, "lis"))  # type: ignore[arg-type]
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    finally:
        await runner.cleanup()
    assert 'ringkeeper_satellite_parent_backlog_rows{parent="fuyang",ring="lis",' \
           'satellite="qingshan"} 12.0' in text
    assert 'ringkeeper_satellite_connected{parent="fuyang",ring="lis",' \
           'satellite="qingshan"} 1.0' in text
