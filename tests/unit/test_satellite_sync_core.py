"""Satellite sync, the pure parts: ring config parsing, routing with satellite origins,
the row filter on decoded values, what a change becomes for a satellite, and the spool's
encoding (issue 17, step 2)."""

from __future__ import annotations

from typing import Any

import pytest

from ringkeeper.api.v1alpha1.satellite import RowFilter
from ringkeeper.contracts.ringconfig import RingConfig
from ringkeeper.core import ringmember
from ringkeeper.core.ring import hops_to, links, path_of
from ringkeeper.core.satsync import UNKNOWN, DownAction, down_action, row_matches
from ringkeeper.sync.pgoutput import UNCHANGED, Column, Delete, Insert, Relation, Update
from ringkeeper.sync.satspool import decode, encode, for_satellite

MEMBERS = ["a", "b", "c"]
SATS = {"s": "a", "t": "a", "u": "c"}


# -- config --------------------------------------------------------------------------------
def config(satellites: Any) -> dict[str, Any]:
    ext = {"host": "h", "database": "d", "engine": "postgresql", "version": "17",
           "passwordSecret": {"name": "x", "key": "y"}, "tls": {"caSecret": {"name": "x"}}}
    return {"ring": "lis", "spec": {"members": [{"name": n, "priority": 100 + i,
                                                 "external": ext}
                                                for i, n in enumerate(MEMBERS)]},
            "members": {n: {"dsn": f"postgresql://{n}"} for n in MEMBERS},
            "satellites": satellites}


FLT = {"all": [{"column": "campus", "op": "In", "values": ["a", "s"]}]}


def test_config_parses_satellites() -> None:
    cfg = RingConfig.from_dict(config({"s": {
        "parent": "b", "dsn": "postgresql://s", "version": "18",
        "tables": [{"name": "lis.samples", "filter": FLT}, {"name": "lis.results"}]}}))
    (s,) = cfg.satellites
    assert (s.name, s.parent, s.dsn, s.version) == ("s", "b", "postgresql://s", "18")
    assert s.table_names == ("lis.samples", "lis.results")
    f = s.filters()
    assert f["lis.results"] is None and f["lis.samples"] is not None
    assert f["lis.samples"].all_of[0].values == ["a", "s"]
    assert cfg.satellite_parents() == {"s": "b"}
    assert cfg.origins == ["a", "b", "c", "s"]
    assert cfg.priorities()["s"] == cfg.priorities()["b"] == 101  # weighs as its parent
    assert cfg.satellites_of("b") == (s,) and cfg.satellites_of("a") == ()


def test_config_without_satellites() -> None:
    assert RingConfig.from_dict(config(None)).satellites == ()


@pytest.mark.parametrize(("sats", "says"), [
    ({"s": {"parent": "x", "tables": [{"name": "lis.samples"}]}}, "not a member"),
    ({"a": {"parent": "b", "tables": [{"name": "lis.samples"}]}}, "taken by a ring member"),
    ({"s": {"parent": "a", "tables": []}}, "no tables"),
    ({"s": {"parent": "a", "tables": [{"name": "nodot"}]}}, "invalid table"),
    ({"s": {"parent": "a", "tables": [{"name": "lis.samples", "filter": {"all": [
        {"column": "x; drop table y", "op": "Equals", "values": ["1"]}]}}]}}, "invalid table"),
    ({"s": {"parent": "a", "tables": [{"name": "lis.samples", "filter": {"all": [
        {"column": "campus", "op": "Like", "values": ["1"]}]}}]}}, "invalid table"),
    ({"s": {"parent": "a", "tables": [{"name": "lis.a"}, {"name": "lis.a"}]}}, "twice"),
    ({"s": "a"}, "must be an object"),
    (["s"], "must be an object"),
])
def test_config_refuses_bad_satellites(sats: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RingConfig.from_dict(config(sats))


# -- routing -------------------------------------------------------------------------------
def test_links_carry_satellite_origins_but_never_into_the_parent() -> None:
    by = {(lk.source, lk.target): lk for lk in links(MEMBERS, "ring", satellites=SATS)}
    assert by[("a", "b")].forwards_origins == frozenset({"a", "c", "s", "t", "u"})
    assert by[("b", "c")].forwards_origins == frozenset({"a", "b", "s", "t"})
    # Into a, the parent of s and t: neither comes back.
    assert by[("c", "a")].forwards_origins == frozenset({"b", "c", "u"})
    # Without satellites, as before.
    plain = {(lk.source, lk.target): lk for lk in links(MEMBERS, "ring")}
    assert plain[("a", "b")].forwards_origins == frozenset({"a", "c"})


def test_mesh_links_carry_the_parents_satellites() -> None:
    by = {(lk.source, lk.target): lk for lk in links(MEMBERS, "mesh", satellites=SATS)}
    assert by[("a", "b")].forwards_origins == frozenset({"a", "s", "t"})
    assert by[("c", "a")].forwards_origins == frozenset({"c", "u"})


@pytest.mark.parametrize(("origin", "topology", "path"), [
    ("s", "ring", ["a", "t", "b", "c", "u"]),
    ("u", "ring", ["c", "a", "s", "t", "b"]),
    ("a", "ring", ["s", "t", "b", "c", "u"]),
    ("b", "ring", ["c", "u", "a", "s", "t"]),
    ("s", "mesh", ["a", "t", "b", "c", "u"]),
    ("b", "mesh", ["a", "s", "t", "c", "u"]),
])
def test_path_of_reaches_everyone_but_the_origin_once(origin: str, topology: str,
                                                      path: list[str]) -> None:
    got = path_of(origin, MEMBERS, topology, satellites=SATS)
    assert got == path
    assert sorted(got) == sorted((set(MEMBERS) | set(SATS)) - {origin})


def test_path_of_around_a_bypassed_member() -> None:
    assert path_of("s", MEMBERS, "ring", frozenset({"b"}), SATS) == ["a", "t", "c", "u"]


@pytest.mark.parametrize(("origin", "target", "hops"), [
    ("s", "c", [("s", "a"), ("a", "b"), ("b", "c")]),
    ("b", "s", [("b", "c"), ("c", "a"), ("a", "s")]),
    ("s", "t", [("s", "a"), ("a", "t")]),
    ("s", "u", [("s", "a"), ("a", "b"), ("b", "c"), ("c", "u")]),
    ("a", "b", [("a", "b")]),
])
def test_hops_to(origin: str, target: str, hops: list[tuple[str, str]]) -> None:
    assert hops_to(origin, target, MEMBERS, "ring", SATS) == hops


def test_routing_refuses_a_satellite_without_a_member_parent() -> None:
    with pytest.raises(ValueError, match="parent"):
        links(MEMBERS, "ring", satellites={"s": "x"})
    with pytest.raises(ValueError, match="member's name"):
        links(MEMBERS, "ring", satellites={"a": "b"})


def test_inbound_of_the_parent_drops_its_satellites() -> None:
    inb = ringmember.inbound("lis", "a", MEMBERS, "ring", frozenset(), SATS)
    assert inb["c->a"].carries == frozenset({"b", "c", "u"})
    # A transaction of s's read on the link into a is not brought (it is a's already).
    assert ringmember.route("lis", "c", 10, ("rk_lis_s", 5), inb["c->a"].carries, "a") is None
    inb_b = ringmember.inbound("lis", "b", MEMBERS, "ring", frozenset(), SATS)
    assert ringmember.route("lis", "a", 10, ("rk_lis_s", 5), inb_b["a->b"].carries,
                            "b") == ("s", 5)


# -- the filter on decoded values --------------------------------------------------------------
def rf(*terms: dict[str, Any]) -> RowFilter:
    return RowFilter.model_validate({"all": list(terms)})


@pytest.mark.parametrize(("terms", "row", "types", "want"), [
    ([{"column": "c", "op": "Equals", "values": ["x"]}], {"c": "x"}, {}, True),
    ([{"column": "c", "op": "Equals", "values": ["x"]}], {"c": "y"}, {}, False),
    ([{"column": "c", "op": "Equals", "values": ["x"]}], {"c": None}, {}, False),
    ([{"column": "c", "op": "NotEquals", "values": ["x"]}], {"c": None}, {}, False),
    ([{"column": "c", "op": "NotEquals", "values": ["x"]}], {"c": "y"}, {}, True),
    ([{"column": "c", "op": "In", "values": ["x", "y"]}], {"c": "y"}, {}, True),
    ([{"column": "c", "op": "NotIn", "values": ["x", "y"]}], {"c": "y"}, {}, False),
    ([{"column": "c", "op": "NotIn", "values": ["x", "y"]}], {"c": None}, {}, False),
    ([{"column": "c", "op": "IsNull"}], {"c": None}, {}, True),
    ([{"column": "c", "op": "IsNotNull"}], {"c": None}, {}, False),
    ([{"column": "c", "op": "IsNotNull"}], {"c": ""}, {}, True),
    # Numbers compare as numbers, booleans by meaning, text exactly.
    ([{"column": "n", "op": "Equals", "values": ["7"]}], {"n": "007"}, {"n": 23}, True),
    ([{"column": "n", "op": "Equals", "values": ["1.50"]}], {"n": "1.5"}, {"n": 1700}, True),
    ([{"column": "n", "op": "Equals", "values": ["abc"]}], {"n": "1"}, {"n": 20}, False),
    ([{"column": "n", "op": "Equals", "values": ["007"]}], {"n": "7"}, {"n": 25}, False),
    ([{"column": "f", "op": "Equals", "values": ["true"]}], {"f": "t"}, {"f": 16}, True),
    ([{"column": "f", "op": "Equals", "values": ["false"]}], {"f": "t"}, {"f": 16}, False),
    # Every term must hold; an unknown value is unknown unless a known term excludes.
    ([{"column": "c", "op": "Equals", "values": ["x"]},
      {"column": "d", "op": "Equals", "values": ["y"]}], {"c": "x", "d": "z"}, {}, False),
    ([{"column": "c", "op": "Equals", "values": ["x"]}], {"c": UNKNOWN}, {}, None),
    ([{"column": "c", "op": "Equals", "values": ["x"]},
      {"column": "d", "op": "Equals", "values": ["y"]}], {"c": UNKNOWN, "d": "z"}, {}, False),
    ([{"column": "c", "op": "Equals", "values": ["x"]}], {}, {}, None),
])
def test_row_matches(terms: list[dict[str, Any]], row: dict[str, Any], types: dict[str, int],
                     want: bool | None) -> None:
    assert row_matches(rf(*terms), row, types) is want


def test_no_filter_keeps_every_row() -> None:
    assert row_matches(None, {"c": None}) is True


@pytest.mark.parametrize(("op", "old", "new", "want"), [
    ("insert", None, True, DownAction.SEND),
    ("insert", None, False, DownAction.AS_DELETE),
    ("insert", None, None, DownAction.SEND),
    ("update", True, True, DownAction.SEND),
    ("update", True, False, DownAction.AS_DELETE),
    ("update", False, True, DownAction.AS_INSERT),
    # Out and out: still a delete (the satellite may hold its own newer or older version).
    ("update", False, False, DownAction.AS_DELETE),
    ("update", None, True, DownAction.SEND),
    ("update", None, False, DownAction.AS_DELETE),
    ("delete", False, None, DownAction.SEND),
    ("delete", True, None, DownAction.SEND),
])
def test_down_action(op: str, old: bool | None, new: bool | None, want: DownAction) -> None:
    assert down_action(op, old, new) is want


def test_down_action_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError):
        down_action("truncate", None, None)


# -- what the spool writer keeps, and its encoding --------------------------------------------
REL = Relation(16400, "lis", "samples", "f", (Column("id", 20, -1, True),
                                               Column("campus", 25, -1, False),
                                               Column("note", 25, -1, False)))
OTHER = Relation(16500, "lis", "other", "d", (Column("id", 20, -1, True),))


def sat_info() -> Any:
    cfg = RingConfig.from_dict(config({"s": {"parent": "a", "tables": [
        {"name": "lis.samples", "filter": FLT}]}}))
    return cfg.satellites[0]


def test_for_satellite() -> None:
    s = sat_info()
    ins_in = Insert(REL.oid, ("1", "a", "n"))
    assert for_satellite(s, REL, ins_in) is ins_in
    out = for_satellite(s, REL, Insert(REL.oid, ("2", "b", "n")))
    assert isinstance(out, Delete) and out.old == ("2", None, None) and out.old_kind == "K"
    # Leaves the filter: a delete of the key.
    left = for_satellite(s, REL, Update(REL.oid, ("3", "a", "n"), "O", ("3", "b", "n")))
    assert isinstance(left, Delete) and left.old == ("3", None, None)
    # Enters it: an insert of the whole new row (unchanged values from the old row).
    came = for_satellite(s, REL, Update(REL.oid, ("4", "b", "x"), "O", ("4", "s", UNCHANGED)))
    assert isinstance(came, Insert) and came.new == ("4", "s", "x")
    stay = Update(REL.oid, ("5", "a", "x"), "O", ("5", "a", "y"))
    assert for_satellite(s, REL, stay) is stay
    dele = Delete(REL.oid, ("6", "b", "x"), "O")
    assert for_satellite(s, REL, dele) is dele
    assert for_satellite(s, OTHER, Insert(OTHER.oid, ("1",))) is None


def test_spool_encoding_round_trips() -> None:
    changes: list[Insert | Update | Delete] = [Insert(REL.oid, ("1", "a", None)),
               Update(REL.oid, ("2", "a", "o"), "O", ("2", "s", UNCHANGED)),
               Update(REL.oid, None, None, ("3", "a", "x")),
               Delete(REL.oid, ("4", None, None), "K")]
    rels, back = decode(encode({REL.oid: REL, OTHER.oid: OTHER}, changes))
    assert rels == [REL]  # only the relations the changes use
    assert back == changes


# -- what the operator writes, read back by the sidecar -----------------------------------------
def test_operator_config_with_satellites_parses() -> None:
    from ringkeeper.core.ringplan import satellite_entries, sync_config

    ext = config(None)["spec"]["members"][1]["external"]
    spec = {"members": [{"name": "north", "campusRef": {"name": "zhaohui"}},
                        {"name": "south", "campusRef": {"name": "fuyang"}},
                        {"name": "ext", "external": ext}]}
    sats = [
        {"metadata": {"name": "xindeng"}, "spec": {
            "parentRef": {"name": "fuyang"}, "version": "17",
            "tables": [{"name": "lis.samples", "filter": FLT}]}},
        {"metadata": {"name": "elsewhere"}, "spec": {  # parent in no member of this ring
            "parentRef": {"name": "other"}, "version": "17",
            "tables": [{"name": "lis.samples"}]}},
        {"metadata": {"name": "north"}, "spec": {  # a member's name: left out
            "parentRef": {"name": "fuyang"}, "version": "17",
            "tables": [{"name": "lis.samples"}]}},
    ]
    entries = satellite_entries(spec, sats)
    assert list(entries) == ["xindeng"]
    assert entries["xindeng"]["parent"] == "south"
    entries["xindeng"]["dsn"] = "postgresql://x"
    endpoints = {"north": {"dsn": "postgresql://n"}, "south": {"dsn": "postgresql://s"},
                 "ext": {"dsn": "postgresql://e"}}
    cfg = RingConfig.from_dict(sync_config("lis", spec, endpoints, entries))
    (s,) = cfg.satellites
    assert (s.name, s.parent, s.dsn, s.version) == ("xindeng", "south", "postgresql://x", "17")
    assert s.filters()["lis.samples"] is not None
    assert "satellites" not in sync_config("lis", spec, endpoints, {})


@pytest.mark.parametrize(("entry", "ready", "want"), [
    (None, True, {}),
    ({"connected": True, "parentBacklogRows": 0, "parentBacklogBytes": 0,
      "satelliteBacklogBytes": 56, "lastContact": "2026-12-01T10:00:00+00:00",
      "up": {"state": "Streaming"}, "down": {"state": "Streaming"}}, True,
     {"connected": True, "backlogRows": 0, "backlogBytes": 56,
      "lastSyncAt": "2026-12-01T10:00:00+00:00", "phase": "Online"}),
    # The same with the spool link down (it never started on a cluster once): not Online.
    ({"connected": True, "parentBacklogRows": 0, "satelliteBacklogBytes": 56,
      "up": {"state": "Streaming"}, "down": {"state": "Down"}}, True,
     {"connected": True, "backlogRows": 0, "backlogBytes": 56, "phase": "Syncing"}),
    ({"connected": True, "parentBacklogRows": 12, "parentBacklogBytes": 900,
      "satelliteBacklogBytes": None}, True,
     {"connected": True, "backlogRows": 12, "backlogBytes": 900, "phase": "Syncing"}),
    ({"connected": True, "parentBacklogRows": 0, "satelliteBacklogBytes": 5 << 20}, True,
     {"connected": True, "backlogRows": 0, "backlogBytes": 5 << 20, "phase": "Syncing"}),
    ({"connected": False, "parentBacklogRows": 4173, "parentBacklogBytes": 10}, True,
     {"connected": False, "backlogRows": 4173, "backlogBytes": 10, "phase": "Offline"}),
    ({"connected": False, "parentBacklogRows": True}, False,
     {"connected": False, "backlogRows": 0, "backlogBytes": 0}),
])
def test_sync_status(entry: dict[str, Any] | None, ready: bool, want: dict[str, Any]) -> None:
    from ringkeeper.core.satsync import sync_status

    got = sync_status(entry, ready=ready)
    # The backlog on each side is echoed as reported (test_satellite_copy_backlog.py).
    side = {"parentBacklogRows", "parentBacklogBytes", "satelliteBacklogBytes"}
    assert {k: v for k, v in got.items() if k not in side} == want
    assert all(got[k] == (entry or {}).get(k) for k in side & set(got))
