"""A drill run's report: JSON for tools, Markdown for people, in the `<drill>-report`
ConfigMap (docs/drills.md). Built from what the run recorded; no I/O here."""

from __future__ import annotations

import json
from typing import Any

from ..core.drill import Snapshot
from ..workload.keys import KeySpaceError, decompose

LOST_PROBLEMS = ("missing", "stale", "unexpected")  # what the drill counts as lost
LOST_SHOWN = 5  # keys looked up at every server and named in the Event and report
EVENT_CHARS = 1000


def lost_keys(checked: dict[str, Any], limit: int = LOST_SHOWN) -> list[tuple[str, str, int]]:
    """(member, table, key) of the first lost findings the check kept as examples."""
    out: list[tuple[str, str, int]] = []
    for ex in checked.get("examples") or []:
        item = (str(ex.get("member")), str(ex.get("table")), int(ex.get("key") or 0))
        if ex.get("problem") in LOST_PROBLEMS and item not in out:
            out.append(item)
    return out[:limit]


def _rev(rev: int | None) -> str:
    """A rev with its counter: revs of one site and run grow with time, so the counter
    tells an older version from a newer one."""
    if rev is None:
        return "no row"
    try:
        return f"{rev} (#{decompose(rev)[2]})"
    except KeySpaceError:
        return str(rev)


def _hint(problem: str, found: int | None, allowed: list[int | None]) -> str:
    """What the finding means for the question 'measurement or real loss'."""
    if problem == "missing":
        return "no row where an acknowledged write is expected"
    if problem == "unexpected":
        return "a row where an acknowledged delete is expected"
    acked = [a for a in allowed if a is not None]
    if found is None or not acked:
        return "another version than any acknowledged"
    try:
        newer = all(decompose(found)[1:] > decompose(a)[1:] for a in acked)
    except KeySpaceError:
        return "another version than any acknowledged"
    return ("newer than every acknowledged version: a write whose acknowledgement the "
            "ledger did not get is there" if newer else
            "older than the acknowledged version: the acknowledged write is not there")


def explain_lost(checked: dict[str, Any], held: dict[str, dict[str, dict[str, Any]]],
                 doubtful: dict[str, list[int | None]]) -> list[dict[str, Any]]:
    """Each lost example with what every server of its member campus held for the key
    (`held`: member -> server -> rows_at's answer) and the ledger's versions in doubt
    (`doubtful`: "table/key" -> revs), so a failure is diagnosable from status alone."""
    out: list[dict[str, Any]] = []
    wanted = set(lost_keys(checked))
    for ex in checked.get("examples") or []:
        item = (str(ex.get("member")), str(ex.get("table")), int(ex.get("key") or 0))
        if ex.get("problem") not in LOST_PROBLEMS or item not in wanted:
            continue
        wanted.discard(item)
        member, table, key = item
        ref = f"{table}/{key}"
        servers = {}
        for server, answer in sorted((held.get(member) or {}).items()):
            if "error" in answer:
                servers[server] = {"error": answer["error"]}
            else:
                servers[server] = {"address": answer.get("address"),
                                   "role": "replica" if answer.get("inRecovery")
                                   else "primary",
                                   "rev": (answer.get("revs") or {}).get(ref)}
        out.append({"member": member, "problem": ex.get("problem"), "table": table,
                    "key": key, "found": ex.get("found"), "allowed": ex.get("allowed"),
                    "inDoubt": doubtful.get(ref, []),
                    "hint": _hint(str(ex.get("problem")), ex.get("found"),
                                  list(ex.get("allowed") or [])),
                    "servers": servers})
    return out


def lost_text(lost: list[dict[str, Any]], limit: int = EVENT_CHARS) -> str:
    """One line per lost key for the Event and the timeline: the key, what the ledger
    expected and what each server held."""
    parts = []
    for x in lost:
        at = "; ".join(
            f"{name} {v['error']}" if "error" in v else
            f"{name} ({v['role']} {v['address']}) {_rev(v['rev'])}"
            for name, v in x["servers"].items()) or "no server answered"
        doubt = (", in doubt " + ", ".join(_rev(r) for r in x["inDoubt"])
                 if x["inDoubt"] else "")
        parts.append(f"{x['problem']} {x['table']} key {x['key']} at {x['member']}: "
                     f"check read {_rev(x['found'])}, acknowledged "
                     f"{', '.join(_rev(a) for a in x['allowed'] or [])}{doubt}; "
                     f"{x['hint']}; servers: {at}")
    text = " | ".join(parts)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def report(drill: str, snap: Snapshot, run: dict[str, Any], timeline: list[dict[str, str]],
           load: dict[str, Any], checked: dict[str, Any],
           ring: dict[str, Any] | None = None) -> dict[str, str]:
    """{"report.json": ..., "report.md": ...} for one finished run; `ring`: a ring
    drill's figures (campusLoss, syncCrash: bypass, link back, convergence)."""
    body = {
        "drill": drill, "scenario": snap.scenario.value,
        "target": {"kind": snap.target_kind.value,
                   "campuses": [c.name for c in snap.campuses]},
        "expectations": {"maxRtoSeconds": snap.max_rto_seconds,
                         "maxLostTransactions": snap.max_lost},
        "result": run, "timeline": timeline, "load": load,
        "ledgerCheck": {k: v for k, v in checked.items() if k != "examples"},
        "examples": checked.get("examples", [])[:20],
    }
    if ring is not None:
        body["ring"] = ring
    rto = run.get("rtoSeconds")
    lines = [
        f"# Drill {drill}: {run.get('result')}",
        "",
        f"- scenario: {snap.scenario.value} against {snap.target_kind.value} "
        + (f"{snap.satellite.name} (parent {snap.satellite.parent})" if snap.satellite
           else ', '.join(c.name for c in snap.campuses)),
        f"- started {run.get('startedAt')}, completed {run.get('completedAt')}",
        f"- RTO: {'none (no write came back)' if rto is None else f'{rto} s'} "
        f"(allowed {snap.max_rto_seconds} s)",
        f"- acknowledged transactions: {run.get('committedTransactions')}, lost: "
        f"{run.get('lostTransactions')} (allowed {snap.max_lost}; rows lost: "
        f"{'not checked' if run.get('lostRows') is None else run.get('lostRows')})",
        f"- verdict: {run.get('reason')}: {run.get('message')}",
        "",
        "## Timeline",
        "",
        "| time (UTC) | event | message |",
        "|---|---|---|",
    ]
    for t in timeline:
        msg = str(t.get("message", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {t.get('at')} | {t.get('event')} | {msg} |")
    lost = checked.get("lost") or []
    if lost:
        # before the timeline: the report is cut to the status's limit from the end
        lines[lines.index("## Timeline"):lines.index("## Timeline")] = [
            "## Lost", "", *(f"- {lost_text([x], 2000)}" for x in lost), ""]
    if ring is not None:
        lines[lines.index("## Timeline"):lines.index("## Timeline")] = [
            "## Ring", "", *ring_lines(snap.scenario.value, ring), ""]
    sides = [k for k in SATELLITE_SIDES if k in checked]
    if sides:  # a Satellite partition: its ledgers checked in four directions
        lines[lines.index("## Timeline"):lines.index("## Timeline")] = [
            "## Satellite ledger check", "", *(f"- {k}: {json.dumps(checked[k])}"
                                               for k in sides), ""]
    read = checked.get("readFrom") or {}
    if read:
        lines[lines.index("## Timeline"):lines.index("## Timeline")] = [
            "## Ledger check read", "", *(f"- {m}: {v}" for m, v in sorted(read.items())),
            ""]
    if load:
        lines += ["", "## Load", "", "```json", json.dumps(load, indent=1, sort_keys=True),
                  "```"]
    return {"report.json": json.dumps(body, indent=1, sort_keys=True, default=str),
            "report.md": "\n".join(lines) + "\n"}


SATELLITE_SIDES = ("satelliteRowsAtSatellite", "satelliteRowsAtParent", "parentRowsAtParent",
                   "parentRowsAtSatellite")


def _s(x: Any) -> str:
    return "none within the limit" if x is None else f"{x} s"


def ring_lines(scenario: str, ring: dict[str, Any]) -> list[str]:
    """What a ring drill measured, one line each (docs/drills.md)."""
    out = [f"- campus: {ring.get('campus')} of ring {ring.get('ring')}"]
    if scenario == "campusLoss":
        links = ring.get("bypassLinks") or []
        out.append("- bypass: " + (f"{', '.join(links)} carries changes after "
                                   f"{_s(ring.get('bypassSeconds'))}" if links else
                                   "not needed (the others feed each other directly)"))
        out.append(f"- {ring.get('campus')} writes through -rw again after the fence "
                   f"lifted: {_s(ring.get('returnedSeconds'))}")
        out.append(f"- ring whole again after the fence lifted: "
                   f"{_s(ring.get('convergedSeconds'))}")
    else:
        out.append(f"- sessions ended: {ring.get('streamsEnded')}")
        out.append(f"- streams again after {_s(ring.get('linkBackSeconds'))}; every link "
                   f"streams after {_s(ring.get('convergedSeconds'))}")
    if ring.get("faultError"):
        out.append(f"- fault not injected: {ring['faultError']}")
    return out
