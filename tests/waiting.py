"""Waiting for a condition: one synchronous and one asynchronous loop for every test.

Tests wait on conditions, never on fixed sleeps. A check returns something truthy when
the condition holds (that value is returned); an exception it raises counts as "not
yet" and is kept, so a time-out says what the last attempt saw instead of only that it
timed out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _timed_out(what: str, timeout: float, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60,
               interval: float = 0.2) -> Any:
    """Call `check` every `interval` seconds until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # not yet: keep what it said
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def await_until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 60,
                      interval: float = 0.2) -> Any:
    """`wait_until` for coroutine checks, sleeping without blocking the event loop."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except Exception as exc:  # not yet: keep what it said
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)
