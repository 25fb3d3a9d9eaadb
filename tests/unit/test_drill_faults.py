"""The ring drills' pure pieces (core.drill_faults): a campusLoss fence is undone exactly
(the user's own fence stays), and the ring's status is judged against the links
core.ring says the ring should have."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkeeper.core.annotations import FENCED, parse_fenced
from ringkeeper.core.drill_faults import (
    DRILL_FENCED,
    bypass_links,
    bypass_streaming,
    feeding,
    fence_annotations,
    ring_converged,
    unfence_annotations,
)

INST = ["east-0", "east-1", "east-2"]


def apply(ann: dict[str, str], patch: dict[str, str] | dict[str, str | None]
          ) -> dict[str, str]:
    """A merge patch of annotations: None removes the key."""
    out = dict(ann)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def test_fence_stops_every_instance_and_names_what_it_added() -> None:
    ann = fence_annotations({}, INST, "loss")
    assert json.loads(ann[FENCED]) == INST
    assert json.loads(ann[DRILL_FENCED]) == {"drill": "loss", "instances": INST}


def test_a_fence_the_user_set_before_stays_after_the_drill() -> None:
    before = {FENCED: '["east-2"]', "other": "x"}
    during = apply(before, fence_annotations(before, INST, "loss"))
    assert json.loads(during[DRILL_FENCED])["instances"] == ["east-0", "east-1"]
    undo = unfence_annotations(during, INST, "loss")
    assert undo is not None
    after = apply(during, undo)
    assert after == before


def test_unfence_without_our_marker_does_nothing() -> None:
    assert unfence_annotations({FENCED: '["east-0"]'}, INST, "loss") is None
    theirs = fence_annotations({}, INST, "other")
    assert unfence_annotations(theirs, INST, "loss") is None


def test_fencing_again_keeps_what_the_first_fence_added() -> None:
    """A retried inject (the first patch landed, its answer did not) must not record
    every instance as fenced 'before' the drill: the undo would then keep them."""
    once = fence_annotations({}, INST, "loss")
    twice = fence_annotations(once, INST, "loss")
    after = apply(twice, unfence_annotations(twice, INST, "loss") or {})
    assert FENCED not in after and DRILL_FENCED not in after


def test_malformed_fence_or_another_drills_fence_is_refused() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        fence_annotations({FENCED: "[east-0"}, INST, "loss")
    with pytest.raises(ValueError, match="Drill other holds"):
        fence_annotations(fence_annotations({}, INST, "other"), INST, "loss")


@given(st.sets(st.sampled_from(INST)))
def test_fence_then_unfence_restores_the_users_fence(user: set[str]) -> None:
    before = {FENCED: json.dumps(sorted(user))} if user else {}
    during = apply(before, fence_annotations(before, INST, "d"))
    assert set(parse_fenced(during[FENCED], INST).value) == set(INST)
    after = apply(during, unfence_annotations(during, INST, "d") or {})
    assert set(parse_fenced(after.get(FENCED), INST).value) == user
    assert DRILL_FENCED not in after


def links(*pairs: tuple[str, str, str]) -> list[dict[str, str]]:
    return [{"from": a, "to": b, "state": s} for a, b, s in pairs]


RING3 = ["a", "b", "c"]


def test_converged_needs_every_link_of_the_whole_ring_streaming() -> None:
    whole = links(("a", "b", "Streaming"), ("b", "c", "Streaming"), ("c", "a", "Streaming"))
    assert ring_converged(whole, RING3, "ring")
    assert not ring_converged(whole[:2], RING3, "ring")  # a link missing
    assert not ring_converged(
        links(("a", "b", "Down"), ("b", "c", "Streaming"), ("c", "a", "Streaming")),
        RING3, "ring")
    # the bypass link streaming is not convergence: b is still left out
    assert not ring_converged(links(("a", "c", "Streaming"), ("c", "a", "Streaming")),
                              RING3, "ring")
    assert not ring_converged([], RING3, "ring")


def test_a_sidecar_streams_only_from_the_members_that_feed_it() -> None:
    """A syncCrash waits for these streams: in the demo's ring of four, waiting for all
    three others took the whole 30 s wait, the load ended before the crash."""
    four = ["zhaohui", "wangjiangshan", "yuecheng", "fuyang"]
    assert feeding(four, "ring", "zhaohui") == ["fuyang"]
    assert feeding(four, "ring", "yuecheng") == ["wangjiangshan"]
    assert feeding(["east", "west"], "ring", "east") == ["west"]
    assert feeding(four, "mesh", "zhaohui") == ["wangjiangshan", "yuecheng", "fuyang"]


def test_bypass_links_exist_only_where_a_member_is_skipped() -> None:
    assert bypass_links(RING3, "ring", "b") == [("a", "c")]
    assert bypass_links(["a", "b"], "ring", "b") == []
    assert bypass_links(RING3, "mesh", "b") == []
    down = links(("a", "b", "Down"), ("b", "c", "Down"), ("c", "a", "Streaming"))
    assert not bypass_streaming(down, RING3, "ring", "b")
    assert bypass_streaming([*down, *links(("a", "c", "Streaming"))], RING3, "ring", "b")
    # as the sidecar reports a bypass link (seen on the local cluster), it flows
    assert bypass_streaming([*down, *links(("a", "c", "CatchingUp"))], RING3, "ring", "b")
    assert not bypass_streaming([*down, *links(("a", "c", "Down"))], RING3, "ring", "b")
    assert bypass_streaming(down, ["a", "b"], "ring", "b")  # nothing to bypass


def test_fenced_by_names_only_this_drills_fence() -> None:
    """What an operator restarted mid-run looks for: the marker naming this drill."""
    from ringkeeper.core.drill_faults import DRILL_FENCED, fenced_by

    ours = {DRILL_FENCED: '{"drill": "loss", "instances": ["north-0"]}'}
    assert fenced_by(ours, "loss")
    assert not fenced_by(ours, "other")
    assert not fenced_by({}, "loss")
    assert not fenced_by({DRILL_FENCED: "not json"}, "loss")
    assert not fenced_by({DRILL_FENCED: '["loss"]'}, "loss")
