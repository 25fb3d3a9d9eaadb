"""Every name Ringkeeper derives: a campus's instances, and the slots, origins and
publication a ring creates in each member.

One module, because every process must spell them alike: the operator, the agent and
the CLI address the same pods; every member must spell a campus's origin the same way,
or per-origin progress would split (and the verifier would attribute rows to nobody);
slot names must fit PostgreSQL's [a-z0-9_]{1,63}. Pure functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1.campus import CampusSpec

_DEFAULT_INSTANCES: int = CampusSpec.model_fields["instances"].default

_SLOT_MAX = 63
SEED = "_seed"  # not a valid DNS label, so never a member's name


def _slot_safe(text: str) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower())
    if len(s) <= _SLOT_MAX:
        return s
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return s[: _SLOT_MAX - 11] + "_" + digest


def instance_count(spec: Mapping[str, Any]) -> int:
    """A Campus spec's `instances`, with the model's default when it is absent (the
    default lives in the pydantic model only, so no caller can disagree with it)."""
    value = spec.get("instances")
    return int(value if value is not None else _DEFAULT_INSTANCES)


def instance_names(campus: str, count: int) -> list[str]:
    """The pods of a campus's StatefulSet, in ordinal order."""
    return [f"{campus}-{i}" for i in range(count)]


def campus_instances(campus: str, spec: Mapping[str, Any]) -> list[str]:
    return instance_names(campus, instance_count(spec))


def origin_prefix(ring: str) -> str:
    """What every origin of `ring` starts with (catalog queries filter on it)."""
    return f"rk_{ring}_"


def origin_name(ring: str, member: str) -> str:
    """The replication origin of changes first committed at `member`."""
    return origin_prefix(ring) + member


def seed_origin(ring: str) -> str:
    """Origin of rows copied by a stock sync: never forwarded, oldest in conflicts."""
    return origin_name(ring, SEED)


def member_of_origin(ring: str, origin: str) -> str | None:
    """The member an origin name belongs to, or None for a foreign origin."""
    prefix = origin_prefix(ring)
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
