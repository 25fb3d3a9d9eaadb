"""How far a satellite's catch-up is, and when it will be done.

A hospital branch back from an outage wants to know how long until its results are at
the main campus and the campus's at the branch: the parent's sidecar samples the rows it
has drained into the satellite once a second, and this turns the samples into the share
done, the recent drain rate and an ETA. Pure: the samples come in, nothing is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RATE_WINDOW = 10.0  # seconds of samples the drain rate is measured over


@dataclass(frozen=True)
class CatchUp:
    """`percent`: rows drained since the spool was last empty over those plus the rows
    still spooled (100 with nothing spooled); `rows_per_second`: the drain rate over the
    last RATE_WINDOW (None with under a second of samples); `eta_seconds`: the spooled
    rows at that rate (0 with nothing spooled; None while nothing drains: no guess)."""

    percent: float
    rows_per_second: float | None
    eta_seconds: float | None


def catch_up(base: int, drained: int, backlog: int,
             samples: Sequence[tuple[float, int]]) -> CatchUp:
    """`base`: the drained count when the spool was last seen empty; `samples`:
    (monotonic time, drained count), oldest first. A restarted count (drained below the
    base or an earlier sample) never gives a negative share or rate."""
    done = max(0, drained - base)
    percent = 100.0 if backlog <= 0 else round(100.0 * done / (done + backlog), 1)
    rate: float | None = None
    if samples:
        t_end, n_end = samples[-1]
        window = [(t, n) for t, n in samples if t_end - t <= RATE_WINDOW]
        t0, n0 = window[0]
        if t_end - t0 >= 1.0:
            rate = round(max(0, n_end - n0) / (t_end - t0), 1)
    if backlog <= 0:
        eta: float | None = 0.0
    elif rate:
        eta = round(backlog / rate, 1)
    else:
        eta = None
    return CatchUp(percent, rate, eta)


def backlog_fields(entry: Mapping[str, object]) -> dict[str, object]:
    """The Satellite status fields of the backlog on each side and of the catch-up, from
    its parent sidecar's report entry (sync/satreport.py), where reported; an ETA only
    while something drains (None is left out: nothing claimed)."""
    out: dict[str, object] = {}
    for key in ("parentBacklogRows", "parentBacklogBytes", "satelliteBacklogBytes"):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    catch = entry.get("catchUp")
    if isinstance(catch, Mapping):
        for src, dst in (("percent", "catchUpPercent"), ("etaSeconds", "catchUpEtaSeconds")):
            value = catch.get(src)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[dst] = float(value)
    return out
