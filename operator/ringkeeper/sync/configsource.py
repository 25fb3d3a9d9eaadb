"""Where the sidecar reads its ring config: a callable it awaits on every pass.

The member loop asks for the config on every pass, so a change to the ring (members,
tables, topology) reaches the links without a restart; the source is a file written
by the operator (file_config) or, in the sidecar's process, the API (sync/run.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..contracts.ringconfig import RingConfig

ConfigSource = Callable[[], Awaitable[RingConfig]]


def file_config(path: str) -> ConfigSource:
    from pathlib import Path

    async def load() -> RingConfig:
        return await asyncio.to_thread(RingConfig.load, Path(path))

    return load
