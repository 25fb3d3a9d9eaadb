"""The liveness decision (core.liveness): a table of what a link reports."""

from __future__ import annotations

import pytest

from ringkeeper.api.v1alpha1.ring import LinkState as S
from ringkeeper.core.liveness import (
    BUSY_GRACE_WINDOWS,
    LinkObservation,
    WalsenderProbe,
    judge_link,
    liveness_seconds,
    ping_seconds,
    statement_seconds,
    walsender_busy,
)
from ringkeeper.core.liveness import (
    LinkFault as F,
)

W = 4.0  # liveness window of these rows

# running, silence, idle, commit_lag, catching_up, fault, since_alive
# -> state, lag, source_down, restart
TABLE = [
    # a healthy idle link: lag 0
    ((True, 0.0, True, 0.0, False, None, 0.1), (S.STREAMING, 0.0, False, False)),
    # applying a backlog: the commit lag
    ((True, 0.0, False, 7.5, False, None, 0.1), (S.STREAMING, 7.5, False, False)),
    # bypassing a member or copies pending: CatchingUp
    ((True, 0.0, True, 0.0, True, None, 0.1), (S.CATCHING_UP, 0.0, False, False)),
    # a ping unanswered for less than half the window: still fine
    ((True, 1.9, True, 0.0, False, None, 1.9), (S.STREAMING, 0.0, False, False)),
    # half the window: Stalled, and the lag is the silence, not 0
    ((True, 2.0, True, 0.0, False, None, 2.0), (S.STALLED, 2.0, False, False)),
    ((True, 3.0, False, 5.0, False, None, 3.0), (S.STALLED, 5.0, False, False)),
    ((True, 3.0, True, 0.0, True, None, 3.0), (S.STALLED, 3.0, False, False)),
    # the whole window: the link must stop; Stalled until the watchdog has asked the
    # source's server (a busy walsender keeps it), Down once it ended (rows below)
    ((True, 4.0, True, 0.0, False, None, 4.0), (S.STALLED, 4.0, False, True)),
    ((True, 9.0, False, 12.0, True, None, 9.0), (S.STALLED, 12.0, False, True)),
    # stopped links: the lag is the time since the link last heard its source
    ((False, 0.0, True, None, False, F.SOURCE_SILENT, 6.0), (S.DOWN, 6.0, True, False)),
    ((False, 0.0, True, None, False, F.SOURCE_UNREACHABLE, 30.0),
     (S.DOWN, 30.0, True, False)),
    # this member's own database: TargetDown, and the source is not blamed
    ((False, 0.0, True, None, False, F.TARGET_UNREACHABLE, 11.0),
     (S.TARGET_DOWN, 11.0, False, False)),
    # other failures are Error (the CRD holds it), never a reason to bypass
    ((False, 0.0, True, None, False, F.FAILED, 2.0), (S.ERROR, 2.0, False, False)),
    ((False, 0.0, True, None, False, F.SLOT_LOST, None), (S.NEEDS_RESEED, None, False, False)),
    # not started yet, or stopped on purpose
    ((False, 0.0, True, None, False, None, None), (S.PENDING, None, False, False)),
]


@pytest.mark.parametrize(("obs", "want"), TABLE, ids=[f"row{i}" for i in range(len(TABLE))])
def test_judge_link(obs: tuple[object, ...], want: tuple[object, ...]) -> None:
    running, silence, idle, commit_lag, catching_up, fault, since_alive = obs
    v = judge_link(LinkObservation(running=running, silence=silence, idle=idle,  # type: ignore[arg-type]
                                   commit_lag=commit_lag, catching_up=catching_up,  # type: ignore[arg-type]
                                   fault=fault, since_alive=since_alive), W)  # type: ignore[arg-type]
    assert (v.state, v.lag_seconds, v.source_down, v.restart) == want


def test_never_streaming_with_lag_zero_while_silent() -> None:
    """Past half the window of silence, no input gives Streaming with lag 0."""
    for silence in (W / 2, W * 0.75, W, 3 * W):
        for idle in (True, False):
            v = judge_link(LinkObservation(running=True, silence=silence, idle=idle,
                                           commit_lag=0.0, catching_up=False, fault=None,
                                           since_alive=silence), W)
            assert v.state is not S.STREAMING and (v.lag_seconds or 0) >= silence


@pytest.mark.parametrize(("bypass", "live", "ping", "stmt"), [
    (5, 1.25, 0.3125, 5.0),
    (8, 2.0, 0.5, 5.0),
    (60, 15.0, 3.75, 15.0),  # the default bypassAfterSeconds
    (3600, 15.0, 3.75, 15.0),
])
def test_windows_follow_bypass_after(bypass: float, live: float, ping: float,
                                     stmt: float) -> None:
    """Detection fits well inside bypassAfterSeconds: a hung member is bypassed within
    it plus one window, at every allowed setting (the CRD's minimum is 5 s)."""
    assert liveness_seconds(bypass) == live
    assert ping_seconds(bypass) == ping
    assert statement_seconds(bypass) == stmt
    assert liveness_seconds(bypass) <= bypass / 4 or liveness_seconds(bypass) == 1.0


def test_busy_walsender_is_stalled_never_down_nor_streaming_at_lag_zero() -> None:
    """A silence excused by the source's server (the walsender works through a long
    record): Stalled, its lag the time since the link last heard the source."""
    for idle, commit_lag in ((True, 0.0), (False, 3.0), (False, 9.0)):
        v = judge_link(LinkObservation(running=True, silence=0.0, idle=idle,
                                       commit_lag=commit_lag, catching_up=False, fault=None,
                                       since_alive=6.0, busy=True), W)
        assert (v.state, v.source_down, v.restart) == (S.STALLED, False, False)
        assert v.lag_seconds == max(commit_lag, 6.0)
    # Silence past the window still ends the link: the watchdog asks the server first.
    v = judge_link(LinkObservation(running=True, silence=W, idle=True, commit_lag=0.0,
                                   catching_up=False, fault=None, since_alive=W, busy=True), W)
    assert (v.state, v.restart) == (S.STALLED, True)


GRACE = BUSY_GRACE_WINDOWS * W

# answered, active, advanced, since_progress -> busy (the link is kept)
BUSY_TABLE = [
    # a hung or frozen server, or a cut network: the probe is not answered
    ((False, False, False, 0.0), False),
    ((False, True, True, 0.0), False),
    # the server answers, but no walsender holds the link's slot: the session is gone
    ((True, False, False, 0.0), False),
    ((True, False, True, 0.0), False),
    # the walsender reads on (decoding a big transaction before it sends any of it)
    ((True, True, True, 0.0), True),
    ((True, True, True, 10 * GRACE), True),
    # it has not moved since the last probe: kept for BUSY_GRACE_WINDOWS windows
    ((True, True, False, 0.0), True),
    ((True, True, False, GRACE - 0.1), True),
    ((True, True, False, GRACE), False),
    ((True, True, False, 10 * GRACE), False),
]


@pytest.mark.parametrize(("probe", "busy"), BUSY_TABLE,
                         ids=[f"row{i}" for i in range(len(BUSY_TABLE))])
def test_walsender_busy(probe: tuple[bool, bool, bool, float], busy: bool) -> None:
    assert walsender_busy(WalsenderProbe(*probe), W) is busy
