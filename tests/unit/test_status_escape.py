"""`ringkeeper status` prints user-written strings as one inert line each."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.cli import status_view

HOSTILE = "朝晖\x1b[2J\x1b[31mPWNED\nzhaohui  postgresql 17  3/3  zhaohui-0  Ready\u202e\x9b1m\\x1b"


def _campus(display: Any, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "lis", "name": "zhaohui"},
            "spec": {"displayName": display, "engine": "postgresql", "version": "17",
                     "instances": 3}, "status": status}


def test_campus_display_name_is_escaped() -> None:
    text = status_view.campuses([_campus(HOSTILE, phase="Ready\r\nFAKE")])
    assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
    assert "\r" not in text
    assert len(text.splitlines()) == 2, "one header and one row, whatever the spec says"
    assert "\\x1b[2J" in text and "\\n" in text and "\\u202e" in text
    assert "\\\\x1b" in text, "a literal backslash is doubled so it cannot pose as an escape"
    assert "朝晖" in text, "printable unicode is kept"


def test_ring_links_and_seeding_are_escaped() -> None:
    ring = {"metadata": {"namespace": "lis", "name": "r\x1b]0;title\x07"},
            "spec": {"topology": "ring", "members": [{}, {}]},
            "status": {"links": [{"from": "a\nb", "to": "c", "state": "Streaming\x1b[0m"}],
                       "seeding": [{"member": "m\x1b[1A", "percent": "x\n"}]}}
    text = status_view.rings([ring])
    assert "\x1b" not in text and "\x07" not in text
    assert "seeding m\\x1b[1A" in text and "(x\\n%)" in text


@pytest.mark.parametrize("render,obj", [
    (status_view.satellites, {"metadata": {"name": "s\n"}, "spec": {"parentRef": {"name": "\x00"}},
                              "status": {"phase": "\x1b"}}),
    (status_view.drills, {"metadata": {"name": "d"}, "spec": {"target": {"kind": "\n",
                                                                        "name": "\x1b"},
                                                            "scenario": "\t"}}),
])
def test_other_tables_escape(render: Any, obj: dict[str, Any]) -> None:
    text = render([obj])
    assert len(text.splitlines()) == 2
    assert not any(ch in text for ch in "\x00\x1b\t")


@given(st.text())
def test_safe_is_one_printable_line(text: str) -> None:
    out = status_view.safe(text)
    assert out.isprintable()
    if text.isprintable() and "\\" not in text:
        assert out == text
