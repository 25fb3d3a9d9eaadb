"""What of the ring's changes a satellite receives, decided on the decoded row values.

The parent's sidecar reads every change the parent commits or applies and keeps, for a
satellite, only its tables and the rows its structured filter selects (a
api.v1alpha1.satellite.RowFilter, the same one core.satellite.filter_sql renders as SQL
for copies and checks). The filter is evaluated here in Python on the text values
pgoutput decoded, so no SQL is built from it on this path at all, and the decision for a
change that moves a row across the filter's boundary is explicit:

  new row in the filter, old in (or an insert) -> the change as it is (Send)
  new row in, old out                          -> an insert of the new row (AsInsert)
  new row out of the filter (insert or update) -> a delete of the key (AsDelete)
  delete                                       -> the delete (Send)

A change whose row is out of the filter is never simply dropped: the satellite may hold
a version of that key the parent has not seen yet (written there while it was away), and
only the newer version must stay there. A delete with the change's version settles it
by the ring's conflict rules: it removes an older satellite row and loses to a newer one
(which then goes up and wins in the ring). The price is a tombstone at the satellite
per key changed outside its filter (see docs/satellites.md, limits).

A value the stream did not carry (an unchanged out-of-line value, or an old row the
source did not log) is Unknown; an Unknown side counts as inside the filter, so a row
is never held back from a satellite on a guess (a surplus delete of a row the
satellite lacks is harmless; a missing update is not). Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Any

from ..api.v1alpha1.satellite import FilterOp, FilterTerm, RowFilter, SatellitePhase
from . import names
from .catchup import backlog_fields
from .conditions import set_condition


class Unknown(Enum):
    """A column value the stream did not carry."""

    VALUE = "unknown"


UNKNOWN = Unknown.VALUE
RowValue = str | None | Unknown

# Types whose text forms may differ for one value ('1.50' and '1.5', '007' and '7'):
# compared as numbers. Booleans are compared by meaning ('t', 'true', 'on', ...).
NUMERIC_TYPE_OIDS = frozenset({20, 21, 23, 26, 700, 701, 1700})
BOOL_TYPE_OID = 16
_TRUE = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE = frozenset({"f", "false", "n", "no", "off", "0"})


class DownAction(StrEnum):
    SEND = "Send"
    AS_DELETE = "AsDelete"
    AS_INSERT = "AsInsert"
    DROP = "Drop"


def _same(value: str, literal: str, type_oid: int) -> bool:
    """Whether a column's text value equals a filter literal as PostgreSQL would compare
    them after casting the literal to the column's type (the cases where text forms
    differ; other types compare as text)."""
    if type_oid in NUMERIC_TYPE_OIDS:
        try:
            return Decimal(value) == Decimal(literal.strip())
        except InvalidOperation:
            return False  # PostgreSQL would refuse the literal: it selects nothing
    if type_oid == BOOL_TYPE_OID:
        v, lit = value.strip().lower(), literal.strip().lower()
        return (v in _TRUE and lit in _TRUE) or (v in _FALSE and lit in _FALSE)
    return value == literal


def term_holds(term: FilterTerm, value: RowValue, type_oid: int = 25) -> bool | None:
    """One term on one value with SQL's meaning (NULL matches no comparison, only
    IsNull); None when the value is Unknown."""
    if value is UNKNOWN:
        return None
    op = FilterOp(term.op)
    if op is FilterOp.IS_NULL:
        return value is None
    if op is FilterOp.IS_NOT_NULL:
        return value is not None
    if value is None:
        return False
    assert isinstance(value, str)
    hit = any(_same(value, lit, type_oid) for lit in term.values)
    if op in (FilterOp.EQUALS, FilterOp.IN):
        return hit
    return not hit  # NotEquals, NotIn


def row_matches(row_filter: RowFilter | None, row: Mapping[str, RowValue],
                types: Mapping[str, int] | None = None) -> bool | None:
    """Whether a row (column -> text value) is in the filter: every term holds. None
    when it depends on an Unknown value (and no known term already excludes the row).
    A column the row lacks is Unknown. Without a filter every row is in."""
    if row_filter is None:
        return True
    unknown = False
    for term in row_filter.all_of:
        held = term_holds(term, row.get(term.column, UNKNOWN),
                          (types or {}).get(term.column, 25))
        if held is False:
            return False
        if held is None:
            unknown = True
    return None if unknown else True


def down_action(op: str, old_in: bool | None, new_in: bool | None) -> DownAction:
    """What the satellite receives for one change (`op` "insert", "update" or "delete")
    given whether its old and new rows are in the filter (None: Unknown, counted in).
    Never Drop for a table the satellite keeps (module docstring)."""
    old = old_in is not False
    new = new_in is not False
    if op == "delete":
        return DownAction.SEND
    if op not in ("insert", "update"):
        raise ValueError(f"unknown change kind {op!r}")
    if not new:
        return DownAction.AS_DELETE
    if op == "insert" or old:
        return DownAction.SEND
    return DownAction.AS_INSERT


def sync_status(entry: Mapping[str, object] | None, *, ready: bool,
                backlog: Backlog | None = None) -> dict[str, object]:
    """The Satellite status fields the sync owns, from its parent sidecar's report entry
    (sync/satreport.SatelliteReport.as_dict); {} without one (the parent's sidecar not
    reached, or the satellite not in its config yet: nothing is claimed). The phase is
    told only for a satellite whose instance serves (`ready`): Offline while the parent
    cannot reach it, Syncing while either side has a backlog, else Online. backlogRows
    is the parent's spool (rows known exactly); backlogBytes adds the satellite's own
    slot lag, the last measured. BacklogFull (spec.backlog passed, `backlog`) outranks
    the rest; Copying while the initial copy from the parent is not done; Online only
    while both links stream and the drain works (streaming_of)."""
    if entry is None:
        return {}

    def count(key: str) -> int:
        value = entry.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    connected = entry.get("connected") is True
    flowing = streaming_of(entry)[0] is Streaming.STREAMING
    rows = count("parentBacklogRows")
    size = count("parentBacklogBytes") + count("satelliteBacklogBytes")
    out: dict[str, object] = {"connected": connected, "backlogRows": rows,
                              "backlogBytes": size, **backlog_fields(entry)}
    if isinstance(entry.get("lastContact"), str):
        out["lastSyncAt"] = entry["lastContact"]
    # Either initial copy (the parent's rows down, the satellite's own up) not done yet.
    copying = any(isinstance(c, Mapping) and c.get("state") != "Done"
                  for c in (entry.get("copy"), entry.get("copyUp")))
    if ready:
        if backlog is Backlog.FULL:
            out["phase"] = SatellitePhase.BACKLOG_FULL.value
        elif not connected:
            out["phase"] = SatellitePhase.OFFLINE.value
        elif copying:
            out["phase"] = SatellitePhase.COPYING.value
        elif rows > 0 or count("satelliteBacklogBytes") > SYNCED_BYTES or not flowing:
            # A link not streaming holds changes back (the satellite's slot, or the
            # parent's slot for it): never Online; the Streaming condition says which.
            out["phase"] = SatellitePhase.SYNCING.value
        else:
            out["phase"] = SatellitePhase.ONLINE.value
    return out


# Slot lag below this is the WAL of a quiet satellite (its own bookkeeping), not backlog.
SYNCED_BYTES = 1 << 20


# -- the initial copy ---------------------------------------------------------------------
def copy_origin(ring: str, parent: str, satellite: str, members: frozenset[str],
                roname: str | None) -> str | None:
    """Under which origin a row found at the parent is copied to a new satellite, or None
    when it is not copied. The satellite's own rows are never copied back: it holds them
    (or a newer version, or deleted them since, and that delete travels up). A member's
    or another satellite's row keeps that writer as its origin, so the conflict rules at
    the satellite see its true version; a row with no origin, or a foreign one, is the
    parent's; a stock-sync row keeps the seed origin (oldest, never forwarded)."""
    if roname is None:
        return parent
    writer = names.member_of_origin(ring, roname)
    if writer == satellite:
        return None
    if writer == names.SEED:
        return names.SEED
    return writer if writer is not None and writer in members else parent


# -- backlog limits -----------------------------------------------------------------------
class Backlog(StrEnum):
    """Where the parent's spool for a satellite stands against spec.backlog."""

    WITHIN = "Within"
    NEAR = "BacklogNearLimit"  # past NEAR_FRACTION of a limit: warned well before
    FULL = "BacklogFull"  # maxRows or maxBytes passed
    OLD = "BacklogOld"  # its oldest row older than maxAgeHours


BACKLOG_ADVICE = (
    "nothing is dropped: the parent's spool keeps every change until the satellite has "
    "it. Bring the satellite's link back so it drains; or, if the satellite will not "
    "return, remove it from the ring (delete the Satellite) and re-seed it from its "
    "parent (a new satellite gets an initial copy)")


NEAR_FRACTION = 0.8  # the warning comes at 80 % of a limit, while there is time to act


def backlog_verdict(*, rows: int | None, size: int | None, oldest_age_hours: float | None,
                    max_rows: int, max_bytes: int, max_age_hours: float
                    ) -> tuple[Backlog, str]:
    """(verdict, message) of the parent's spool against the limits; Full before Old
    (a full spool is the more urgent), then Near (past NEAR_FRACTION of any limit). A
    figure not measured (None) passes nothing: the verdict is never claimed on a guess.
    The spool is never trimmed whatever this says (BACKLOG_ADVICE)."""
    over = []
    if rows is not None and rows > max_rows:
        over.append(f"{rows} spooled rows > maxRows {max_rows}")
    if size is not None and size > max_bytes:
        over.append(f"{size} spooled bytes > maxBytes {max_bytes}")
    if over:
        return Backlog.FULL, f"backlog at the parent: {'; '.join(over)}; {BACKLOG_ADVICE}"
    if oldest_age_hours is not None and oldest_age_hours > max_age_hours:
        return Backlog.OLD, (f"backlog at the parent: its oldest change is "
                             f"{oldest_age_hours:.1f} h old > maxAgeHours {max_age_hours:g}; "
                             f"{BACKLOG_ADVICE}")
    near = []
    if rows is not None and rows > NEAR_FRACTION * max_rows:
        near.append(f"{rows} spooled rows of maxRows {max_rows}")
    if size is not None and size > NEAR_FRACTION * max_bytes:
        near.append(f"{size} spooled bytes of maxBytes {max_bytes}")
    if oldest_age_hours is not None and oldest_age_hours > NEAR_FRACTION * max_age_hours:
        near.append(f"oldest change {oldest_age_hours:.1f} h old of maxAgeHours "
                    f"{max_age_hours:g}")
    if near:
        return Backlog.NEAR, (f"backlog at the parent nears its limit ({'; '.join(near)}); "
                              f"{BACKLOG_ADVICE}")
    return Backlog.WITHIN, "backlog within spec.backlog"


BACKLOG_CONDITION = "BacklogLimit"


def backlog_of(entry: Mapping[str, object] | None, limits: Mapping[str, Any],
               max_bytes: int) -> tuple[Backlog, str] | None:
    """The verdict for a parent sidecar's report entry against the Satellite's
    spec.backlog (`limits`, as written: maxRows, maxAgeHours; maxBytes parsed by the
    caller); None without an entry (nothing measured: nothing claimed)."""
    if entry is None:
        return None

    def num(key: str) -> float | None:
        value = entry.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) \
            else None

    rows, size = num("parentBacklogRows"), num("parentBacklogBytes")
    return backlog_verdict(
        rows=None if rows is None else int(rows), size=None if size is None else int(size),
        oldest_age_hours=num("parentBacklogOldestHours"),
        max_rows=int(limits.get("maxRows", 10_000_000)), max_bytes=max_bytes,
        max_age_hours=float(limits.get("maxAgeHours", 72)))


def backlog_condition(conditions: list[dict[str, Any]], verdict: Backlog, message: str,
                      now: datetime, generation: int | None
                      ) -> tuple[list[dict[str, Any]], tuple[str, bool] | None]:
    """(conditions with BacklogLimit set, the Event to post: (reason, warning?) or None).
    One Event per change of verdict: nearing or passing a limit warns (the condition is
    True only once a limit is passed), coming back within it is told once; a satellite
    that was never near posts nothing."""
    before = next((c for c in conditions if c.get("type") == BACKLOG_CONDITION), None)
    conds = set_condition(conditions, type=BACKLOG_CONDITION,
                          status="True" if verdict in (Backlog.FULL, Backlog.OLD)
                          else "False",
                          reason=verdict.value, message=message, now=now,
                          generation=generation)
    was = before.get("reason") if before is not None else Backlog.WITHIN.value
    if was == verdict.value:
        return conds, None
    return conds, (verdict.value, verdict is not Backlog.WITHIN)


# -- whether the satellite streams ------------------------------------------------------
STREAMING_CONDITION = "Streaming"
_FLOWING = frozenset({"Streaming", "CatchingUp"})  # link states that carry changes


class Streaming(StrEnum):
    """The reason of the Satellite's Streaming condition (streaming_of)."""

    STREAMING = "BothWays"  # up link, spool link and drain all work
    PARENT_UNREAD = "ParentUnread"  # no report: parent sidecar not reached, or not syncing it
    UP_STOPPED = "UpLinkStopped"  # satellite -> parent not streaming
    SPOOL_STOPPED = "SpoolLinkStopped"  # parent's slot -> spool not streaming
    DRAIN_FAILING = "DrainFailing"  # spool -> satellite failing
    # a table of the satellite's spec that does not exist at the parent
    TABLE_MISSING_AT_PARENT = "TableMissingAtParent"


def streaming_of(entry: Mapping[str, object] | None) -> tuple[Streaming, str]:
    """Whether the satellite streams both ways, from its parent sidecar's report entry:
    (reason, message). A table of the satellite that does not exist at the parent comes
    first (the links then stop or park with the applier's message; this one names the
    tables and what to do). Both links must be in a state that carries changes and the
    drain must not be failing; a link that reports nothing counts as stopped (a claim
    of streaming needs the sidecar's word). The message quotes the link's own, so a
    user sees why (an unreachable address, a missing table)."""
    if entry is None:
        return (Streaming.PARENT_UNREAD, "the parent's sync sidecar did not answer, or "
                "does not sync this satellite yet")
    missing = missing_at_parent(entry)
    if missing:
        parent = str(entry.get("parent") or "its parent")
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                           if len(missing) > 10 else "")
        return (Streaming.TABLE_MISSING_AT_PARENT,
                f"table(s) {shown} of the satellite do not exist at its parent {parent}: "
                "create each at every ring member with the satellite's columns and "
                "primary key (Ringkeeper replicates rows, not tables), or remove it from "
                "the Satellite's spec.tables; until then its changes do not travel "
                "either way")
    for key, reason, what in (("up", Streaming.UP_STOPPED, "satellite -> parent"),
                              ("down", Streaming.SPOOL_STOPPED, "parent -> spool")):
        link = entry.get(key)
        state = link.get("state") if isinstance(link, Mapping) else None
        if state not in _FLOWING:
            said = link.get("message") if isinstance(link, Mapping) else None
            return reason, (f"the {what} link is {state or 'not reported'}"
                            + (f": {str(said)[:300]}" if said else ""))
    if entry.get("drainError"):
        return (Streaming.DRAIN_FAILING,
                f"applying the spool at the satellite fails: {str(entry['drainError'])[:300]}")
    return (Streaming.STREAMING, "the satellite's writes stream to the parent and the "
            "parent's (filtered) through its spool to the satellite")


def missing_at_parent(entry: Mapping[str, object]) -> list[str]:
    """The satellite's tables the parent's sidecar found missing at the parent (its
    report's `missingAtParent`, looked up by name each second); [] when none are, or
    before it has looked."""
    raw = entry.get("missingAtParent")
    if not isinstance(raw, list | tuple):
        return []
    return [str(t)[:130] for t in raw]


def streaming_condition(conditions: list[dict[str, Any]], entry: Mapping[str, object] | None,
                        now: datetime, generation: int | None) -> list[dict[str, Any]]:
    """Conditions with Streaming set from streaming_of (True only both ways)."""
    reason, message = streaming_of(entry)
    return set_condition(conditions, type=STREAMING_CONDITION,
                         status="True" if reason is Streaming.STREAMING else "False",
                         reason=reason.value, message=message, now=now,
                         generation=generation)


def streaming_event(before: Mapping[str, Any] | None, after: Mapping[str, Any]
                    ) -> tuple[str, bool] | None:
    """The Event for a change of the Streaming condition: (reason, warning?) or None.
    Told when the satellite starts streaming both ways (connect, reconnect: Normal) and
    when it stops after it streamed (disconnect: Warning with the stopped link's reason);
    not while it has never streamed (a join's waiting is in the condition only), nor
    for a change of reason or message alone."""
    was, now = (before or {}).get("status"), after.get("status")
    if was == now:
        return None
    if now == "True":
        return str(after.get("reason")), False
    if was == "True":
        return str(after.get("reason")), True
    return None
