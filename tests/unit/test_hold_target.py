"""core.retention.hold_target: how far a member's hold slot may move without decoding."""

from __future__ import annotations

import pytest

from ringkeeper.core.retention import OriginSample, hold_target

OWED = frozenset({"a", "b", "c"})


def target(progress: dict[str, dict[str, int]], samples: list[OriginSample] | None = None,
           outbound: dict[str, int] | None = None, now: int = 1000,
           holders: tuple[str, ...] = ("b", "c")) -> int | None:
    return hold_target(member="a", holders=holders, progress=progress, samples=samples or [],
                       now_lsn=now, outbound=outbound or {}, owed=OWED)


def test_only_local_writes_every_holder_has() -> None:
    # b has a's writes up to 700, c up to 400: the slot may pass 400, not 700.
    assert target({"b": {"a": 700}, "c": {"a": 400}}) == 400


def test_nothing_held_yet() -> None:
    assert target({"b": {}, "c": {}}) is None


def test_quiet_member_moves_on_with_its_readers_position() -> None:
    # a wrote last at 300 and everyone has it; since then a only forwarded. Its link to b
    # confirmed 900, so nothing a wrote lies between 300 and 900.
    progress = {"b": {"a": 300}, "c": {"a": 300}}
    assert target(progress, outbound={"b": 900}) == 900
    # c lags behind b on a's writes: b's position says nothing about c.
    assert target({"b": {"a": 300}, "c": {"a": 200}}, outbound={"b": 900}) == 200


def test_forwarded_changes_hold_until_every_other_member_has_them() -> None:
    # a applied c's changes: up to c's 50 ending at 500 here, up to c's 80 at 800.
    samples = [OriginSample("c", 500, 50), OriginSample("c", 800, 80)]
    progress = {"b": {"a": 1000, "c": 50}, "c": {"a": 1000}}
    # b has c's 50, not 80: the slot may pass 500 (c's 50 ended there), not beyond.
    assert target(progress, samples) == 500
    progress["b"]["c"] = 80
    assert target(progress, samples) == 1000  # everything: newest sample is held too
    progress["b"]["c"] = 49
    assert target(progress, samples) is None


def test_the_origin_itself_need_not_hold_its_changes() -> None:
    samples = [OriginSample("c", 500, 50)]
    assert target({"b": {"a": 1000, "c": 50}, "c": {"a": 1000}}, samples) == 1000


def test_not_owed_origins_never_hold_back() -> None:
    samples = [OriginSample("_seed", 900, 10**9), OriginSample("a", 900, 10**9)]
    assert target({"b": {"a": 1000}, "c": {"a": 1000}}, samples) == 1000


def test_never_beyond_now() -> None:
    assert target({"b": {"a": 5000}, "c": {"a": 5000}}, now=1000) == 1000


@pytest.mark.parametrize("holders", [(), ("b",)])
def test_fewer_holders(holders: tuple[str, ...]) -> None:
    got = target({"b": {"a": 600}, "c": {"a": 100}}, holders=holders)
    assert got == (1000 if not holders else 600)


def test_behind_names_the_holders_that_pin_the_slot() -> None:
    from ringkeeper.core.retention import behind
    progress = {"b": {"a": 700}, "c": {"a": 100}}

    def reach(who: list[str]) -> int | None:
        return target(progress, holders=tuple(who))
    # The slot sits at 100: c alone keeps it there, b would let it move to 700.
    assert behind(["b", "c"], 100, reach) == ["c"]
    assert behind(["b", "c"], 700, reach) == ["b", "c"]
