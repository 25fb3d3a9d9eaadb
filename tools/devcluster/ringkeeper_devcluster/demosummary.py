"""`python -m ringkeeper_devcluster.demosummary`: the summary `make demo` ends with.

Read back from the cluster, not from what the demo's steps printed: per drill its
result, RTO, lost acknowledged commits and their rows, the campuses its fault struck and
(ring and satellite drills) the time the ring or satellite took to converge again; per
campus its current primary and the drills that struck it (a satellite a drill struck is
listed there too, marked "(satellite)", with the primary its Satellite status names);
per ring link its state and lag; per satellite its parent, whether it is connected and
streams, its phase and backlog, its ledger's result (satdemo.py's JSON) and its
verification against its parent; the verification report's verdict, and where the
reports and timeline pictures are. Exit 1 when anything was lost, a drill did not pass,
a converging drill's convergence is missing, a link is not streaming, a satellite does
not stream, lost or misplaced a row or differs from its parent, or the verification did
not pass, so the demo's exit code says so too.
`summarize` decides and formats without I/O (unit tested); `main` only reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringkeeper.adapters import resources
from ringkeeper.adapters.kube import api_client
from ringkeeper.adapters.resources import KubeApiError
from ringkeeper.core.verify_report import Report, SatelliteVerification


@dataclass
class Facts:
    """What the summary reads: Drills, the campuses their targets name (None: the
    Campus is gone), rings, satellites ((namespace, name) -> the Satellite, None: not
    found), the satellite step's ledger results (satellite name -> satdemo's JSON) and
    the verification report (None: not found)."""

    drills: list[dict[str, Any]] = field(default_factory=list)
    campuses: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    rings: list[dict[str, Any]] = field(default_factory=list)
    satellites: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    satellite_ledgers: dict[str, dict[str, Any]] = field(default_factory=dict)
    verify: Report | None = None
    verify_path: str = ""
    pictures: list[str] = field(default_factory=list)


def drill_satellite(drill: dict[str, Any]) -> str | None:
    """The Satellite a Drill targets (kind Satellite), else None. Its name is among the
    drill's struck names (faultCampuses: the satellite and its parent), but it is no
    Campus: it must not be read or shown as one."""
    target = drill["spec"]["target"]
    return str(target["name"]) if target["kind"] == "Satellite" else None


def drill_campuses(drill: dict[str, Any], rings: dict[tuple[str, str], dict[str, Any]]
                   ) -> list[str]:
    """The campuses a Drill's target names (a ring's campusRef members; none for a
    Satellite target: its struck names say which campus is its parent)."""
    target = drill["spec"]["target"]
    if target["kind"] == "Campus":
        return [str(target["name"])]
    if target["kind"] == "Satellite":
        return []
    ring = rings.get((drill["metadata"]["namespace"], target["name"])) or {}
    return [str(m["campusRef"]["name"]) for m in (ring.get("spec") or {}).get("members") or []
            if (m.get("campusRef") or {}).get("name")]


def _secs(x: Any) -> str:
    return "-" if x is None else f"{float(x):.2f} s"


# Ring drills whose run waits for the ring to converge again: their convergence time is
# part of the verdict, so one that is missing is a problem, not a dash. A Satellite drill
# (networkPartition) always records its satellite's convergence after the heal: the same.
CONVERGING = ("campusLoss", "syncCrash")


def _drill_row(d: dict[str, Any], problems: list[str]) -> tuple[str, list[str]]:
    """One drill's line of the drills table (and its problems); the campuses it struck."""
    ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
    scenario = str(d["spec"]["scenario"])
    st = d.get("status") or {}
    run = st.get("lastRun") or {}
    result = str(run.get("result") or st.get("phase") or "no run")
    lost, acked = run.get("lostTransactions"), run.get("committedTransactions")
    rows, conv = run.get("lostRows"), run.get("convergedSeconds")
    if result != "Passed":
        problems.append(f"drill {ns}/{name} {result}: {run.get('reason')}: "
                        f"{run.get('message')}")
    if lost is None or lost > 0:
        problems.append(f"drill {ns}/{name}: lost commits "
                        f"{'not measured' if lost is None else lost}")
    if rows is not None and rows > 0:
        problems.append(f"drill {ns}/{name}: lost rows {rows}")
    if conv is None and result == "Passed":
        if drill_satellite(d) is not None:
            problems.append(f"drill {ns}/{name}: satellite convergence not measured")
        elif scenario in CONVERGING:
            problems.append(f"drill {ns}/{name}: ring convergence not measured")
    struck = [str(c) for c in run.get("faultCampuses") or []]
    what = f"{name} ({scenario})"
    line = (f"  {what:<30} {ns:<10} {','.join(struck) or '-':<26} {result:<8} "
            f"{_secs(run.get('rtoSeconds')):<9} "
            f"{f'{_dash(lost)} of {_dash(acked)}':<14} {_dash(rows):<9} {_secs(conv)}")
    return line, struck


def _dash(x: Any) -> str:
    return "-" if x is None else str(x)


def summarize(f: Facts) -> tuple[list[str], list[str]]:
    """(the summary's lines, the problems: empty when the demo succeeded)."""
    problems: list[str] = []
    rings = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in f.rings}
    lines = ["Ringkeeper demo summary", "",
             f"  {'drill (scenario)':<30} {'namespace':<10} {'struck':<26} {'result':<8} "
             f"{'RTO':<9} {'lost commits':<14} {'lost rows':<9} converged"]
    struck_by: dict[tuple[str, str], list[str]] = {}
    campuses: list[tuple[str, str]] = []  # every campus of every target, in order
    sats: set[tuple[str, str]] = set()  # the satellites drills struck (among `campuses`)
    for d in f.drills:
        ns = d["metadata"]["namespace"]
        if (sat_name := drill_satellite(d)) is not None:
            sats.add((ns, sat_name))
        line, struck = _drill_row(d, problems)
        lines.append(line)
        for c in [*drill_campuses(d, rings), *struck]:
            if (ns, c) not in campuses:
                campuses.append((ns, c))
        for c in struck:
            struck_by.setdefault((ns, c), []).append(str(d["metadata"]["name"]))
    lines += ["", f"  {'campus':<14} {'namespace':<10} {'primary':<16} struck by"]
    for ns, c in campuses:
        if (ns, c) in sats:
            sat_obj = f.satellites.get((ns, c))
            primary = (str(((sat_obj or {}).get("status") or {}).get("currentPrimary")
                           or "none") if sat_obj is not None else "not read")
            primary += " (satellite)"
        else:
            campus = f.campuses.get((ns, c))
            primary = ("(removed)" if campus is None else
                       str((campus.get("status") or {}).get("currentPrimary") or "none"))
        lines.append(f"  {c:<14} {ns:<10} {primary:<16} "
                     f"{', '.join(struck_by.get((ns, c), [])) or '-'}")
    for r in f.rings:
        ns, name = r["metadata"]["namespace"], r["metadata"]["name"]
        links = (r.get("status") or {}).get("links") or []
        lines += ["", f"  ring {ns}/{name}", f"    {'link':<30} {'state':<11} lag"]
        if not links:
            problems.append(f"ring {ns}/{name}: no link in its status")
        for lk in links:
            state = str(lk.get("state"))
            lag = (f"{_secs(lk.get('lagSeconds'))}, "
                   f"{lk.get('lagBytes') if lk.get('lagBytes') is not None else '-'} B")
            link = f"{lk.get('from')} -> {lk.get('to')}"
            lines.append(f"    {link:<30} {state:<11} {lag}")
            if state != "Streaming":
                problems.append(f"ring {ns}/{name}: link {lk.get('from')} -> {lk.get('to')} "
                                f"is {state}, not Streaming")
    for (ns, name), sat in f.satellites.items():
        lines += ["", *_satellite_lines(ns, name, sat, f.satellite_ledgers.get(name),
                                        f.verify, problems)]
    lines.append("")
    v = f.verify
    if v is None:
        problems.append(f"no verification report at {f.verify_path or '(none given)'}")
        lines.append(f"  verification: no report ({f.verify_path or 'none given'})")
    else:
        diffs = len(v.differences)
        verdict = "Passed" if v.passed else "Failed"
        lines.append(f"  verification: {verdict}: {len(v.tables)} table(s) compared at "
                     f"{len(v.members)} members ({', '.join(v.members)}), {diffs} differing "
                     f"key(s); report {f.verify_path}")
        if not v.passed:
            problems.append(f"verification failed: {diffs} differing key(s)")
        if not v.tables:
            problems.append("verification compared no table")
    reports = ", ".join(f"kubectl ringkeeper drill report {d['metadata']['name']} -n "
                        f"{d['metadata']['namespace']}" for d in f.drills)
    lines.append(f"  reports: {reports or '-'}")
    lines.append(f"  timelines: {' '.join(f.pictures) or '-'}")
    lines.append("")
    lines.append("  result: OK: nothing lost, every drill passed, the ring converged and "
                 f"verified{', the satellite streamed and verified' if f.satellites else ''}"
                 if not problems else
                 f"  result: FAILED: {'; '.join(problems)}")
    return lines, problems


def _satellite_lines(ns: str, name: str, sat: dict[str, Any] | None,
                     ledger: dict[str, Any] | None, report: Report | None,
                     problems: list[str]) -> list[str]:
    """A satellite's block (and its problems): its status, its ledger, its verification."""
    who = f"satellite {ns}/{name}"
    if sat is None:
        problems.append(f"{who}: not found")
        return [f"  {who}: not found"]
    st = sat.get("status") or {}
    cond: dict[str, Any] = next(
        (c for c in st.get("conditions") or [] if c.get("type") == "Streaming"), {})
    stream = f"{cond.get('status', '-')}/{cond.get('reason', '-')}"
    backlog = st.get("backlogRows")
    lines = [f"  {who} (parent {(sat.get('spec') or {}).get('parentRef', {}).get('name')}): "
             f"connected {str(st.get('connected')).lower()}, phase {st.get('phase')}, "
             f"streaming {stream}, backlog {_dash(backlog)} rows"]
    if not (st.get("connected") is True and cond.get("status") == "True"
            and st.get("phase") == "Online" and backlog == 0):
        problems.append(f"{who}: not streaming with no backlog (connected "
                        f"{st.get('connected')}, phase {st.get('phase')}, streaming {stream}: "
                        f"{cond.get('message')}, backlog {_dash(backlog)})")
    if ledger is None:
        problems.append(f"{who}: no ledger result")
        lines.append("    ledger: no result")
    elif not ledger.get("streamed"):
        problems.append(f"{who}: did not stream both ways during the demo's writes")
        lines.append("    ledger: not checked, the satellite did not stream both ways")
    else:
        lost, misplaced = ledger.get("lost"), ledger.get("misplaced")
        lines.append(f"    ledger: {_dash(lost)} lost or stale, {_dash(misplaced)} misplaced; "
                     f"{_dash(ledger.get('acked_satellite'))} satellite commits "
                     f"({_dash(ledger.get('keys_satellite'))} rows) checked at every ring "
                     f"member, {_dash(ledger.get('keys_ring_inside'))} ring rows inside the "
                     f"filter at {name}, {_dash(ledger.get('keys_ring_outside'))} outside "
                     f"not there; joined in {_secs(ledger.get('join_seconds'))}")
        if lost is None or lost > 0:
            problems.append(f"{who}: lost {'not measured' if lost is None else lost} "
                            f"(first: {(ledger.get('first_problems') or ['-'])[0]})")
        if misplaced is None or misplaced > 0:
            problems.append(f"{who}: misplaced {_dash(misplaced)} ring row(s) outside its "
                            "filter")
    v: SatelliteVerification | None = None if report is None else next(
        (s for s in report.satellites if s.satellite == name), None)
    if v is None:
        problems.append(f"{who}: not in the verification report")
        lines.append("    verification: not in the report")
    else:
        diffs = len(v.differences)
        outside = sum(t.outside_filter or 0 for t in v.tables)
        verdict = "Passed" if v.passed else f"Failed ({v.state.value})"
        lines.append(f"    verification: {verdict}: {len(v.tables)} table(s) compared with "
                     f"{v.parent}, {diffs} differing key(s), {outside} row(s) outside the "
                     f"filter{f'; {v.message}' if v.message else ''}")
        errors = [f"{t.table}: {t.error}" for t in v.tables if t.error]
        if not v.passed:
            problems.append(f"{who} verification failed: {v.state.value}, {diffs} differing "
                            f"key(s){'; ' + '; '.join(errors) if errors else ''}")
        elif not v.tables:
            problems.append(f"{who} verification compared no table")
    return lines


def _split(ref: str) -> tuple[str, str]:
    ns, sep, name = ref.partition("/")
    if not sep or not ns or not name:
        raise SystemExit(f"expected NAMESPACE/NAME, got {ref!r}")
    return ns, name


async def _gather(args: argparse.Namespace) -> Facts:
    f = Facts(verify_path=args.verify or "", pictures=list(args.picture or []))
    async with await api_client() as api:
        for ref in args.drill or []:
            ns, name = _split(ref)
            f.drills.append(await resources.read_custom(api, ns, "drills", name))
        for ref in args.ring or []:
            ns, name = _split(ref)
            f.rings.append(await resources.read_custom(api, ns, "replicationrings", name))
        for ref in args.satellite or []:
            ns, name = _split(ref)
            try:
                f.satellites[(ns, name)] = await resources.read_custom(api, ns, "satellites",
                                                                       name)
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                f.satellites[(ns, name)] = None
        rings = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in f.rings}
        for d in f.drills:
            ns = d["metadata"]["namespace"]
            struck = ((d.get("status") or {}).get("lastRun") or {}).get("faultCampuses")
            sat_name = drill_satellite(d)
            for c in dict.fromkeys([*drill_campuses(d, rings), *(struck or [])]):
                if c == sat_name:
                    continue  # a Satellite, not a Campus (its row reads --satellite)
                try:
                    f.campuses[(ns, c)] = await resources.read_custom(api, ns, "campuses", c)
                except KubeApiError as exc:
                    if exc.status != 404:
                        raise
                    f.campuses[(ns, c)] = None
    return f


def _read_verify(f: Facts, ledgers: list[str]) -> Facts:
    """The verification report and the satellite step's results, when the demo's steps
    wrote them (else the summary fails). A result file that is not a JSON object naming
    its satellite is left out, so the summary says the ledger result is missing."""
    path = Path(f.verify_path) if f.verify_path else None
    if path is not None and path.is_file():
        f.verify = Report.model_validate_json(path.read_text(encoding="utf-8"))
    for name in ledgers:
        p = Path(name)
        if p.is_file():
            with contextlib.suppress(ValueError):
                data = json.loads(p.read_text(encoding="utf-8"))
                if isinstance(data, dict) and isinstance(data.get("satellite"), str):
                    f.satellite_ledgers[data["satellite"]] = data
    return f


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m ringkeeper_devcluster.demosummary",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--drill", action="append", metavar="NS/NAME")
    p.add_argument("--ring", action="append", metavar="NS/NAME",
                   help="a ReplicationRing (also the campuses of a ring drill)")
    p.add_argument("--satellite", action="append", metavar="NS/NAME", help="a Satellite")
    p.add_argument("--satellite-ledger", action="append", metavar="PATH",
                   help="a satellite step's result (ringkeeper_devcluster.satdemo --out)")
    p.add_argument("--verify", metavar="PATH", help="the `ringkeeper verify` JSON report")
    p.add_argument("--picture", action="append", metavar="PATH", help="a timeline picture")
    args = p.parse_args()
    lines, problems = summarize(_read_verify(asyncio.run(_gather(args)),
                                             list(args.satellite_ledger or [])))
    print("\n".join(lines), flush=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    cli()
