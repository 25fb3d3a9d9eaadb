"""What `ringkeeper drill` shows and creates, without I/O: the Drill manifest a `drill run`
asks for (checked by the same model the operator reads), the one-screen summary of a
Drill, and the run's timeline as an SVG picture a person reads at a glance.

Every string from the cluster goes through `safe` before a terminal sees it and through
XML escaping before the picture holds it: a Drill's message can carry what an attacker
wrote into a spec.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydantic import ValidationError

from ..api.v1alpha1 import GROUP, VERSION
from ..api.v1alpha1.resources import Drill
from ..api.validation import problems_of
from ..base.timefmt import parse_rfc3339
from ..core.drill import DrillReason
from .status_view import safe

FINISHED = ("Passed", "Failed")


def run_manifest(name: str, *, kind: str = "Campus", target: str | None = None,
                 scenario: str | None = None,
                 max_rto: int | None = None, writers: int | None = None,
                 rate: int | None = None, duration: int | None = None,
                 template: dict[str, Any] | None = None,
                 strike: str | None = None) -> dict[str, Any]:
    """A Drill that runs once now: a copy of `template`'s spec (`drill run --from`, like
    `kubectl create job --from=cronjob/...`) without its schedule, or a new spec; options
    given override (`strike`: target.campus, the campus a ring drill strikes). Raises
    ValueError with the model's own messages when the result is not a Drill the operator
    would accept."""
    spec: dict[str, Any] = json.loads(json.dumps((template or {}).get("spec") or {}))
    for key in ("schedule", "timeZone", "suspend"):
        spec.pop(key, None)
    if target is not None:
        spec["target"] = {"kind": kind, "name": target}
    elif template is None:
        raise ValueError("a target is needed: --campus NAME, --ring NAME or --satellite NAME "
                         "(or --from DRILL)")
    if scenario:
        spec["scenario"] = scenario
    if strike is not None:
        spec.setdefault("target", {})["campus"] = strike
    if max_rto is not None:
        spec.setdefault("expectations", {})["maxRtoSeconds"] = max_rto
    load = {"writers": writers, "ratePerSecond": rate, "durationSeconds": duration}
    for key, value in load.items():
        if value is not None:
            spec.setdefault("workload", {})[key] = value
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Drill",
                "metadata": {"name": name}, "spec": spec}
    try:
        Drill.model_validate(manifest)
    except ValidationError as exc:
        raise ValueError("; ".join(str(p) for p in problems_of(exc))) from exc
    return manifest


def _cond(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind), {})


def outcome(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(verdict, why) once the Drill's run has ended or it was refused; None while it
    waits for its turn or runs. Verdicts: Passed, Failed, Refused."""
    st = obj.get("status") or {}
    if st.get("phase") in FINISHED and (st.get("lastRun") or {}).get("result"):
        last = st["lastRun"]
        return str(last["result"]), str(last.get("message") or last.get("reason") or "")
    accepted, ready = _cond(obj, "Accepted"), _cond(obj, "Ready")
    if accepted.get("status") == "False":
        return "Refused", f"{accepted.get('reason')}: {accepted.get('message')}"
    if ready.get("status") == "False" and st.get("phase") != "Running" and not st.get("runs"):
        waiting = (DrillReason.TARGET_BUSY, DrillReason.TARGET_NOT_READY)  # its turn comes
        if ready.get("reason") not in waiting:
            return "Refused", f"{ready.get('reason')}: {ready.get('message')}"
    return None


def progress(obj: dict[str, Any]) -> str:
    """One line saying where the Drill stands (for --wait)."""
    st = obj.get("status") or {}
    ready = _cond(obj, "Ready")
    events = (st.get("lastRun") or {}).get("timeline") or []
    last = events[-1]["event"] if events and st.get("phase") == "Running" else None
    parts = [f"phase {st.get('phase') or 'Pending'}"]
    if last:
        parts.append(f"last event {last}")
    if ready.get("reason"):
        parts.append(f"{ready.get('reason')}: {ready.get('message')}")
    return safe("; ".join(parts))


def summary(obj: dict[str, Any]) -> str:
    """`drill status NAME`: the Drill, its last run and its timeline."""
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    target = spec.get("target") or {}
    last = st.get("lastRun") or {}
    lines = [
        f"Drill {safe(meta.get('namespace'))}/{safe(meta.get('name'))}: "
        f"{safe(spec.get('scenario'))} on {safe(target.get('kind'))}/{safe(target.get('name'))}",
        f"  schedule   {safe(spec.get('schedule') or 'once')}"
        + (f" ({safe(spec.get('timeZone'))})" if spec.get("timeZone") else ""),
        f"  phase      {safe(st.get('phase') or 'Pending')}; runs {st.get('runs', 0)}, "
        f"passed {st.get('passed', 0)}",
    ]
    for kind in ("Accepted", "Ready"):
        c = _cond(obj, kind)
        if c:
            lines.append(f"  {kind:<10} {safe(c.get('status'))} {safe(c.get('reason'))}: "
                         f"{safe(c.get('message'))}")
    if last:
        lines.append(f"  last run   {safe(last.get('result'))} ({safe(last.get('reason'))}): "
                     f"RTO {safe(last.get('rtoSeconds'))} s, lost "
                     f"{safe(last.get('lostTransactions'))} of "
                     f"{safe(last.get('committedTransactions'))} acknowledged transactions"
                     + (f" ({safe(last.get('lostRows'))} rows)"
                        if last.get("lostRows") else ""))
        if last.get("message"):
            lines.append(f"             {safe(last.get('message'))}")
        for ev in last.get("timeline") or []:
            lines.append(f"    {safe(ev.get('at'))}  {safe(ev.get('event')):<18} "
                         f"{safe(ev.get('message'))}")
    return "\n".join(lines)


def _seconds(events: list[dict[str, Any]]) -> list[float]:
    times: list[datetime] = []
    for ev in events:
        try:
            at = parse_rfc3339(str(ev.get("at") or ""))
        except ValueError:
            at = None
        times.append(at or (times[-1] if times else datetime.min))
    if not times or times[0] == datetime.min:
        return [0.0] * len(events)
    return [max(0.0, (t - times[0]).total_seconds()) if t != datetime.min else 0.0
            for t in times]


def timeline_svg(obj: dict[str, Any]) -> str:
    """The last run's timeline as SVG: a time axis, one labelled mark per event, the
    outage (fault to recovery) shaded, and the verdict with RTO and lost commits."""
    meta, st = obj.get("metadata") or {}, obj.get("status") or {}
    last = st.get("lastRun") or {}
    events = list(last.get("timeline") or [])
    secs = _seconds(events)
    span = max([*secs, 1.0])
    width, left, right, axis_y = 960, 40, 40, 90
    row = 22
    height = axis_y + 40 + row * max(1, len(events))

    def x(t: float) -> float:
        return left + (width - left - right) * t / span

    verdict = str(last.get("result") or st.get("phase") or "no run yet")
    colour = {"Passed": "#1a7f37", "Failed": "#cf222e"}.get(verdict, "#57606a")
    title = (f"Drill {meta.get('name')}: {verdict}; RTO {last.get('rtoSeconds')} s; "
             f"lost {last.get('lostTransactions')} of {last.get('committedTransactions')}")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="24" font-size="16" fill={quoteattr(colour)}>'
           f'{escape(safe(title))}</text>']
    names = [str(e.get("event")) for e in events]
    if "FaultInjected" in names:
        start = secs[names.index("FaultInjected")]
        end = secs[names.index("Recovered")] if "Recovered" in names else span
        out.append(f'<rect x="{x(start):.1f}" y="{axis_y - 30}" '
                   f'width="{max(1.0, x(end) - x(start)):.1f}" height="30" fill="#ffd8d3">'
                   f'<title>outage {end - start:.1f} s</title></rect>')
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" '
               f'stroke="black"/>')
    for i in range(6):
        t = span * i / 5
        out.append(f'<text x="{x(t):.1f}" y="{axis_y + 16}" text-anchor="middle">'
                   f'{t:.0f} s</text>')
    for i, (ev, t) in enumerate(zip(events, secs, strict=True)):
        y = axis_y + 40 + row * i
        out.append(f'<line x1="{x(t):.1f}" y1="{axis_y}" x2="{x(t):.1f}" y2="{y - 4}" '
                   f'stroke="#8c959f" stroke-dasharray="2,2"/>')
        label = f"+{t:.1f} s {ev.get('event')}: {ev.get('message')}"[:160]
        anchor = "end" if x(t) > width / 2 else "start"
        out.append(f'<text x="{x(t):.1f}" y="{y}" text-anchor="{anchor}">'
                   f'{escape(safe(label))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
