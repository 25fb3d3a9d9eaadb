"""Names of the slots, origins and publication a ring creates in each member.

Every member must spell a campus's origin the same way, or per-origin progress
would split; slot names must fit PostgreSQL's [a-z0-9_]{1,63}. Pure functions.
"""

from __future__ import annotations

import hashlib

_SLOT_MAX = 63
SEED = "_seed"  # not a valid DNS label, so never a member's name


def _slot_safe(text: str) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower())
    if len(s) <= _SLOT_MAX:
        return s
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return s[: _SLOT_MAX - 11] + "_" + digest


def origin_name(ring: str, member: str) -> str:
    """The replication origin of changes first committed at `member`."""
    return f"rk_{ring}_{member}"


def seed_origin(ring: str) -> str:
    """Origin of rows copied by a stock sync: never forwarded, oldest in conflicts."""
    return origin_name(ring, SEED)


def member_of_origin(ring: str, origin: str) -> str | None:
    """The member an origin name belongs to, or None for a foreign origin."""
    prefix = f"rk_{ring}_"
    if not origin.startswith(prefix):
        return None
    return origin[len(prefix):] or None


def publication_name(ring: str) -> str:
    return _slot_safe(f"rk_{ring}")


def hold_slot_name(ring: str, source: str) -> str:
    """The slot on `source` that keeps WAL until every member has each change."""
    return _slot_safe(f"rk_{ring}_{source}_hold")


def link_slot_name(ring: str, source: str, target: str) -> str:
    """The slot on `source` that one target reads from (its ring successor, a member
    bypassing a dead one, or a mesh peer)."""
    return _slot_safe(f"rk_{ring}_{source}_to_{target}")
