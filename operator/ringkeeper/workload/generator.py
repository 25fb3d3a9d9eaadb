"""Run the laboratory workload at several sites at once, paced, with a ledger.

Scale: a large hospital's day is about 20,000 specimens and 300,000 results; by default
that day is compressed into `DEFAULT_SECONDS` (10 minutes, about 33 specimens and 500
results per second over all sites). `plan()` turns the three knobs (specimens, duration,
rate) into one consistent plan; the run stops at whichever comes first, the specimen
budget or the duration. Rate 0 means "as fast as the servers take it" (throughput runs).

Each site gets `workers` connections of its own, all to that site's server: a site's
writes always enter the ring at its own campus or satellite. Errors are counted by type,
kept (the last message, never the DSN), backed off (0.2 s doubling to 5 s) and the
connection is replaced when it broke; the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import schema
from .flow import Mix, Peer, SiteWriter
from .keys import MAX_SITE, KeySource, valid_site_name
from .ledger import Ledger

HOSPITAL_DAY_SPECIMENS = 20_000
HOSPITAL_DAY_RESULTS = 300_000
DEFAULT_SECONDS = 600.0
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class LoadPlan:
    specimens: int  # over all sites; 0: no budget, the duration alone ends the run
    duration: float  # seconds
    rate: float  # specimens per second over all sites; 0: unpaced
    workers: int = 4  # connections per site
    mix: Mix = field(default_factory=Mix)
    seed: int | None = None


def plan(specimens: int | None = None, duration: float | None = None,
         rate: float | None = None, workers: int = 4, mix: Mix | None = None,
         seed: int | None = None) -> LoadPlan:
    """Fill in what was not given: a hospital day in ten minutes by default; a given rate
    and duration set the specimen budget; a given budget and rate set the duration."""
    for name, v in (("specimens", specimens), ("duration", duration), ("rate", rate)):
        if v is not None and v < 0:
            raise ValueError(f"{name} must not be negative")
    if duration is not None and duration == 0:
        raise ValueError("duration must be positive")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if specimens is None:
        specimens = (math.ceil(rate * duration) if rate and duration is not None
                     else HOSPITAL_DAY_SPECIMENS)
    if duration is None:
        duration = specimens / rate if rate and specimens else DEFAULT_SECONDS
    if rate is None:
        rate = specimens / duration if specimens else 0.0
    return LoadPlan(specimens, duration, rate, workers, mix or Mix(), seed)


@dataclass(frozen=True)
class SiteTarget:
    """A site (campus or satellite) and the server its writes go to. `dsn` carries a
    password: it is handed to asyncpg only and never printed."""

    name: str
    number: int
    dsn: str = field(repr=False)
    schema: str = schema.SCHEMA  # where its tables are: `lis`, or a drill's own schema

    def __post_init__(self) -> None:
        valid_site_name(self.name)
        schema.schema_name(self.schema)
        if not 1 <= self.number <= MAX_SITE:
            raise ValueError(f"site number {self.number} outside 1..{MAX_SITE}")


class Pacer:
    """Hands out specimen slots at a fixed rate until the budget or the deadline ends."""

    def __init__(self, rate: float, budget: int, deadline: float) -> None:
        self.interval = 1 / rate if rate else 0.0
        self.budget, self.deadline = budget, deadline
        self.next = time.monotonic()
        self.given = 0

    async def take(self) -> bool:
        now = time.monotonic()
        if (self.budget and self.given >= self.budget) or now >= self.deadline:
            return False
        self.given += 1
        if self.interval:
            at = max(self.next, now - 1.0)  # a slow second is not made up in a burst
            self.next = at + self.interval
            if at > now:
                await asyncio.sleep(min(at - now, self.deadline - now))
        return time.monotonic() < self.deadline


@dataclass
class RunResult:
    elapsed: float
    sites: dict[str, Counter[str]]
    errors: dict[str, Counter[str]]
    last_errors: dict[str, str]

    def total(self, what: str) -> int:
        return sum(c[what] for c in self.sites.values())

    def as_dict(self) -> dict[str, Any]:
        e = max(self.elapsed, 1e-9)
        return {"elapsed_s": round(self.elapsed, 2), "specimens": self.total("specimens"),
                "results": self.total("results"), "commits": self.total("commits"),
                "specimens_per_s": round(self.total("specimens") / e, 1),
                "results_per_s": round(self.total("results") / e, 1),
                "corrections": self.total("corrections"),
                "cross_site_corrections": self.total("cross_site_corrections"),
                "errors": sum(sum(c.values()) for c in self.errors.values()),
                "sites": {s: dict(c) for s, c in self.sites.items()},
                "error_types": {s: dict(c) for s, c in self.errors.items() if c},
                "last_errors": {s: m for s, m in self.last_errors.items() if m}}


async def _worker(site: SiteTarget, writer: SiteWriter, pacer: Pacer) -> None:
    conn: Any = None
    backoff = 0.2
    while True:
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(site.dsn, timeout=CONNECT_TIMEOUT)
            await writer.serve_peers(conn)
            if not await pacer.take():
                break
            await writer.specimen(conn)
            backoff = 0.2
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                RuntimeError) as exc:  # OSError covers TimeoutError
            writer.stats.errors[type(exc).__name__] += 1
            writer.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if time.monotonic() >= pacer.deadline:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    if conn is not None:
        with contextlib.suppress(Exception):
            await writer.serve_peers(conn, retries=0)
        with contextlib.suppress(Exception):
            await conn.close(timeout=5)


async def prepare(site: SiteTarget) -> int:
    """Create the schema at the site's server and register the site; its run number."""
    conn = await asyncpg.connect(site.dsn, timeout=CONNECT_TIMEOUT)
    try:
        await schema.create(conn, site.schema)
        return await schema.register_site(conn, site.name, site.number, site.schema)
    finally:
        await conn.close()


async def run(sites: Sequence[SiteTarget], the_plan: LoadPlan, ledger: Ledger,
              progress: Callable[[RunResult], None] | None = None,
              progress_every: float = 5.0) -> RunResult:
    """Write at every site until the plan ends; every acknowledged commit is in `ledger`."""
    if len({s.name for s in sites}) != len(sites) or len({s.number for s in sites}) != len(sites):
        raise ValueError("site names and numbers must be unique")
    rng = random.Random(the_plan.seed)
    writers: dict[str, SiteWriter] = {}
    for s in sites:
        run_no = await prepare(s)
        ledger.add_site(s.name, s.number)
        writers[s.name] = SiteWriter(s.name, KeySource(s.number, run_no), ledger, the_plan.mix,
                                     random.Random(rng.random()), s.schema)
    names = [s.name for s in sites]

    def peer_of(me: str) -> asyncio.Queue[Peer] | None:
        others = [n for n in names if n != me]
        return writers[rng.choice(others)].inbox if others else None

    for w in writers.values():
        w.peers = peer_of
    start = time.monotonic()
    n = len(sites)
    pacers = {s.name: Pacer(the_plan.rate / n, math.ceil(the_plan.specimens / n)
                            if the_plan.specimens else 0, start + the_plan.duration)
              for s in sites}

    def result() -> RunResult:
        return RunResult(time.monotonic() - start,
                         {k: Counter(w.stats.counts) for k, w in writers.items()},
                         {k: Counter(w.stats.errors) for k, w in writers.items()},
                         {k: w.stats.last_error for k, w in writers.items()})

    tasks = [asyncio.create_task(_worker(s, writers[s.name], pacers[s.name]))
             for s in sites for _ in range(the_plan.workers)]
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=progress_every)
            if progress is not None and not all(t.done() for t in tasks):
                progress(result())
        for t in tasks:
            t.result()  # an unexpected exception is the caller's to see
    finally:
        for t in tasks:
            t.cancel()
        ledger.flush()
    return result()
