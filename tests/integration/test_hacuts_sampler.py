"""The role sampler of the HA cut tests and bench judges each round against the primary
that round watched: a new round's primary, set while probes are out, is not read against
the previous round's acknowledgements (the bench's asymmetric run reported that as split
brain), and a real late acknowledgement by an old primary is still caught."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from integration.hacuts import RoleSampler


class Scripted(RoleSampler):
    """Probe answers from a script, one list of writable instances per round; `during`
    runs while a round's probes are out."""

    def __init__(self, script: list[list[str]], during: dict[int, Callable[[], None]]
                 ) -> None:
        super().__init__(SimpleNamespace(names=["a", "b", "c"]), "a", every=0)  # type: ignore[arg-type]
        self.script, self.during, self.i = script, during, 0

    async def _probe(self, name: str) -> bool:
        round_no = self.rounds
        if name == "a" and round_no in self.during:
            self.during.pop(round_no)()
        await asyncio.sleep(0)
        writable = self.script[min(round_no - 1, len(self.script) - 1)]
        if name == "c" and round_no >= len(self.script):
            self.stop.set()
        return name in writable


async def _run(s: RoleSampler) -> list[str]:
    await asyncio.wait_for(s.run(), 5)
    return s.violations


def _old(s: Any, name: str) -> Callable[[], None]:
    def set_old() -> None:
        s.old = name
    return set_old


async def test_a_new_watch_set_mid_round_is_not_judged_by_the_last_rounds_acks() -> None:
    # a primary; b promoted (a watched); then b is the primary of the next fault, set
    # while round 3's probes are out: b answering in round 3 is not a violation.
    s = Scripted([["a"], ["b"], ["b"], ["b"]], {})
    s.during = {3: _old(s, "b")}
    assert await _run(s) == []


async def test_an_old_primary_that_acknowledges_after_the_new_one_is_caught() -> None:
    s = Scripted([["a"], ["b"], ["a"], ["b"]], {})
    violations = await _run(s)
    assert len(violations) == 1 and "the old primary a acknowledged" in violations[0]


async def test_two_writers_in_one_round_are_caught() -> None:
    s = Scripted([["a"], ["a", "b"], ["b"]], {})
    violations = await _run(s)
    assert any("all acknowledged" in v for v in violations)
