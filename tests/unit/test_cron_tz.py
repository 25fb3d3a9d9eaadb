"""Schedules read on a time zone's wall clock (base.cron.next_fire with tz)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ringkeeper.api.v1alpha1.drill import DrillSpec
from ringkeeper.base.cron import next_fire, time_zone_problem


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_default_is_utc() -> None:
    assert next_fire("0 3 * * 0", utc(2026, 12, 1)) == utc(2026, 12, 6, 3)
    assert next_fire("0 3 * * 0", utc(2026, 12, 1), "UTC") == utc(2026, 12, 6, 3)


def test_shanghai_has_no_dst() -> None:
    # Sunday 03:00 in Shanghai (UTC+8) is Saturday 19:00 UTC, all year.
    assert next_fire("0 3 * * 0", utc(2026, 12, 1), "Asia/Shanghai") == utc(2026, 12, 5, 19)
    assert next_fire("0 3 * * 0", utc(2026, 7, 1), "Asia/Shanghai") == utc(2026, 7, 4, 19)
    # strictly after: the firing minute itself does not fire again
    assert next_fire("0 3 * * 0", utc(2026, 12, 5, 19), "Asia/Shanghai") == utc(2026, 12, 12, 19)


def test_new_york_offsets_follow_dst() -> None:
    assert next_fire("0 9 * * *", utc(2026, 1, 10), "America/New_York") == utc(2026, 1, 10, 14)
    assert next_fire("0 9 * * *", utc(2026, 7, 10), "America/New_York") == utc(2026, 7, 10, 13)


def test_skipped_wall_time_does_not_fire() -> None:
    # 2026-03-08 02:30 does not exist in New York (02:00 -> 03:00).
    assert next_fire("30 2 * * *", utc(2026, 3, 8), "America/New_York") == utc(2026, 3, 9, 6, 30)


def test_repeated_wall_time_fires_once() -> None:
    # 2026-11-01 01:30 happens twice in New York: fire at the first (EDT, 05:30 UTC) only.
    first = next_fire("30 1 * * *", utc(2026, 11, 1, 4), "America/New_York")
    assert first == utc(2026, 11, 1, 5, 30)
    assert next_fire("30 1 * * *", first, "America/New_York") == utc(2026, 11, 2, 6, 30)


@pytest.mark.parametrize("name", ["Asia/Shangai", "../../etc/passwd", "Asia/Shanghai ",
                                  "", "Mars/Olympus"])
def test_bad_zones_are_refused(name: str) -> None:
    assert time_zone_problem(name) is not None
    with pytest.raises(ValueError):
        next_fire("0 3 * * *", utc(2026, 1, 1), name)


def test_admission_twin_refuses_unknown_zone() -> None:
    spec = {"target": {"kind": "Campus", "name": "zhaohui"}, "scenario": "primaryKill",
            "schedule": "0 3 * * 0"}
    DrillSpec.model_validate({**spec, "timeZone": "Asia/Shanghai"})
    with pytest.raises(Exception) as err:
        DrillSpec.model_validate({**spec, "timeZone": "Asia/Shangai"})
    assert "IANA" in str(err.value)
