"""The satellite rows of `ringkeeper status` (issue 17, Surfaces): parent, connected,
backlog on both sides, phase, last sync; every value from a status is escaped."""

from __future__ import annotations

from typing import Any

from ringkeeper.cli.status_view import satellites


def sat(name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "lis", "name": name},
            "spec": {"parentRef": {"name": "fuyang"}}, "status": status}


def test_a_row_per_satellite_with_its_sync_figures() -> None:
    text = satellites([
        sat("xindeng", {"connected": False, "backlogRows": 1200, "backlogBytes": 3 * 2**20,
                        "phase": "Offline", "lastSyncAt": "2026-12-01T10:00:00Z",
                        "conditions": [{"type": "Ready", "reason": "Offline"}]}),
        sat("baihe", {"connected": True, "backlogRows": 0, "backlogBytes": 512,
                      "phase": "Online", "lastSyncAt": "2026-12-01T10:05:00Z"}),
    ])
    header, first, second = text.splitlines()
    assert header.split("  ")[0] == "NAMESPACE" and "BACKLOG ROWS" in header
    assert "LAST SYNC" in header and header.split()[-1] == "READY"
    assert first.split() == ["lis", "xindeng", "fuyang", "False", "1200", "3.0", "MiB",
                             "Offline", "2026-12-01T10:00:00Z", "Offline"]
    assert second.split() == ["lis", "baihe", "fuyang", "True", "0", "512", "B", "Online",
                              "2026-12-01T10:05:00Z", "-"]


def test_a_satellite_without_sync_figures_shows_dashes() -> None:
    _, line = satellites([sat("s", {"phase": "Initializing"})]).splitlines()
    assert line.split() == ["lis", "s", "fuyang", "-", "-", "-", "Initializing", "-", "-"]


def test_every_value_is_escaped() -> None:
    text = satellites([sat("s", {"connected": "\x1b[2J", "backlogRows": "1\n2",
                                 "backlogBytes": "\u202e9", "phase": "Online\r",
                                 "lastSyncAt": "\x1b]0;x\x07"})])
    assert len(text.splitlines()) == 2
    assert not any(ch in text for ch in "\x1b\r\x07\u202e")
    assert "\\x1b[2J" in text and "1\\n2" in text and "\\u202e9" in text
