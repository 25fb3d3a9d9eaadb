"""Render Ringkeeper objects as the tables `ringkeeper status` prints.

Kept free of I/O so the layout is tested on plain dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def safe(value: Any, *, double_backslashes: bool = True) -> str:
    """A value as one printable line: every string here comes from a spec or a status that
    users (or a compromised component) can write, and a raw ESC or newline would let it
    recolour, move or forge lines of the operator's terminal. Non-printable characters
    (C0/C1 controls, DEL, bidi overrides, line separators) become escapes such as \\x1b,
    \\n or \\u202e; backslashes are doubled so an escape cannot be faked (not for text
    whose values are quoted already, such as `ringkeeper validate`'s messages)."""
    text = str(value)
    if text.isprintable() and ("\\" not in text or not double_backslashes):
        return text
    out = []
    for ch in text:
        if ch == "\\" and double_backslashes:
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[safe(h) for h in headers]] + [
        ["-" if v is None else safe(v) for v in r] for r in rows
    ]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append(
            "  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True))
            .rstrip()
        )
    return "\n".join(lines)


def _width(text: str) -> int:
    """Display width: CJK campus names take two columns each in a terminal."""
    return sum(2 if _wide(ch) else 1 for ch in text)


def _wide(ch: str) -> bool:
    code = ord(ch)
    return (
        0x1100 <= code <= 0x115F
        or 0x2E80 <= code <= 0xA4CF
        or 0xAC00 <= code <= 0xD7A3
        or 0xF900 <= code <= 0xFAFF
        or 0xFE30 <= code <= 0xFE4F
        or 0xFF00 <= code <= 0xFF60
        or 0xFFE0 <= code <= 0xFFE6
    )


def _get(obj: dict[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def campuses(items: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            _get(o, "metadata.namespace"),
            _get(o, "metadata.name"),
            _get(o, "spec.displayName"),
            f"{_get(o, 'spec.engine')} {_get(o, 'spec.version')}",
            f"{_get(o, 'status.readyInstances') or 0}/{_get(o, 'spec.instances')}",
            _get(o, "status.currentPrimary"),
            _get(o, "status.phase"),
        )
        for o in items
    ]
    return table(("NAMESPACE", "CAMPUS", "DISPLAY", "ENGINE", "READY", "PRIMARY", "PHASE"), rows)


def _diverged(ring: dict[str, Any]) -> dict[str, Any]:
    """The ring's Diverged condition (core.divergence), or {} before it has one."""
    conds = _get(ring, "status.conditions")
    found = next((c for c in conds if isinstance(c, dict) and c.get("type") == "Diverged"),
                 None) if isinstance(conds, list) else None
    return found or {}


def rings(items: Sequence[dict[str, Any]]) -> str:
    out = []
    rows = [
        (
            _get(o, "metadata.namespace"),
            _get(o, "metadata.name"),
            _get(o, "spec.topology"),
            len(_get(o, "spec.members") or []),
            _get(o, "status.healthyLinks"),
            _get(o, "status.maxLagSeconds"),
            _get(o, "status.conflictsTotal"),
            _get(o, "status.lastVerification.result"),
            _diverged(o).get("status"),
        )
        for o in items
    ]
    out.append(
        table(("NAMESPACE", "RING", "TOPOLOGY", "MEMBERS", "HEALTHY", "MAX LAG S", "CONFLICTS",
               "VERIFIED", "DIVERGED"), rows)
    )
    for o in items:
        if _diverged(o).get("status") == "True":  # data loss risk: say what differs
            out.append(f"\n{safe(_get(o, 'metadata.name'))} DIVERGED: "
                       f"{safe(_diverged(o).get('message') or '')}")
        links = _get(o, "status.links") or []
        if links:
            out.append(f"\nlinks of {safe(_get(o, 'metadata.name'))}:")
            out.append(
                table(
                    ("FROM", "TO", "STATE", "LAG S", "LAG BYTES", "ROWS/S", "CONFLICTS"),
                    [
                        (
                            link.get("from"), link.get("to"), link.get("state"),
                            link.get("lagSeconds"), link.get("lagBytes"),
                            link.get("rowsPerSecond"), link.get("conflicts"),
                        )
                        for link in links
                    ],
                )
            )
        for seed in _get(o, "status.seeding") or []:
            out.append(safe(
                f"seeding {seed.get('member')}: {seed.get('tablesDone', 0)}/"
                f"{seed.get('tablesTotal', 0)} tables, {seed.get('rowsCopied', 0)}/"
                f"{seed.get('rowsTotal', 0)} rows ({_percent(seed.get('percent'))}%)"
            ))
    return "\n".join(out)


def _percent(value: Any) -> str:
    """A status percent that may be missing or, written by hand, not a number."""
    try:
        return f"{float(value or 0):.1f}"
    except (TypeError, ValueError):
        return str(value)  # the caller escapes the whole line


def _ready_reason(obj: dict[str, Any]) -> Any:
    conds = _get(obj, "status.conditions")
    found = [c for c in conds if isinstance(c, dict) and c.get("type") == "Ready"] \
        if isinstance(conds, list) else []
    return found[0].get("reason") if found else None


def satellites(items: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            _get(o, "metadata.namespace"),
            _get(o, "metadata.name"),
            _get(o, "spec.parentRef.name"),
            _get(o, "status.connected"),
            _get(o, "status.backlogRows"),
            _size(_get(o, "status.backlogBytes")),
            _get(o, "status.phase"),
            _get(o, "status.lastSyncAt"),
            # The phase stays Initializing until sync exists: Ready's reason says more.
            _ready_reason(o),
        )
        for o in items
    ]
    return table(("NAMESPACE", "SATELLITE", "PARENT", "CONNECTED", "BACKLOG ROWS",
                  "BACKLOG SIZE", "PHASE", "LAST SYNC", "READY"), rows)


def _size(value: Any) -> Any:
    """Bytes as B/KiB/MiB/GiB; anything else (missing, or written by hand) as it is
    (the table escapes it)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"


def drills(items: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            _get(o, "metadata.namespace"),
            _get(o, "metadata.name"),
            f"{_get(o, 'spec.target.kind')}/{_get(o, 'spec.target.name')}",
            _get(o, "spec.scenario"),
            _get(o, "status.lastRun.result"),
            _get(o, "status.lastRun.rtoSeconds"),
            _get(o, "status.lastRun.lostTransactions"),
        )
        for o in items
    ]
    return table(("NAMESPACE", "DRILL", "TARGET", "SCENARIO", "LAST", "RTO S", "LOST"), rows)


RENDERERS = {
    "campuses": campuses,
    "replicationrings": rings,
    "satellites": satellites,
    "drills": drills,
}
