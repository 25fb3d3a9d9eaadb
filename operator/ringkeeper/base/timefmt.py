"""Time stamps as Kubernetes writes them: RFC 3339 in UTC with a `Z`.

Conditions, status records and Events compare and display these strings, so every
writer uses one format (whole seconds unless a caller asks for microseconds) and every
reader one parser (which also takes `+00:00`, as Python's isoformat writes).
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(dt: datetime, *, micro: bool = False) -> str:
    """'2026-12-01T02:08:00Z' (naive datetimes are taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    if not micro:
        dt = dt.replace(microsecond=0)
    return dt.isoformat().replace("+00:00", "Z")


def now_rfc3339(*, micro: bool = False) -> str:
    return rfc3339(datetime.now(UTC), micro=micro)


def parse_rfc3339(text: str | None) -> datetime | None:
    """The inverse of `rfc3339` (None or empty stays None); ValueError on other text."""
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
