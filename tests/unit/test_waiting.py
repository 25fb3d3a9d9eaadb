"""The shared wait loops return the first truthy value and can time out."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from waiting import await_until, wait_until


def test_returns_first_truthy_value_and_tolerates_errors() -> None:
    seq = iter([0, ValueError("not yet"), None, "ready"])

    def check() -> object:
        v = next(seq)
        if isinstance(v, Exception):
            raise v
        return v

    assert wait_until("ready", check, timeout=5, interval=0) == "ready"


def test_times_out_with_the_last_answer() -> None:
    with pytest.raises(AssertionError, match=r"waiting for never.*last: 0"):
        wait_until("never", lambda: 0, timeout=0.05, interval=0.01)


def test_async_version() -> None:
    counter = itertools.count()

    async def check() -> int:
        return next(counter) >= 3

    assert asyncio.run(await_until("three", check, timeout=5, interval=0)) is True

    async def boom() -> None:
        raise RuntimeError("down")

    with pytest.raises(AssertionError, match="RuntimeError"):
        asyncio.run(await_until("never", boom, timeout=0.05, interval=0.01))
