"""The demo's satellite check (ringkeeper_devcluster.satdemo.problems): from the ledgers of
acknowledged commits at the satellite and at the ring, and the rows each side holds, it
names every satellite commit missing or stale at a ring member, every ring row inside the
filter missing or stale at the satellite, and every ring row outside it found there; and
the filter it checks with is read from the Satellite's spec or refused."""

from __future__ import annotations

import copy

import pytest

from ringkeeper_devcluster.satdemo import Row, inside_values, problems

INSIDE = frozenset({"fuyang", "xindeng"})
SAT_LEDGER: dict[int, Row] = {70_000_000: ("xindeng", "collected"),
                              70_000_001: ("xindeng", "xindeng-4")}
RING_LEDGER: dict[int, Row] = {50_000_000: ("fuyang", "collected"),  # inside
                               50_000_001: ("zhaohui", "fuyang-7"),  # moved out
                               60_000_000: ("zhaohui", "collected")}  # outside


def _found() -> dict[str, dict[int, Row]]:
    everything = {**SAT_LEDGER, **RING_LEDGER}
    return {"fuyang": dict(everything), "zhaohui": dict(everything),
            "xindeng": {**SAT_LEDGER, 50_000_000: ("fuyang", "collected")}}


def test_all_where_it_belongs() -> None:
    assert problems(RING_LEDGER, SAT_LEDGER, _found(), "xindeng", INSIDE) == {
        "lost": [], "misplaced": []}


def test_a_satellite_commit_dropped_at_one_member_is_lost() -> None:
    found = _found()
    del found["zhaohui"][70_000_001]
    assert problems(RING_LEDGER, SAT_LEDGER, found, "xindeng", INSIDE)["lost"] == [
        "zhaohui: satellite id 70000001 is None, acked ('xindeng', 'xindeng-4')"]


def test_a_stale_value_is_lost() -> None:
    found = _found()
    found["fuyang"][70_000_001] = ("xindeng", "collected")  # the update never arrived
    found["xindeng"][50_000_000] = ("fuyang", "old")
    got = problems(RING_LEDGER, SAT_LEDGER, found, "xindeng", INSIDE)
    assert len(got["lost"]) == 2 and not got["misplaced"], got


def test_a_ring_row_inside_the_filter_missing_at_the_satellite() -> None:
    found = _found()
    del found["xindeng"][50_000_000]
    assert problems(RING_LEDGER, SAT_LEDGER, found, "xindeng", INSIDE)["lost"] == [
        "xindeng: ring id 50000000 is None, acked ('fuyang', 'collected')"]


def test_a_row_moved_out_of_the_filter_still_at_the_satellite_is_misplaced() -> None:
    found = _found()
    found["xindeng"][50_000_001] = ("fuyang", "collected")  # the move never arrived
    got = problems(RING_LEDGER, SAT_LEDGER, found, "xindeng", INSIDE)
    assert got["lost"] == [] and len(got["misplaced"]) == 1, got


def test_the_satellites_own_row_missing_there() -> None:
    found = _found()
    del found["xindeng"][70_000_000]
    assert problems(RING_LEDGER, SAT_LEDGER, found, "xindeng", INSIDE)["lost"] == [
        "xindeng: own id 70000000 is None, acked ('xindeng', 'collected')"]


SPEC = {"spec": {"tables": [{"name": "lis.samples", "filter": {"all": [
    {"column": "campus", "op": "In", "values": ["fuyang", "xindeng"]}]}}]}}


def test_inside_values_from_the_spec() -> None:
    assert inside_values(SPEC) == INSIDE


@pytest.mark.parametrize("spoil", [
    lambda s: s["spec"]["tables"][0].update(name="lis.results"),
    lambda s: s["spec"]["tables"][0].pop("filter"),
    lambda s: s["spec"]["tables"][0]["filter"]["all"][0].update(op="NotIn"),
    lambda s: s["spec"]["tables"][0]["filter"]["all"][0].update(column="site"),
])
def test_a_filter_the_check_cannot_read_is_refused(spoil: object) -> None:
    spec = copy.deepcopy(SPEC)
    spoil(spec)  # type: ignore[operator]
    with pytest.raises(SystemExit, match="filtered by one term"):
        inside_values(spec)
