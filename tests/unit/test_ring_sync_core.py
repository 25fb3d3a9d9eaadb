"""Pure parts of the ring: conflict decisions, slot retention, names, config, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ringkeeper.api.v1alpha1.ring import ConflictPolicy, Topology
from ringkeeper.contracts.conninfo import Target, build_dsn
from ringkeeper.contracts.ringconfig import RingConfig
from ringkeeper.core import names
from ringkeeper.core.conflicts import Action, Kind, Op, Version, decide
from ringkeeper.core.ringplan import primary_address, ring_status, sync_config

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def v(origin: str, sec: int, prio: int = 100, deleted: bool = False) -> Version:
    return Version(origin, T0 + timedelta(seconds=sec), prio, deleted)


@pytest.mark.parametrize(
    ("op", "incoming", "row", "tomb", "action", "kind"),
    [
        pytest.param(Op.INSERT, v("a", 5), None, None, Action.INSERT, None, id="insert-new"),
        pytest.param(Op.INSERT, v("a", 5), v("b", 1), None, Action.UPDATE, Kind.INSERT_EXISTS,
                     id="insert-exists-newer-wins"),
        pytest.param(Op.INSERT, v("a", 1), v("b", 5), None, Action.SKIP, Kind.INSERT_EXISTS,
                     id="insert-exists-older-loses"),
        pytest.param(Op.UPDATE, v("a", 5), v("a", 1), None, Action.UPDATE, None,
                     id="same-origin-sequence"),
        pytest.param(Op.UPDATE, v("a", 5), v("b", 1), None, Action.UPDATE, None,
                     id="older-foreign-row-overwritten"),
        pytest.param(Op.UPDATE, v("a", 1), v("b", 5), None, Action.SKIP, Kind.UPDATE_UPDATE,
                     id="concurrent-update-loses"),
        pytest.param(Op.UPDATE, v("a", 5), v("b", 5, prio=50), None, Action.UPDATE, None,
                     id="tie-higher-priority-wins"),
        pytest.param(Op.UPDATE, v("a", 5, prio=50), v("b", 5), None, Action.SKIP,
                     Kind.UPDATE_UPDATE, id="tie-lower-priority-loses"),
        pytest.param(Op.UPDATE, v("a", 5), None, None, Action.INSERT, Kind.UPDATE_MISSING,
                     id="update-missing-becomes-row"),
        pytest.param(Op.UPDATE, v("a", 1), None, v("b", 5, deleted=True), Action.SKIP,
                     Kind.UPDATE_DELETED, id="tombstone-newer-keeps-deleted"),
        pytest.param(Op.UPDATE, v("a", 9), None, v("b", 5, deleted=True), Action.INSERT,
                     Kind.UPDATE_MISSING, id="update-newer-than-tombstone"),
        pytest.param(Op.DELETE, v("a", 5), None, None, Action.TOMBSTONE, Kind.DELETE_MISSING,
                     id="delete-missing-tombstone"),
        pytest.param(Op.DELETE, v("a", 1), v("b", 5), None, Action.SKIP, Kind.UPDATE_UPDATE,
                     id="delete-loses-to-newer-update"),
        pytest.param(Op.DELETE, v("a", 5), v("b", 1), None, Action.DELETE, None,
                     id="delete-newer-removes"),
        pytest.param(Op.INSERT, v("a", 1), None, v("b", 5, deleted=True), Action.SKIP,
                     Kind.UPDATE_DELETED, id="insert-older-than-tombstone"),
    ],
)
def test_decide(op: Op, incoming: Version, row: Version | None, tomb: Version | None,
                action: Action, kind: Kind | None) -> None:
    d = decide(op, incoming, row, tomb, "lastWriterWins")
    assert (d.action, d.conflict) == (action, kind)
    assert d.reason


def test_decide_incomplete_update_of_missing_row_waits_for_repair() -> None:
    d = decide(Op.UPDATE, v("a", 5), None, None, "lastWriterWins", complete=False)
    assert d.action == Action.SKIP and d.conflict == Kind.UPDATE_MISSING
    assert "repair" in d.reason


def test_decide_is_order_independent() -> None:
    """Two members see the same pair of writes in opposite orders and keep the same one."""
    x, y = v("a", 3), v("b", 3, prio=200)
    at_a = decide(Op.UPDATE, y, x, None, "lastWriterWins")  # a holds x, receives y
    at_b = decide(Op.UPDATE, x, y, None, "lastWriterWins")  # b holds y, receives x
    assert at_a.action == Action.UPDATE and at_b.action == Action.SKIP


def test_campus_priority_policy_ignores_time() -> None:
    d = decide(Op.UPDATE, v("a", 1, prio=900), v("b", 100, prio=100), None, "campusPriority")
    assert d.action == Action.UPDATE


def test_names_fit_postgres_limits() -> None:
    long = "x" * 63
    slot = names.link_slot_name("r" * 40, long, long)
    assert len(slot) <= 63 and slot.isascii() and slot == slot.lower()
    assert names.member_of_origin("lis", names.origin_name("lis", "a-b")) == "a-b"
    assert names.member_of_origin("lis", "pg_17") is None
    assert names.member_of_origin("lis", names.seed_origin("lis")) == names.SEED


SPEC = {"members": [{"name": "a", "priority": 300, "campusRef": {"name": "ca"}},
                    {"name": "b", "campusRef": {"name": "cb"}},
                    {"name": "c", "campusRef": {"name": "cc"}}],
        "topology": "ring", "lagAlertSeconds": 10}


def test_sync_config_round_trips_through_ring_config() -> None:
    cfg = RingConfig.from_dict(sync_config("lis", SPEC, {
        "a": {"dsn": "postgresql://x@10.0.0.1/app", "engine": "postgresql", "version": "17"},
        "b": {"dsn": None}}))
    assert cfg.names == ["a", "b", "c"] and cfg.seed == ("b", "c")
    assert cfg.member("a").priority == 300 and cfg.member("b").dsn is None
    with pytest.raises(KeyError, match="not a member"):
        cfg.member("zz")
    # Typed, not the API models' plain strings: `ringkeeper verify --repair` reads
    # cfg.policy.value (it raised AttributeError on a str).
    assert type(cfg.policy) is ConflictPolicy and type(cfg.topology) is Topology
    assert cfg.policy.value == "lastWriterWins"


def test_ring_config_rejects_bad_spec_clearly() -> None:
    with pytest.raises(ValueError, match="bypassAfterSeconds"):
        RingConfig.from_dict({"ring": "r", "spec": {**SPEC, "healing": {
            "bypassAfterSeconds": 1}}, "members": {}})


def test_dsn_quotes_passwords() -> None:
    assert build_dsn(Target("10.1.0.5", 5432, "app", "postgres", "p@ss/w:rd")) == \
        "postgresql://postgres:p%40ss%2Fw%3Ard@10.1.0.5:5432/app?sslmode=prefer"


def test_primary_address() -> None:
    campus = {"status": {"currentPrimary": "c-1", "instances": [
        {"name": "c-0", "podIP": "10.0.0.1"}, {"name": "c-1", "podIP": "10.0.0.2"}]}}
    assert primary_address(campus) == "10.0.0.2"
    assert primary_address({"status": {"currentPrimary": "c-9"}}) is None


def _link(src: str, dst: str, state: str = "Streaming", lag: float = 0.1,
          **extra: object) -> dict[str, object]:
    return {"from": src, "to": dst, "state": state, "lagSeconds": lag, "lagBytes": 10,
            "rowsPerSecond": 5.0, "conflicts": 1, **extra}


def test_ring_status_all_streaming_is_ready() -> None:
    reports = {"a": {"links": [_link("c", "a")]}, "b": {"links": [_link("a", "b")]},
               "c": {"links": [_link("b", "c", lag=0.4)]}}
    st = ring_status(SPEC, reports, 3, T0)
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Ready": "True", "Degraded": "False", "Healing": "False",
                     "TablesParked": "False", "Seeding": "False"}
    assert st["healthyLinks"] == "3/3" and st["maxLagSeconds"] == 0.4
    assert st["conflictsTotal"] == 3 and [lk["to"] for lk in st["links"]] == ["a", "b", "c"]


def test_ring_status_member_down_heals_and_degrades() -> None:
    reports = {"a": {"links": [_link("c", "a")]}, "b": None,
               "c": {"links": [_link("a", "c", "CatchingUp", lag=45, bypassing=["b"])]}}
    st = ring_status(SPEC, reports, 3, T0)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Healing"]["status"] == "True" and "bypassing b" in conds["Healing"]["message"]
    assert conds["Degraded"]["status"] == "True"
    assert "sidecar of b unreachable" in conds["Degraded"]["message"]
    assert "above lagAlertSeconds" in conds["Degraded"]["message"]
    assert conds["Ready"]["status"] == "False"


def test_ring_status_names_a_table_parked_by_drift_and_stays_ready() -> None:
    why = "table lis.results at member b lacks column(s) lab that upstream sends"
    reports = {"a": {"links": [_link("c", "a")]},
               "b": {"links": [_link("a", "b", parked=[{"table": "lis.results",
                                                         "reason": why}])]},
               "c": {"links": [_link("b", "c")]}}
    st = ring_status(SPEC, reports, 3, T0)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["TablesParked"]["status"] == "True"
    assert conds["TablesParked"]["reason"] == "DdlDrift"
    assert conds["TablesParked"]["message"].startswith(f"lis.results at b: {why}")
    assert "run the same DDL there" in conds["TablesParked"]["message"]
    assert conds["Degraded"]["status"] == "True"
    assert "1 table(s) parked by DDL drift" in conds["Degraded"]["message"]
    assert conds["Ready"]["status"] == "True"  # every link still carries changes
    assert "parked" not in st["links"][1]  # status.links keeps the CRD's shape


def test_ring_status_reports_seeding_progress() -> None:
    reports = {"a": {"links": []}, "b": {"links": [], "seeding": {
        "state": "Copying", "tablesDone": 1, "tablesTotal": 2, "rowsCopied": 50,
        "rowsTotal": 200, "percent": 25.0}}, "c": {"links": []}}
    st = ring_status(SPEC, reports, 1, T0)
    assert st["seeding"] == [{"member": "b", "tablesDone": 1, "tablesTotal": 2,
                              "rowsCopied": 50, "rowsTotal": 200, "percent": 25.0}]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Seeding"] == "True"
