"""Rendered satellite filters on a real PostgreSQL: for random filters with hostile values,
`SELECT id FROM scratch WHERE <filter_sql>` sent over the simple query protocol (which would
run a second statement if a value could end its literal) returns exactly the rows the
filter's documented semantics select, and leaves the scratch table and a canary intact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgserver
from ringkeeper.api.v1alpha1.satellite import FilterOp, FilterTerm, RowFilter
from ringkeeper.core.satellite import filter_sql

HOSTILE = ["FY", "XD", "x'; DROP TABLE scratch; --", "a\nb", "'", "''", "\\", "$$", "新登",
           "😀", ") OR (1=1", "", " ", "fy", "\u2028", "\r\n", "--", "/*"]
COLUMNS = ("home_campus", "site", "code")
ROWS: list[tuple[int, str | None, str | None, str | None]] = [
    (i, a, b, c) for i, (a, b, c) in enumerate(
        (HOSTILE[i % len(HOSTILE)] if i % 7 else None,
         HOSTILE[(i * 5) % len(HOSTILE)] if i % 5 else None,
         HOSTILE[(i * 3 + 1) % len(HOSTILE)] if i % 11 else None) for i in range(120))]


def matches(term: FilterTerm, value: str | None) -> bool:
    """The semantics docs/satellites.md states (SQL's: NULL matches no comparison)."""
    op = FilterOp(term.op)
    if op is FilterOp.IS_NULL:
        return value is None
    if op is FilterOp.IS_NOT_NULL:
        return value is not None
    if value is None:
        return False
    if op in (FilterOp.EQUALS, FilterOp.IN):
        return value in term.values
    return value not in term.values


def expected(f: RowFilter) -> set[int]:
    return {row[0] for row in ROWS
            if all(matches(t, row[1:][COLUMNS.index(t.column)]) for t in f.all_of)}


# No NUL (refused at admission) and no lone surrogates (no UTF-8 text holds one).
VALUES = st.one_of(st.sampled_from(HOSTILE), st.text(
    st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20))


@st.composite
def filters(draw: st.DrawFn) -> RowFilter:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(list(FilterOp)))
        n = {FilterOp.EQUALS: 1, FilterOp.NOT_EQUALS: 1, FilterOp.IS_NULL: 0,
             FilterOp.IS_NOT_NULL: 0}.get(op, -1)
        if n < 0:
            n = draw(st.integers(1, 4))
        out.append({"column": draw(st.sampled_from(COLUMNS)), "op": op.value,
                    "values": draw(st.lists(VALUES, min_size=n, max_size=n))})
    return RowFilter.model_validate({"all": out})


@pytest.fixture(scope="module")
def server() -> Iterator[pgserver.PgServer]:
    why = pgserver.unavailable("17")
    if why:
        pytest.skip(why)
    with pgserver.servers("17") as (s,):
        s.psql("CREATE TABLE scratch (id int PRIMARY KEY, home_campus text, site text, "
               "code text); CREATE TABLE canary (x int); INSERT INTO canary VALUES (1)")
        asyncio.run(_load(s))
        yield s


async def _load(s: pgserver.PgServer) -> None:
    conn = await asyncpg.connect(s.dsn())
    try:
        await conn.copy_records_to_table("scratch", records=ROWS)
    finally:
        await conn.close()


async def _select(s: pgserver.PgServer, where: str) -> tuple[set[int], int, int]:
    conn = await asyncpg.connect(s.dsn())
    try:
        # execute() without arguments is the simple query protocol: several statements
        # would all run. The hits go to a temporary table to be read back.
        await conn.execute("CREATE TEMP TABLE hits AS SELECT id FROM scratch WHERE "
                           f"{where}")
        hits = {r["id"] for r in await conn.fetch("SELECT id FROM hits")}
        left = await conn.fetchval("SELECT count(*) FROM scratch")
        canary = await conn.fetchval("SELECT count(*) FROM canary")
        return hits, left, canary
    finally:
        await conn.close()


@given(filters())
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_filter_selects_what_it_says(server: pgserver.PgServer, f: RowFilter) -> None:
    hits, left, canary = asyncio.run(_select(server, filter_sql(f)))
    assert hits == expected(f), filter_sql(f)
    assert (left, canary) == (len(ROWS), 1)


def test_the_check_sees_an_injection(server: pgserver.PgServer) -> None:
    """The same check on a naively spliced value: the second statement runs (or the
    selection differs), which is what the property above would catch."""
    where = "site = 'x'; DELETE FROM canary; --'"
    hits, _, canary = asyncio.run(_select(server, where))
    assert canary == 0 and hits == set()
    server.psql("INSERT INTO canary VALUES (1)")
