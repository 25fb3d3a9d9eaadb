"""Which failures the sync sidecar retries, and which say the other end does not answer.

The member loop, each link's loop, the hold keeper and the copies all catch the same
families of exceptions; one definition keeps them in step (a failure one loop retries
and another lets crash the sidecar would be a bug of its own).
"""

from __future__ import annotations

import asyncpg

# Failures that a reconnect may cure: the network, a restarting server, a closed socket.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
LINK_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT, RuntimeError)
MEMBER_ERRORS: tuple[type[BaseException], ...] = (*LINK_ERRORS, ValueError)
# Failures that say the server at the other end does not answer (rather than refused).
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError)
