"""A drill run's report: JSON for tools, Markdown for people, in the `<drill>-report`
ConfigMap (docs/drills.md). Built from what the run recorded; no I/O here."""

from __future__ import annotations

import json
from typing import Any

from ..core.drill import Snapshot


def report(drill: str, snap: Snapshot, run: dict[str, Any], timeline: list[dict[str, str]],
           load: dict[str, Any], checked: dict[str, Any]) -> dict[str, str]:
    """{"report.json": ..., "report.md": ...} for one finished run."""
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
    rto = run.get("rtoSeconds")
    lines = [
        f"# Drill {drill}: {run.get('result')}",
        "",
        f"- scenario: {snap.scenario.value} against {snap.target_kind.value} "
        f"{', '.join(c.name for c in snap.campuses)}",
        f"- started {run.get('startedAt')}, completed {run.get('completedAt')}",
        f"- RTO: {'none (no write came back)' if rto is None else f'{rto} s'} "
        f"(allowed {snap.max_rto_seconds} s)",
        f"- acknowledged transactions: {run.get('committedTransactions')}, lost: "
        f"{run.get('lostTransactions')} (allowed {snap.max_lost})",
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
    if load:
        lines += ["", "## Load", "", "```json", json.dumps(load, indent=1, sort_keys=True),
                  "```"]
    return {"report.json": json.dumps(body, indent=1, sort_keys=True, default=str),
            "report.md": "\n".join(lines) + "\n"}
