"""How a verification run is reported: progress lines, the report model (JSON for
machines, a text table for people) and the ReplicationRing `status.lastVerification`.

Kept apart from the comparison (`verify.py`) because reporting has its own readers (the
CLI, the operator's status writer, the divergence detector, a later repair) and its own
dependency on the ring's API models; the comparison needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from ..api.v1alpha1.ring import VerificationResult, VerificationStatus
from .verify import KeyDifference, Mode, RowVersion

# --------------------------------------------------------------------------------------
# Progress


@dataclass(frozen=True)
class Progress:
    """Where a verification is: per table and phase, with rates for a progress line."""

    table: str
    phase: str
    chunks_done: int
    chunks_total: int
    rows_done: int
    rows_total: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        if self.rows_total > 0:
            return min(1.0, self.rows_done / self.rows_total)
        if self.chunks_total > 0:
            return min(1.0, self.chunks_done / self.chunks_total)
        return 1.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, None before there is a rate."""
        f = self.fraction
        if f <= 0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (1 - f) / f

    def line(self) -> str:
        eta = "?" if self.eta_s is None else f"{self.eta_s:.1f}s"
        return (f"{self.table} {self.phase}: {self.chunks_done}/{self.chunks_total} chunks, "
                f"{self.rows_done}/{self.rows_total} rows ({self.fraction:.0%}), "
                f"{self.rows_per_s:,.0f} rows/s, eta {eta}")


# --------------------------------------------------------------------------------------
# Report


class TableReport(BaseModel):
    """One table's outcome. `rows` is what each member hashed (full mode) or looked up
    (incremental); `keys_touched` counts keys compared one by one (leaf fetches, dirty
    keys), which is what incremental cost follows."""

    table: str
    key_columns: list[str]
    mode: Mode
    rows: dict[str, int] = Field(default_factory=dict)
    chunks: int = 0
    chunks_differing: int = 0
    keys_touched: int = 0
    keys_rechecked: int = 0
    differences: list[KeyDifference] = Field(default_factory=list)
    unsettled: list[KeyDifference] = Field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.differences and not self.unsettled and not self.truncated


class SatelliteState(StrEnum):
    """How far the comparison of one satellite with its parent got. Anything but
    COMPARED means its rows were not compared, so it can never count as equal."""

    COMPARED = "Compared"
    NO_ADDRESS = "NoAddress"  # the ring config has no address for it yet
    UNREACHABLE = "Unreachable"  # it (or its parent) did not answer


class SatelliteTable(BaseModel):
    """One satellite table compared with its parent's rows that match its filter.

    `compare` is the member-style table report over the pair (parent, satellite), the
    parent as reference, both sides restricted to the filter; None with `error` when the
    table could not be compared (missing, another shape). `outside_filter` counts the
    satellite's rows its own filter does not select (its own writes of such rows stay
    there by design, see docs/satellites.md): they are not compared."""

    table: str
    filter: str
    compare: TableReport | None = None
    outside_filter: int | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.compare is not None and self.compare.passed


class SatelliteVerification(BaseModel):
    """A satellite against its parent ("parent vs satellite"), table by table. Never
    repaired by `ringkeeper verify --repair` (out of scope: its changes travel through
    the parent's spool, not the ring's links)."""

    satellite: str
    parent: str
    state: SatelliteState
    message: str = ""
    tables: list[SatelliteTable] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.state is SatelliteState.COMPARED and all(t.passed for t in self.tables)

    @property
    def differences(self) -> list[KeyDifference]:
        return [d for t in self.tables if t.compare is not None for d in t.compare.differences]


def satellites_exit_code(sats: list[SatelliteVerification]) -> int:
    """`ringkeeper verify`'s exit code for its satellites section: 1 when a satellite
    differs from its parent (keys differ, still change, or past the key limit), else 2
    when one could not be compared (no address, unreachable, a table missing or of
    another shape: never counted as equal), else 0."""
    compared = [t.compare for s in sats for t in s.tables if t.compare is not None]
    if any(not c.passed for c in compared):
        return 1
    if any(s.state is not SatelliteState.COMPARED or any(t.compare is None for t in s.tables)
           for s in sats):
        return 2
    return 0


class Report(BaseModel):
    """A verification run: JSON for machines (`model_dump_json`, re-read with
    `Report.model_validate_json` before a repair), `render_text` for people.

    `passed` and `differences` are the ring members' (what repair and the ring's status
    use); `satellites` holds each satellite compared with its parent, `satellites_passed`
    says whether they all were compared and equal."""

    mode: Mode
    members: list[str]
    reference: str
    started_at: datetime
    finished_at: datetime | None = None
    settle_seconds: float = 0.0
    canonical: str = "typed"
    tables: list[TableReport] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    satellites: list[SatelliteVerification] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tables)

    @property
    def satellites_passed(self) -> bool:
        return all(s.passed for s in self.satellites)

    @property
    def satellite_differences(self) -> list[KeyDifference]:
        return [d for s in self.satellites for d in s.differences]

    @property
    def differences(self) -> list[KeyDifference]:
        return [d for t in self.tables for d in t.differences]

    def render_text(self) -> str:
        return render_text(self)


def summarise_values(v: RowVersion | None, width: int = 48) -> str:
    """A short human form of one version's row for the text table."""
    if v is None or not v.present:
        return "(absent)"
    if not v.values:
        return f"hash {v.row_hash}"
    text = ", ".join(f"{k}={'NULL' if x is None else x}" for k, x in v.values.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_text(report: Report) -> str:
    """A readable table: one line per (key, member that differs), with both versions."""
    lines = [
        f"verification ({report.mode}) of {', '.join(report.members)}; "
        f"reference {report.reference}: "
        + ("PASSED" if report.passed else
           f"{len(report.differences)} differing key(s)"),
    ]
    for name, why in report.skipped.items():
        lines.append(f"  {name}: NOT VERIFIED ({why})")
    for t in report.tables:
        rows = ", ".join(f"{m}={n}" for m, n in t.rows.items())
        lines.append(f"  {t.table}: rows {rows or '-'}; chunks {t.chunks} "
                     f"({t.chunks_differing} differing); keys touched {t.keys_touched}; "
                     f"{len(t.differences)} difference(s); {t.seconds:.2f}s")
        if t.truncated:
            lines.append("    stopped naming keys at the max_keys limit: more rows differ "
                         "(a member far behind or empty? compare row counts)")
        if t.unsettled:
            lines.append(f"    {len(t.unsettled)} key(s) still changing when rechecks "
                         "timed out (not verified): "
                         + ", ".join(",".join(d.key) for d in t.unsettled[:10]))
    lines += _difference_table(report.differences)
    if report.satellites:
        lines += _satellite_lines(report.satellites)
    return "\n".join(lines) + "\n"


def _difference_table(diffs: list[KeyDifference], indent: str = "") -> list[str]:
    rows_out: list[tuple[str, ...]] = []
    for d in diffs:
        ref_v = d.versions.get(d.reference)
        for m, kind in d.member_kinds():
            rows_out.append((d.table, ",".join(d.key), kind, m, d.reference,
                             summarise_values(d.versions.get(m)), summarise_values(ref_v)))
    if not rows_out:
        return []
    head = ("TABLE", "KEY", "KIND", "MEMBER", "REFERENCE", "MEMBER'S ROW",
            "REFERENCE'S ROW")
    widths = [max(len(r[i]) for r in [head, *rows_out]) for i in range(len(head))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, *rows_out]]


def _satellite_lines(sats: list[SatelliteVerification]) -> list[str]:
    """The section "satellites (parent vs satellite)": one block per satellite, its
    tables with their filters, and its differing keys (the parent is the reference)."""
    lines = ["satellites (parent vs satellite; never repaired by --repair):"]
    for s in sats:
        if s.state is not SatelliteState.COMPARED:
            lines.append(f"  {s.parent} vs {s.satellite}: NOT VERIFIED ({s.state.value}: "
                         f"{s.message})")
            continue
        verdict = ("PASSED" if s.passed else
                   f"{len(s.differences)} differing key(s)" if s.differences else "FAILED")
        lines.append(f"  {s.parent} vs {s.satellite}: {verdict}")
        for t in s.tables:
            if t.compare is None:
                lines.append(f"    {t.table} where {t.filter}: NOT VERIFIED ({t.error})")
                continue
            c = t.compare
            rows = ", ".join(f"{m}={n}" for m, n in c.rows.items())
            outside = "" if not t.outside_filter else (
                f"; {t.outside_filter} row(s) at {s.satellite} outside the filter "
                "(not compared)")
            lines.append(f"    {t.table} where {t.filter}: rows {rows or '-'}; chunks "
                         f"{c.chunks} ({c.chunks_differing} differing); "
                         f"{len(c.differences)} difference(s){outside}; {c.seconds:.2f}s")
            if c.truncated:
                lines.append("      stopped naming keys at the max_keys limit: more rows "
                             "differ")
            if c.unsettled:
                lines.append(f"      {len(c.unsettled)} key(s) still changing when "
                             "rechecks timed out (not verified): "
                             + ", ".join(",".join(d.key) for d in c.unsettled[:10]))
        lines += _difference_table(s.differences, indent="    ")
    return lines


# --------------------------------------------------------------------------------------
# ReplicationRing status


def rows_compared(report: Report) -> int:
    """Rows compared: per table the most rows any member held (or looked up), summed."""
    return sum(max(t.rows.values(), default=0) for t in report.tables)


def verification_status(report: Report | None, *, mode: Mode | str, started_at: datetime,
                        completed_at: datetime | None, report_path: str | None,
                        progress_percent: float | None = None,
                        error: bool = False) -> dict[str, object]:
    """The ReplicationRing `status.lastVerification` object (camelCase, as in the CRD).

    With a report: Passed or Failed with its counts and progress 100. Without one: Running
    (with `progress_percent`) while `completed_at` is None, Error once it is set (or with
    `error`, e.g. when the members could not be reached)."""
    data: dict[str, object] = {"started_at": started_at, "completed_at": completed_at,
                               "mode": str(mode), "report": report_path}
    if report is not None and not error:
        data.update(tables=len(report.tables), rows_compared=rows_compared(report),
                    differences=len(report.differences) + sum(
                        len(t.unsettled) for t in report.tables),
                    result=(VerificationResult.PASSED if report.passed
                            else VerificationResult.FAILED),
                    progress_percent=100.0)
    elif completed_at is None and not error:
        data.update(result=VerificationResult.RUNNING,
                    progress_percent=round(progress_percent or 0.0, 1))
    else:
        data.update(result=VerificationResult.ERROR)
        if report is not None:
            data.update(tables=len(report.tables), rows_compared=rows_compared(report))
    status = VerificationStatus.model_validate(data)
    out: dict[str, object] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out
