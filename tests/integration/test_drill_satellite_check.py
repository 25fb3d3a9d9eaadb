"""The Satellite partition drill's writers and its two-sided check against a real
PostgreSQL 17 server, without a cluster: two databases stand for the satellite and its
parent; both writers run (inserts and updates of their own rows), the test plays the link
(copies the satellite's rows to the parent, and the parent's rows the filter selects to
the satellite), and SatRun.check finds nothing lost. Then the check fails as it must: a
satellite row deleted at the parent, and a selected parent row missing at the satellite,
are each one lost commit; a parent row the filter leaves out is not owed to the satellite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from pgserver import PgServer, unavailable
from ringkeeper.api.v1alpha1.satellite import RowFilter
from ringkeeper.controller.drill_sat import SatRun
from ringkeeper.core.drill_satellite import DRILL_DDL, DRILL_QUALIFIED, SatelliteTarget

pytestmark = pytest.mark.postgres
PASSWORD = "drill-secret"
T = DRILL_QUALIFIED


@pytest.fixture
def server() -> Iterator[PgServer]:
    reason = unavailable("17")
    if reason:
        pytest.skip(reason)
    s = PgServer("17", name="satdrill")
    s.start()
    s.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
    s.psql("CREATE DATABASE sat OWNER app")
    s.psql("CREATE DATABASE par OWNER app")
    try:
        yield s
    finally:
        s.destroy()


def _dsn(s: PgServer, db: str) -> str:
    return f"postgresql://app:{PASSWORD}@{s.host}:{s.port}/{db}"


async def _link(src: str, dst: str, where: str) -> None:
    """Play the sync: copy `src`'s rows matching `where` (constant test SQL) to `dst`."""
    a, b = await asyncpg.connect(src), await asyncpg.connect(dst)
    try:
        rows = await a.fetch(f"SELECT id, site, v FROM {T} WHERE {where}")
        await b.executemany(f"INSERT INTO {T} (id, site, v) VALUES ($1, $2, $3) ON CONFLICT "
                            "(id) DO UPDATE SET v = excluded.v, site = excluded.site",
                            [tuple(r) for r in rows])
    finally:
        await a.close()
        await b.close()


async def _exec(dsn: str, sql: str) -> None:
    c = await asyncpg.connect(dsn)
    try:
        await c.execute(sql)
    finally:
        await c.close()


async def test_writers_and_the_check_find_what_is_lost(server: PgServer) -> None:
    sat_dsn, par_dsn = _dsn(server, "sat"), _dsn(server, "par")
    for d in (sat_dsn, par_dsn):
        await _exec(d, DRILL_DDL)
    only_xd = RowFilter.model_validate({"all": [{"column": "site", "op": "In",
                                                 "values": ["xd"]}]})
    run = SatRun(SatelliteTarget(name="xd", parent="fy", parent_exists=True,
                                 parent_rings=("lis",), tables=(T,), row_filter=only_xd))
    dsns = {"xd": sat_dsn, "fy": par_dsn}
    await run.start(dsns, rate=50, seconds=3)
    sat, par = run.writers["xd"], run.writers["fy"]
    assert sat.commits > 50 and par.commits > 50, (sat.figures(), par.figures())
    assert sat.errors == 0 and par.errors == 0, (sat.figures(), par.figures())
    assert any(v != frozenset({0}) for v in sat.acked.values()), "no update was made"
    # nothing crossed yet: the check must see everything missing on the other side
    await run.check(dsns)
    assert run.loss is not None and run.loss.lost == len(sat.acked) + len(
        [k for k in par.acked if k % 2 == 0]), run.loss.as_dict()

    await _link(sat_dsn, par_dsn, "TRUE")
    await _link(par_dsn, sat_dsn, "site = 'xd'")
    await run.check(dsns)
    assert run.loss is not None and run.loss.lost == 0, run.loss.as_dict()
    d = run.loss.as_dict()
    assert d["satelliteRowsAtParent"]["checked"] == len(sat.acked)
    # the parent cycles its sites (fy, xd): about half its rows are owed to xd
    assert 0 < d["parentRowsAtSatellite"]["checked"] < len(par.acked)

    # The check can fail: one satellite row dropped at the parent, one selected parent row
    # dropped at the satellite: two lost commits.
    sat_key = min(sat.acked)
    par_key = min(k for k in par.acked if k % 2 == 0)  # even keys: site xd (SideWriter)
    await _exec(par_dsn, f"DELETE FROM {T} WHERE id = {sat_key}")
    await _exec(sat_dsn, f"DELETE FROM {T} WHERE id = {par_key}")
    await run.check(dsns)
    assert run.loss is not None and run.loss.lost == 2, run.loss.as_dict()
    assert run.loss.satellite_at_parent.lost == (sat_key,)
    assert run.loss.parent_at_satellite.lost == (par_key,)
    # a parent row the filter leaves out (site fy: odd keys) is not owed to the satellite
    odd = min(k for k in par.acked if k % 2 == 1)
    await _exec(sat_dsn, f"DELETE FROM {T} WHERE id = {odd}")
    await run.check(dsns)
    assert run.loss is not None and run.loss.lost == 2, run.loss.as_dict()


async def test_an_unreadable_side_is_an_error_not_a_pass(server: PgServer) -> None:
    await _exec(_dsn(server, "par"), DRILL_DDL)
    run = SatRun(SatelliteTarget(name="xd", parent="fy", parent_exists=True,
                                 parent_rings=("lis",), tables=(T,)))
    dsns = {"xd": _dsn(server, "nosuchdb"), "fy": _dsn(server, "par")}
    await asyncio.wait_for(run.check(dsns), 30)
    assert run.loss is None and run.check_error, run.check_error
