"""core.election: which replica may be promoted so that no acknowledged commit is lost."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from ringkeeper.core.election import (
    Durability,
    ElectionReason,
    InstanceReport,
    SyncSnapshot,
    choose_candidate,
    format_lsn,
    parse_lsn,
    rank,
)

# -- builders ---------------------------------------------------------------------------

Lsn = int | str | None


def _lsn(value: Lsn) -> int | None:
    return parse_lsn(value) if isinstance(value, str) else value


def replica(name: str, received: Lsn = None, replayed: Lsn = None, *, reachable: bool = True,
            running: bool = True, in_recovery: bool = True, fenced: bool = False,
            receiver_active: bool = False, timeline: int | None = 1) -> InstanceReport:
    """A replica as its agent reported it after the WAL receivers were stopped."""
    return InstanceReport(name=name, reachable=reachable, server_running=running,
                          in_recovery=in_recovery, fenced=fenced, timeline=timeline,
                          received_lsn=_lsn(received), replayed_lsn=_lsn(replayed),
                          receiver_active=receiver_active)


def unreachable(name: str) -> InstanceReport:
    return InstanceReport(name=name, reachable=False, server_running=False)


def snapshot_any(n: int, standbys: Sequence[str], confirming: Sequence[str] = (),
                 primary_lsn: Lsn = None) -> SyncSnapshot:
    return SyncSnapshot(method="any", number=n, standbys=tuple(standbys),
                        confirming=tuple(confirming), primary_lsn=_lsn(primary_lsn))


def snapshot_first(n: int, standbys: Sequence[str], confirming: Sequence[str],
                   primary_lsn: Lsn = None) -> SyncSnapshot:
    return SyncSnapshot(method="first", number=n, standbys=tuple(standbys),
                        confirming=tuple(confirming), primary_lsn=_lsn(primary_lsn))


REQUIRED = Durability.REQUIRED
PREFERRED = Durability.PREFERRED


# -- parse_lsn / format_lsn -------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    pytest.param("0/0", 0, id="zero"),
    pytest.param("0/3000060", 0x3000060, id="low-word-only"),
    pytest.param("16/B374D848", (0x16 << 32) | 0xB374D848, id="pg-docs-example"),
    pytest.param("1/0", 1 << 32, id="high-word-only"),
    pytest.param("FFFFFFFF/FFFFFFFF", (1 << 64) - 1, id="maximum"),
])
def test_lsn_round_trip(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


def test_parse_lsn_accepts_lower_case_and_surrounding_space() -> None:
    assert parse_lsn(" 16/b374d848 ") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("a/b")) == "A/B"


@pytest.mark.parametrize("text", [
    pytest.param(None, id="none"),
    pytest.param("", id="empty"),
])
def test_parse_lsn_missing_is_none(text: str | None) -> None:
    assert parse_lsn(text) is None


def test_format_lsn_none_is_none() -> None:
    assert format_lsn(None) is None


@pytest.mark.parametrize("text", [
    pytest.param("garbage", id="word"),
    pytest.param("16", id="no-slash"),
    pytest.param("16/", id="no-low-word"),
    pytest.param("/B374D848", id="no-high-word"),
    pytest.param("G/0", id="not-hex"),
    pytest.param("1/2/3", id="two-slashes"),
    pytest.param("123456789/0", id="high-word-too-long"),
    pytest.param("0/123456789", id="low-word-too-long"),
    pytest.param("-1/0", id="negative"),
])
def test_parse_lsn_garbage_raises(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn(text)


# -- rank -------------------------------------------------------------------------------

def test_rank_full_order_of_a_mixed_list() -> None:
    reports = [
        unreachable("a-unreachable"),
        replica("b-fenced", received=900, replayed=900, fenced=True),
        replica("c-down", received=950, replayed=950, running=False),
        replica("d-behind", received=100, replayed=100),
        replica("e-ahead", received=500, replayed=400),
        replica("f-ahead-more-replayed", received=500, replayed=450),
        replica("g-tie", received=500, replayed=450),
        replica("h-no-lsn"),
        replica("i-fenced-and-down", received=999, fenced=True, running=False),
    ]
    assert [r.name for r in rank(reports)] == [
        "f-ahead-more-replayed",  # received 500, replayed 450, name f < g
        "g-tie",
        "e-ahead",  # received 500, replayed 400
        "d-behind",
        "h-no-lsn",
        "c-down",  # running beats not running, but down comes after every running replica
        "b-fenced",
        "i-fenced-and-down",
        "a-unreachable",
    ]


@pytest.mark.parametrize(("reports", "expected"), [
    pytest.param([unreachable("a"), replica("b", received=1)], ["b", "a"],
                 id="unreachable-last"),
    pytest.param([replica("a", received=9, fenced=True), replica("b", received=1)], ["b", "a"],
                 id="fenced-after-reachable"),
    pytest.param([replica("a", received=9, running=False), replica("b", received=1)],
                 ["b", "a"], id="not-running-after-running"),
    pytest.param([replica("a", received=1, replayed=9), replica("b", received=2, replayed=0)],
                 ["a", "b"], id="furthest-position-first"),
    pytest.param([replica("a", received=5, replayed=3), replica("b", received=None, replayed=5)],
                 ["a", "b"], id="equal-position-then-received"),
    pytest.param([replica("b", received=5, replayed=5), replica("a", received=5, replayed=5)],
                 ["a", "b"], id="name-breaks-ties"),
    pytest.param([replica("a", received=(2 << 32)), replica("b", received=(1 << 32) + 0xFFFF)],
                 ["a", "b"], id="high-word-dominates"),
])
def test_rank_pairs(reports: list[InstanceReport], expected: list[str]) -> None:
    assert [r.name for r in rank(reports)] == expected


def test_rank_does_not_mutate_input() -> None:
    reports = [replica("a", received=1), replica("b", received=2)]
    rank(reports)
    assert [r.name for r in reports] == ["a", "b"]


def test_position_is_furthest_known_lsn() -> None:
    assert replica("a", received=10, replayed=7).position == 10
    assert replica("a", received=None, replayed=7).position == 7
    assert replica("a").position == -1
    assert InstanceReport(name="p", in_recovery=False, current_lsn=30,
                          received_lsn=10).position == 30


# -- choose_candidate, durability required ---------------------------------------------

C3 = ("c-1", "c-2", "c-3")


@pytest.mark.parametrize(("replicas", "snapshot", "candidate", "reason", "in_message"), [
    # FIRST 1 with b (c-1) the synchronous standby.
    pytest.param(
        [replica("c-1", received=500), replica("c-2", received=400)],
        snapshot_first(1, ("c-1", "c-2"), ["c-1"]),
        "c-1", ElectionReason.SYNCHRONOUS_STANDBY, "synchronous standby c-1",
        id="first1-sync-answers-and-is-furthest"),
    pytest.param(
        [replica("c-1", received=500), replica("c-2", received=700)],
        snapshot_first(1, ("c-1", "c-2"), ["c-1"]),
        "c-2", ElectionReason.SYNCHRONOUS_STANDBY, "promoting c-2",
        id="first1-other-replica-ahead-of-sync-is-promoted"),
    pytest.param(
        [unreachable("c-1"), replica("c-2", received=700)],
        snapshot_first(1, ("c-1", "c-2"), ["c-1"]),
        None, ElectionReason.NO_SYNCHRONOUS_STANDBY, "(c-1) is reachable",
        id="first1-sync-unreachable-refuses-even-if-other-answers"),
    pytest.param(
        [replica("c-1", received=900, fenced=True), replica("c-2", received=700)],
        snapshot_first(1, ("c-1", "c-2"), ["c-1"]),
        None, ElectionReason.NO_SYNCHRONOUS_STANDBY, "c-1",
        id="first1-sync-fenced-refuses"),
    pytest.param(
        [replica("c-1", received=500), replica("c-2", received=700)],
        snapshot_first(1, ("c-1", "c-2"), []),
        None, ElectionReason.NO_SYNCHRONOUS_STANDBY, "(none)",
        id="first1-nobody-confirming-refuses"),
    pytest.param(
        [unreachable("c-1"), replica("c-2", received=600), replica("c-3", received=650)],
        snapshot_first(2, C3, ["c-1", "c-2"]),
        "c-3", ElectionReason.SYNCHRONOUS_STANDBY, "synchronous standby c-2",
        id="first2-one-of-two-sync-answers-is-enough"),
    # ANY 1 of 2 standbys: k=2, n=1, needs 2 answering.
    pytest.param(
        [replica("c-1", received=300), replica("c-2", received=800)],
        snapshot_any(1, ("c-1", "c-2")),
        "c-2", ElectionReason.QUORUM_COMPLETE, "2 of 2 quorum standbys (ANY 1 needs 2)",
        id="any1-of-2-both-answer"),
    pytest.param(
        [replica("c-1", received=300), unreachable("c-2")],
        snapshot_any(1, ("c-1", "c-2")),
        None, ElectionReason.QUORUM_INCOMPLETE, "only 1 of the 2",
        id="any1-of-2-one-answers"),
    pytest.param(
        [replica("c-1", received=300), replica("c-2", received=800, running=False)],
        snapshot_any(1, ("c-1", "c-2")),
        None, ElectionReason.QUORUM_INCOMPLETE, "only 1 of the 2",
        id="any1-of-2-one-server-down"),
    # ANY 2 of 3: needs 2 answering.
    pytest.param(
        [replica("c-1", received=300), replica("c-2", received=800), unreachable("c-3")],
        snapshot_any(2, C3),
        "c-2", ElectionReason.QUORUM_COMPLETE, "ANY 2 needs 2",
        id="any2-of-3-two-answer"),
    pytest.param(
        [replica("c-1", received=300), unreachable("c-2"), unreachable("c-3")],
        snapshot_any(2, C3),
        None, ElectionReason.QUORUM_INCOMPLETE, "only 1 of the 3",
        id="any2-of-3-one-answers"),
    pytest.param(
        [replica("c-1", received=300), replica("c-2", received=300), replica("c-3", received=1)],
        snapshot_any(2, C3),
        "c-1", ElectionReason.QUORUM_COMPLETE, "3 of 3",
        id="any2-of-3-tie-goes-to-lowest-name"),
    # No proof at all.
    pytest.param(
        [replica("c-1", received=300)], None,
        None, ElectionReason.NO_SYNC_SNAPSHOT, "no record",
        id="no-snapshot"),
    pytest.param(
        [replica("c-1", received=300)], snapshot_any(0, ("c-1",)),
        None, ElectionReason.NO_SYNC_SNAPSHOT, "no record",
        id="snapshot-number-0"),
    pytest.param(
        [replica("c-1", received=300)], snapshot_first(0, ("c-1",), ["c-1"]),
        None, ElectionReason.NO_SYNC_SNAPSHOT, "no record",
        id="first-snapshot-number-0"),
    pytest.param(
        [replica("c-1", received=300)], snapshot_any(1, ()),
        None, ElectionReason.NO_SYNC_SNAPSHOT, "no record",
        id="snapshot-without-standbys"),
])
def test_choose_candidate_required(replicas: list[InstanceReport], snapshot: SyncSnapshot | None,
                                   candidate: str | None, reason: ElectionReason,
                                   in_message: str) -> None:
    election = choose_candidate(replicas, snapshot, REQUIRED)
    assert election.candidate == candidate
    assert election.reason == reason
    assert election.safe is (candidate is not None)
    assert in_message in election.message


def test_required_accepts_durability_as_plain_string() -> None:
    election = choose_candidate([replica("c-1", received=1), replica("c-2", received=2)],
                                snapshot_any(1, ("c-1", "c-2")), "required")
    assert (election.candidate, election.reason) == ("c-2", ElectionReason.QUORUM_COMPLETE)


def test_quorum_considered_lists_members_best_first() -> None:
    election = choose_candidate(
        [replica("c-1", received=300), replica("c-2", received=800), replica("c-3", received=500)],
        snapshot_any(2, C3), REQUIRED)
    assert election.considered == ("c-2", "c-3", "c-1")


def test_first_considered_lists_usable_replicas_best_first() -> None:
    election = choose_candidate(
        [replica("c-1", received=300), unreachable("c-2"), replica("c-3", received=500)],
        snapshot_first(1, C3, ["c-1"]), REQUIRED)
    assert election.considered == ("c-3", "c-1")


@pytest.mark.parametrize("durability", [REQUIRED, PREFERRED])
def test_receiver_still_running_refuses(durability: Durability) -> None:
    replicas = [replica("c-1", received=500, receiver_active=True),
                replica("c-2", received=400), replica("c-3", received=450, receiver_active=True)]
    election = choose_candidate(replicas, snapshot_any(1, C3, primary_lsn=500), durability,
                                max_lag_bytes=1 << 40)
    assert election.candidate is None
    assert election.reason == ElectionReason.RECEIVERS_RUNNING
    assert "c-1, c-3" in election.message


def test_receiver_running_on_unusable_replica_is_ignored() -> None:
    replicas = [replica("c-1", received=500, reachable=False, receiver_active=True),
                replica("c-2", received=400), replica("c-3", received=450)]
    election = choose_candidate(replicas, snapshot_any(2, C3), REQUIRED)
    assert (election.candidate, election.reason) == ("c-3", ElectionReason.QUORUM_COMPLETE)


@pytest.mark.parametrize("replicas", [
    pytest.param([], id="no-replicas"),
    pytest.param([unreachable("c-1"), unreachable("c-2")], id="all-unreachable"),
    pytest.param([replica("c-1", received=9, fenced=True),
                  replica("c-2", received=9, fenced=True)], id="all-fenced"),
    pytest.param([replica("c-1", received=9, running=False),
                  replica("c-2", received=9, running=False)], id="all-servers-down"),
    pytest.param([replica("c-1", received=9, in_recovery=False),
                  replica("c-2", received=9, in_recovery=False)], id="none-in-recovery"),
    pytest.param([unreachable("c-1"), replica("c-2", received=9, fenced=True)],
                 id="mixed-unusable"),
])
@pytest.mark.parametrize("durability", [REQUIRED, PREFERRED])
def test_no_usable_replica(replicas: list[InstanceReport], durability: Durability) -> None:
    election = choose_candidate(replicas, snapshot_any(1, ("c-1", "c-2"), primary_lsn=9),
                                durability, max_lag_bytes=1 << 40)
    assert election.candidate is None
    assert election.reason == ElectionReason.NO_REPLICA_REACHABLE
    assert election.considered == ()


def test_unusable_replica_ahead_is_never_promoted() -> None:
    replicas = [replica("c-1", received=900, in_recovery=False), replica("c-2", received=100),
                replica("c-3", received=200)]
    election = choose_candidate(replicas, snapshot_any(2, C3), REQUIRED)
    assert election.candidate == "c-3"
    assert "c-1" not in election.considered


# -- choose_candidate, durability preferred --------------------------------------------

@pytest.mark.parametrize(("replicas", "snapshot", "max_lag", "candidate", "reason", "in_message"), [
    pytest.param(
        [replica("c-1", received=1000), replica("c-2", received=900)],
        snapshot_any(1, ("c-1", "c-2"), primary_lsn=1100), 100,
        "c-1", ElectionReason.WITHIN_LAG_BOUND, "100 bytes behind",
        id="gap-equal-to-bound"),
    pytest.param(
        [replica("c-1", received=1000), replica("c-2", received=900)],
        snapshot_any(1, ("c-1", "c-2"), primary_lsn=1000), 0,
        "c-1", ElectionReason.WITHIN_LAG_BOUND, "0 bytes behind",
        id="caught-up-with-zero-bound"),
    pytest.param(
        [replica("c-1", received=1000), replica("c-2", received=900)],
        snapshot_any(1, ("c-1", "c-2"), primary_lsn=1101), 100,
        None, ElectionReason.LAG_TOO_LARGE, "c-1 is 101 bytes behind",
        id="gap-one-above-bound"),
    pytest.param(
        [replica("c-1", received=1000), replica("c-2", received=900)],
        snapshot_any(1, ("c-1", "c-2"), primary_lsn=800), 0,
        "c-1", ElectionReason.WITHIN_LAG_BOUND, "0 bytes behind",
        id="replica-past-recorded-primary-lsn"),
    pytest.param(
        [replica("c-1", received=1000), unreachable("c-2")],
        snapshot_any(1, ("c-1", "c-2")), 0,
        "c-1", ElectionReason.WITHIN_LAG_BOUND, "position is unknown",
        id="no-primary-lsn-promotes-furthest"),
    pytest.param(
        [replica("c-1", received=10), replica("c-2", received=20)],
        None, 0,
        "c-2", ElectionReason.WITHIN_LAG_BOUND, "position is unknown",
        id="no-snapshot-promotes-furthest"),
    pytest.param(
        [unreachable("c-1"), replica("c-2", received=20)],
        snapshot_first(1, ("c-1", "c-2"), ["c-1"], primary_lsn=20), 0,
        "c-2", ElectionReason.WITHIN_LAG_BOUND, "0 bytes behind",
        id="sync-standby-missing-does-not-matter"),
])
def test_choose_candidate_preferred(replicas: list[InstanceReport], snapshot: SyncSnapshot | None,
                                    max_lag: int, candidate: str | None, reason: ElectionReason,
                                    in_message: str) -> None:
    election = choose_candidate(replicas, snapshot, PREFERRED, max_lag_bytes=max_lag)
    assert election.candidate == candidate
    assert election.reason == reason
    assert in_message in election.message


def test_preferred_accepts_durability_as_plain_string() -> None:
    election = choose_candidate([replica("c-1", received=5)], None, "preferred")
    assert election.candidate == "c-1"


def test_unknown_durability_raises() -> None:
    with pytest.raises(ValueError):
        choose_candidate([replica("c-1", received=5)], None, "sometimes")


# -- known gap: ranking ignores WAL that was replayed but not (re)received ---------------

# A standby that restarts while the primary is down reports pg_last_wal_receive_lsn()
# as NULL (its WAL receiver never started since the restart), yet replays its whole
# local pg_wal on startup: replay_lsn (== position) still holds every commit it
# flushed. rank() must order by that position, or the commits only it holds are dropped.
@pytest.mark.parametrize(("snapshot", "durability"), [
    pytest.param(snapshot_any(1, ("c-1", "c-2")), REQUIRED, id="any1-of-2"),
    pytest.param(snapshot_first(1, ("c-1", "c-2"), ["c-1"]), REQUIRED, id="first1"),
    pytest.param(snapshot_any(1, ("c-1", "c-2"), primary_lsn=1000), PREFERRED,
                 id="preferred-within-bound"),
])
def test_restarted_standby_with_only_replayed_lsn_is_furthest(snapshot: SyncSnapshot,
                                                               durability: Durability) -> None:
    acknowledged = 1000  # flushed by c-1 alone, acknowledged under ANY 1 / FIRST 1 (c-1)
    replicas = [replica("c-1", received=None, replayed=acknowledged),
                replica("c-2", received=600, replayed=600)]
    election = choose_candidate(replicas, snapshot, durability, max_lag_bytes=0)
    assert election.candidate == "c-1"


# -- property: no acknowledged commit is ever lost -------------------------------------

CASES = 500


def _history(rng: random.Random) -> list[int]:
    """Commit end positions of the old primary, strictly increasing, crossing 4 GiB."""
    pos = rng.choice([0, (1 << 32) - 5000, 7 << 32])
    out = []
    for _ in range(rng.randint(1, 30)):
        pos += rng.randint(1, 3000)
        out.append(pos)
    return out


def _flushed(rng: random.Random, commits: list[int]) -> int:
    """How far a standby flushed: nothing, a commit's end, or somewhere in between."""
    roll = rng.random()
    if roll < 0.1:
        return 0
    i = rng.randrange(len(commits))
    if roll < 0.6 or i == 0:
        return commits[i]
    return rng.randint(commits[i - 1], commits[i])


def _acknowledged(commits: list[int], flushed: list[int], n: int) -> int:
    """The last commit at least n of the standbys flushed: what the client was told is safe."""
    acked = [c for c in commits if sum(f >= c for f in flushed) >= n]
    return max(acked, default=0)


def _mark_unusable(rng: random.Random, name: str, flushed: int) -> InstanceReport:
    kind = rng.choice(["unreachable", "down", "fenced"])
    if kind == "unreachable":
        return unreachable(name)
    if kind == "down":
        return replica(name, received=flushed, replayed=flushed, running=False)
    return replica(name, received=flushed, replayed=flushed, fenced=True)


def _standbys(rng: random.Random, commits: list[int], k: int, p_down: float
              ) -> tuple[list[str], list[int], list[InstanceReport]]:
    names = [f"c-{i}" for i in range(1, k + 1)]
    flushed = [_flushed(rng, commits) for _ in names]
    reports = []
    for name, f in zip(names, flushed, strict=True):
        if rng.random() < p_down:
            reports.append(_mark_unusable(rng, name, f))
        else:
            replayed = rng.randint(max(0, f - 2000), f)  # replay lags flush
            reports.append(replica(name, received=f, replayed=replayed))
    rng.shuffle(reports)
    return names, flushed, reports


def test_property_any_quorum_never_loses_an_acknowledged_commit() -> None:
    promoted = refused = 0
    for seed in range(CASES):
        rng = random.Random(seed)
        k = rng.randint(1, 6)
        n = rng.randint(1, k)
        commits = _history(rng)
        names, flushed, reports = _standbys(rng, commits, k, p_down=rng.random())
        acked = _acknowledged(commits, flushed, n)
        election = choose_candidate(reports, snapshot_any(n, names), REQUIRED)
        usable = sum(r.reachable and r.server_running and not r.fenced for r in reports)
        case = f"seed={seed} k={k} n={n} flushed={flushed} acked={acked} -> {election}"
        if election.candidate is not None:
            promoted += 1
            chosen = next(r for r in reports if r.name == election.candidate)
            assert chosen.position >= acked, case
            assert chosen.received_lsn == max(
                r.received_lsn for r in reports
                if r.reachable and r.server_running and not r.fenced), case
            assert election.reason == ElectionReason.QUORUM_COMPLETE, case
        else:
            refused += 1
            assert election.reason == (ElectionReason.QUORUM_INCOMPLETE if usable
                                       else ElectionReason.NO_REPLICA_REACHABLE), case
        # Promotion happens exactly when k-n+1 quorum standbys answer.
        assert (election.candidate is not None) == (usable >= k - n + 1), case
    # The generator exercises both outcomes.
    assert promoted > 50
    assert refused > 50


def test_property_first_never_loses_an_acknowledged_commit() -> None:
    promoted = refused = 0
    for seed in range(CASES):
        rng = random.Random(10_000 + seed)
        k = rng.randint(1, 6)
        n = rng.randint(1, k)
        commits = _history(rng)
        names, flushed, reports = _standbys(rng, commits, k, p_down=rng.random())
        # FIRST n: the n standbys the primary listed as `sync` confirmed every commit.
        sync = sorted(rng.sample(names, n))
        acked = _acknowledged(commits, [f for nm, f in zip(names, flushed, strict=True)
                                        if nm in sync], n)
        election = choose_candidate(reports, snapshot_first(n, names, sync), REQUIRED)
        up = [r for r in reports if r.reachable and r.server_running and not r.fenced]
        usable = len(up)
        sync_up = [r for r in up if r.name in sync]
        case = f"seed={seed} k={k} n={n} sync={sync} flushed={flushed} acked={acked}"
        if election.candidate is not None:
            promoted += 1
            chosen = next(r for r in reports if r.name == election.candidate)
            assert chosen.position >= acked, case
            assert election.reason == ElectionReason.SYNCHRONOUS_STANDBY, case
        else:
            refused += 1
            assert election.reason == (ElectionReason.NO_SYNCHRONOUS_STANDBY if usable
                                       else ElectionReason.NO_REPLICA_REACHABLE), case
        assert (election.candidate is not None) == bool(sync_up), case
    assert promoted > 50
    assert refused > 50
