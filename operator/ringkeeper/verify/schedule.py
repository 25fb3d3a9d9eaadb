"""Verification of a whole ring from its ring config: the scheduled run and shared helpers.

The operator's ring daemon calls `scheduled_verification` when `spec.verification.schedule`
fires and, for continuous verification, every `spec.verification.intervalMinutes`;
`ringkeeper verify` uses the same helpers, so both verify the same tables (those the
ring replicates: its include/exclude patterns, with a primary key) the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..contracts.ringconfig import RingConfig
from ..core.verify import MemberConn, Mode
from ..core.verify_report import Progress, Report
from ..sync.catalog import matches
from .members import ProgressFn, VerifyError, close_all, connect, list_tables
from .report import write_report
from .runner import verify

KEEP_REPORTS = 50
"""Reports of one ring kept in the report directory (the newest; older ones are deleted)."""


def members_of(cfg: RingConfig) -> list[MemberConn]:
    """The ring's members with their origin names; every member must be reachable."""
    missing = [m.name for m in cfg.members if not m.dsn]
    if missing:
        raise VerifyError(f"ring {cfg.ring}: member(s) {', '.join(missing)} have no primary "
                          "to connect to right now")
    return [MemberConn.for_ring(cfg.ring, m.name, str(m.dsn), m.priority)
            for m in cfg.members]


async def ring_tables(cfg: RingConfig, members: Sequence[MemberConn]
                      ) -> tuple[list[str], dict[str, str]]:
    """(tables the ring replicates that have a primary key, {table: why skipped}) as the
    first member lists them."""
    first = await connect(members[0])
    try:
        with_pk, without = await list_tables(first)
    finally:
        await close_all([first])
    tables = [t for t in with_pk if matches(t, cfg.include, cfg.exclude)]
    skipped = {t: "no primary key" for t in without if matches(t, cfg.include, cfg.exclude)}
    return tables, skipped


def report_name(ring: str, started_at: datetime) -> str:
    """`ringkeeper-verify-<ring>-<UTC timestamp>.json`, the report's file name."""
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"ringkeeper-verify-{ring}-{stamp}.json"


async def verify_ring(cfg: RingConfig, members: Sequence[MemberConn],
                      tables: Sequence[str] | None = None, *, mode: Mode, chunk_rows: int,
                      settle_seconds: float = 5.0,
                      progress: ProgressFn | None = None) -> Report:
    """Verify the given tables, or every table the ring replicates (tables without a
    primary key are listed in `Report.skipped`)."""
    skipped: dict[str, str] = {}
    if tables is None:
        tables, skipped = await ring_tables(cfg, members)
    report = await verify(members, list(tables), mode=mode, chunk_rows=chunk_rows,
                          settle_seconds=settle_seconds, progress=progress)
    report.skipped.update(skipped)
    return report


def overall(p: Progress, tables: Sequence[str]) -> float:
    """The whole run's fraction done (0..1) from one table's progress."""
    try:
        i = list(tables).index(p.table)
    except ValueError:
        return p.fraction
    return (i + p.fraction) / max(1, len(tables))


async def scheduled_verification(cfg: RingConfig, *, mode: Mode, chunk_rows: int,
                                 report_dir: Path | str, only_failed: bool = False,
                                 keep: int = KEEP_REPORTS) -> Report:
    """One run over every table the ring replicates; the JSON and text reports are
    written to `report_dir / report_name(cfg.ring, report.started_at)` (and .txt).
    With `only_failed` (continuous runs, every few minutes) a run that passed writes
    nothing; the ring's reports beyond the newest `keep` are deleted either way, so the
    operator's disk does not fill up.
    Raises VerifyError when a member is unreachable or a table cannot be verified."""
    members = members_of(cfg)
    report = await verify_ring(cfg, members, mode=mode, chunk_rows=chunk_rows)
    if not (only_failed and report.passed):
        write_report(report, Path(report_dir) / report_name(cfg.ring, report.started_at))
    prune_reports(report_dir, cfg.ring, keep)
    return report


def prune_reports(report_dir: Path | str, ring: str, keep: int) -> list[Path]:
    """Delete the ring's reports (.json and .txt) but the newest `keep`; returns what went.

    Names sort by their UTC timestamp, so the oldest come first; another ring's reports
    (a different `ringkeeper-verify-<ring>-` prefix followed by a digit) are not touched."""
    root = Path(report_dir)
    if not root.is_dir():
        return []
    prefix = f"ringkeeper-verify-{ring}-"
    mine = sorted(p for p in root.glob(f"{prefix}*.json")
                  if p.name[len(prefix):len(prefix) + 1].isdigit())
    gone: list[Path] = []
    for p in mine[:max(0, len(mine) - keep)]:
        for q in (p, p.with_suffix(".txt")):
            q.unlink(missing_ok=True)
            gone.append(q)
    return gone
