"""One site's laboratory day, one specimen at a time, every commit into the ledger.

A specimen's life is several short transactions, in the order a laboratory makes them:
register (patient, visit) -> order with its items (sometimes one item is cancelled, a
delete) -> barcode scan of the specimen -> instrument uploads of the results (several rows
per transaction) -> review and release (a multi-row update) -> report. Afterwards some
results are corrected, and some corrections are also made at once from another site, so
the ring sees real cross-campus conflicts on the same rows.

Rows are recorded in the ledger only after COMMIT returned (`_commit`); an error anywhere
leaves the earlier, acknowledged steps in the ledger and nothing of the failed one, except
that a COMMIT that broke off without an answer records its rows as in doubt (they may or
may not be there; `Ledger.record_in_doubt`). Values
are bind parameters; the only text in the SQL is constant.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .keys import KeySource, barcode
from .ledger import ChangeKind, Entry, Ledger
from .schema import SCHEMA, in_schema, panels, schema_name

Row = tuple[str, int, int, ChangeKind]  # table, key, rev, kind

# Panel weights chosen so an order averages 15 results (CBC 18, CHEM 14, COAG 4, UA 4):
# 20,000 specimens make about 300,000 results, a large hospital's day.
PANEL_WEIGHTS = {"CBC": 0.5, "CHEM": 0.4, "COAG": 0.05, "UA": 0.05}
WARDS = ("ED", "ICU", "MED-3", "SURG-2", "PAED", "ONC", "OPD")
INSTRUMENTS = {"CBC": "XN-1000", "CHEM": "AU5800", "COAG": "CS-5100", "UA": "UC-3500"}
FAMILY = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou")
GIVEN = ("Wei", "Fang", "Na", "Min", "Jing", "Lei", "Yan", "Jun", "Tao", "Ming")


@dataclass(frozen=True)
class Mix:
    """How often the less common steps happen (each a probability per specimen)."""

    new_patient: float = 0.4  # the specimen's patient is registered now (else a returning one)
    cancel_item: float = 0.03  # one ordered test is cancelled before the scan (a delete)
    correction: float = 0.02  # one released result is corrected afterwards
    conflict: float = 0.5  # share of corrections also made at once from another site
    upload_batches: int = 2  # instrument uploads per specimen


@dataclass
class SiteStats:
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str = ""


@dataclass
class Peer:
    """A cross-site correction to make: the row, how often it was not there yet."""

    result_id: int
    attempts: int = 0


def commit_in_doubt(exc: BaseException) -> bool:
    """Whether a COMMIT that raised `exc` may have committed anyway.

    Only an ERROR answer is a verdict: the server rolled the transaction back and the
    session goes on (a serialization failure, a deferred constraint). Anything else
    leaves the outcome unknown: the connection broke or timed out after COMMIT was sent
    (the server may have committed, and a synchronous standby may hold it), or the
    session was ended with FATAL while COMMIT waited for its synchronous standbys
    (PostgreSQL has then committed locally). Such a commit is not acknowledged, but its
    rows may be there: counting them lost is a false alarm (a drill once reported one).
    """
    severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
    return not (isinstance(exc, asyncpg.PostgresError) and severity == "ERROR")


class SiteWriter:
    """The transactions of one site; one instance per site, shared by its workers."""

    def __init__(self, name: str, keys: KeySource, ledger: Ledger, mix: Mix,
                 rng: random.Random, schema: str = SCHEMA) -> None:
        self.name, self.keys, self.ledger, self.mix, self.rng = name, keys, ledger, mix, rng
        self.schema = schema_name(schema)
        self.site_no = keys.site
        self.stats = SiteStats()
        self.inbox: asyncio.Queue[Peer] = asyncio.Queue()
        # this site's name -> another site's inbox, or None (set by the runner)
        self.peers: Callable[[str], asyncio.Queue[Peer] | None] = lambda me: None
        self._patients: deque[int] = deque(maxlen=500)
        self._panels = panels()

    def _q(self, sql: str) -> str:
        """The statement for this writer's schema (written for `lis`)."""
        return in_schema(sql, self.schema)

    async def _commit(self, conn: Any, work: Callable[[list[Row]], Awaitable[None]]) -> None:
        """Run `work` in one transaction; record its rows once COMMIT answered, or as in
        doubt when COMMIT itself broke off without a verdict (see `commit_in_doubt`)."""
        rows: list[Row] = []
        tr = conn.transaction()
        await tr.start()
        try:
            await work(rows)
        except BaseException:
            # Nothing was committed: a failed statement or a lost session rolls back.
            with contextlib.suppress(Exception):
                await tr.rollback()
            raise
        try:
            await tr.commit()
        except BaseException as exc:
            if rows and commit_in_doubt(exc):
                self.ledger.record_in_doubt(
                    Entry(self.name, t, k, r, kind, time.time()) for t, k, r, kind in rows)
                self.stats.counts["in_doubt"] += 1
            raise
        if rows:  # a correction that found no row wrote nothing
            now = time.time()
            self.ledger.record(Entry(self.name, t, k, r, kind, now) for t, k, r, kind in rows)
            self.stats.counts["commits"] += 1

    async def specimen(self, conn: Any) -> None:
        """One specimen from registration to report (and maybe a correction)."""
        rng, keys, site = self.rng, self.keys, self.site_no
        visit_id = keys.next()
        patient = None if rng.random() < self.mix.new_patient or not self._patients else \
            rng.choice(self._patients)

        async def register(rows: list[Row]) -> None:
            nonlocal patient
            if patient is None:
                patient = keys.next()
                await conn.execute(
                    self._q("INSERT INTO lis.patients (patient_id, site_no, mrn, family_name, "
                    "given_name, birth_date, sex, rev) VALUES ($1, $2, $3, $4, $5, "
                    "date '1930-01-01' + $6::int, $7, $1)"),
                    patient, site, f"MRN{patient}", rng.choice(FAMILY), rng.choice(GIVEN),
                    rng.randrange(33000), rng.choice("FM"))
                rows.append(("patients", patient, patient, ChangeKind.INSERT))
            await conn.execute(
                self._q("INSERT INTO lis.visits (visit_id, patient_id, site_no, kind, ward, rev) "
                "VALUES ($1, $2, $3, $4, $5, $1)"), visit_id, patient, site,
                rng.choice(("inpatient", "outpatient", "emergency")), rng.choice(WARDS))
            rows.append(("visits", visit_id, visit_id, ChangeKind.INSERT))

        await self._commit(conn, register)
        assert patient is not None
        self._patients.append(patient)

        panel = rng.choices(list(PANEL_WEIGHTS), weights=list(PANEL_WEIGHTS.values()))[0]
        tests = self._panels[panel]
        order_id = keys.next()
        items = keys.take(len(tests))

        async def order(rows: list[Row]) -> None:
            await conn.execute(
                self._q("INSERT INTO lis.orders (order_id, visit_id, site_no, priority, "
                        "status, rev) VALUES ($1, $2, $3, $4, 'ordered', $1)"),
                order_id, visit_id, site,
                "stat" if rng.random() < 0.15 else "routine")
            await conn.executemany(
                self._q("INSERT INTO lis.order_items (order_item_id, order_id, test_code, site_no, "
                "status, rev) VALUES ($1, $2, $3, $4, 'ordered', $1)"),
                [(i, order_id, t[0], site) for i, t in zip(items, tests, strict=True)])
            rows.append(("orders", order_id, order_id, ChangeKind.INSERT))
            rows.extend(("order_items", i, i, ChangeKind.INSERT) for i in items)

        await self._commit(conn, order)
        ordered = list(zip(items, tests, strict=True))
        if len(ordered) > 1 and rng.random() < self.mix.cancel_item:
            gone = ordered.pop(rng.randrange(len(ordered)))[0]

            async def cancel(rows: list[Row]) -> None:
                n = await conn.fetchval(
                    self._q("WITH d AS (DELETE FROM lis.order_items WHERE order_item_id = $1 "
                    "RETURNING 1) SELECT count(*) FROM d"), gone)
                if n != 1:
                    raise RuntimeError(f"order item {gone} was not there to cancel")
                rows.append(("order_items", gone, keys.next(), ChangeKind.DELETE))

            await self._commit(conn, cancel)
            self.stats.counts["cancelled"] += 1

        specimen_id = keys.next()

        async def scan(rows: list[Row]) -> None:
            await conn.execute(
                self._q("INSERT INTO lis.specimens (specimen_id, order_id, site_no, barcode, "
                "specimen_type, rev, collected_at) VALUES ($1, $2, $3, $4, $5, $1, "
                "now() - make_interval(mins => $6))"), specimen_id, order_id, site,
                barcode(specimen_id), tests[0][1], rng.randrange(5, 90))
            rows.append(("specimens", specimen_id, specimen_id, ChangeKind.INSERT))
            await self._set_order(conn, rows, order_id, "collected")

        await self._commit(conn, scan)
        self.stats.counts["specimens"] += 1

        results = [(keys.next(), item, test) for item, test in ordered]
        n_batches = max(1, min(self.mix.upload_batches, len(results)))
        for b in range(n_batches):
            batch = results[b::n_batches]

            async def upload(rows: list[Row], batch: list[Any] = batch) -> None:
                await conn.executemany(
                    self._q("INSERT INTO lis.results (result_id, specimen_id, order_item_id, "
                    "test_code, site_no, value, flag, status, instrument, updated_by, rev) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, 'preliminary', $8, $5, $1)"),
                    [(rid, specimen_id, item, test[0], site, *self._value(test),
                      INSTRUMENTS[panel]) for rid, item, test in batch])
                rows.extend(("results", rid, rid, ChangeKind.INSERT) for rid, _, _ in batch)

            await self._commit(conn, upload)
            self.stats.counts["results"] += len(batch)

        review_id = keys.next()

        async def release(rows: list[Row]) -> None:
            await conn.execute(
                self._q("INSERT INTO lis.reviews (review_id, specimen_id, site_no, reviewer, "
                "decision, rev) VALUES ($1, $2, $3, $4, 'released', $1)"), review_id,
                specimen_id, site, f"tech-{rng.randrange(40):02d}")
            rows.append(("reviews", review_id, review_id, ChangeKind.INSERT))
            ids = [rid for rid, _, _ in results]
            revs = keys.take(len(ids))
            n = await conn.fetchval(
                self._q("WITH u AS (UPDATE lis.results r SET status = 'final', rev = v.rev, "
                "updated_by = $3, updated_at = now() FROM unnest($1::bigint[], $2::bigint[]) "
                "AS v(id, rev) WHERE r.result_id = v.id RETURNING 1) SELECT count(*) FROM u"),
                ids, revs, site)
            if n != len(ids):
                raise RuntimeError(f"release updated {n} of {len(ids)} results")
            rows.extend(("results", i, r, ChangeKind.UPDATE)
                        for i, r in zip(ids, revs, strict=True))
            await self._set_order(conn, rows, order_id, "released")

        await self._commit(conn, release)
        report_id = keys.next()

        async def report(rows: list[Row]) -> None:
            await conn.execute(
                self._q("INSERT INTO lis.reports (report_id, order_id, site_no, body, rev) "
                "VALUES ($1, $2, $3, $4, $1)"), report_id, order_id, site,
                f"{panel} report, {len(results)} results, specimen {barcode(specimen_id)}")
            rows.append(("reports", report_id, report_id, ChangeKind.INSERT))
            await self._set_order(conn, rows, order_id, "reported")

        await self._commit(conn, report)
        if results and rng.random() < self.mix.correction:
            rid, _, test = rng.choice(results)
            if await self.correct(conn, rid, test[2], test[3]):
                peer = self.peers(self.name) if rng.random() < self.mix.conflict else None
                if peer is not None:
                    peer.put_nowait(Peer(rid))

    async def _set_order(self, conn: Any, rows: list[Row], order_id: int, status: str) -> None:
        rev = self.keys.next()
        await conn.execute(self._q("UPDATE lis.orders SET status = $2, rev = $3, "
                                   "updated_at = now() WHERE order_id = $1"),
                           order_id, status, rev)
        rows.append(("orders", order_id, rev, ChangeKind.UPDATE))

    def _value(self, test: tuple[str, str, float, float]) -> tuple[float, str]:
        lo, hi = test[2], test[3]
        v = round(self.rng.gauss((lo + hi) / 2, max(hi - lo, 0.01) / 3), 3)
        return v, "H" if v > hi else "L" if v < lo else "N"

    async def correct(self, conn: Any, result_id: int, lo: float = 0, hi: float = 1) -> bool:
        """Correct one result (own or another site's); False when the row is not here
        (another site's row not yet replicated): nothing was written, nothing recorded."""
        done = False

        async def fix(rows: list[Row]) -> None:
            nonlocal done
            rev = self.keys.next()
            value = round(self.rng.uniform(lo, hi), 3)
            n = await conn.fetchval(
                self._q("WITH u AS (UPDATE lis.results SET value = $2, status = 'corrected', "
                "rev = $3, updated_by = $4, updated_at = now() WHERE result_id = $1 "
                "RETURNING 1) SELECT count(*) FROM u"), result_id, value, rev, self.site_no)
            if n == 1:
                rows.append(("results", result_id, rev, ChangeKind.UPDATE))
                done = True

        await self._commit(conn, fix)
        if done:
            self.stats.counts["corrections"] += 1
        return done

    async def serve_peers(self, conn: Any, retries: int = 50) -> None:
        """Make the corrections other sites asked for; a row not here yet waits (up to
        `retries` passes) for replication to bring it."""
        for _ in range(self.inbox.qsize()):
            try:  # the site's other workers drain the same inbox meanwhile
                job = self.inbox.get_nowait()
            except asyncio.QueueEmpty:
                return
            if await self.correct(conn, job.result_id):
                self.stats.counts["cross_site_corrections"] += 1
            elif job.attempts < retries:
                job.attempts += 1
                self.inbox.put_nowait(job)
            else:
                self.stats.counts["cross_site_gave_up"] += 1
