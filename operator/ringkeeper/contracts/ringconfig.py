"""What one sync sidecar needs to know about its ring, from a file or a Secret.

The operator resolves campuses to their current primaries and writes the result
as JSON (a Secret, because connection strings carry passwords); tests and the
bench write the same JSON to a file. The sidecar re-reads it, so a failover
elsewhere in the ring reaches it without a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..api.v1alpha1.common import parse_quantity
from ..api.v1alpha1.ring import ConflictPolicy, ReplicationRingSpec, Topology
from ..api.v1alpha1.satellite import CoreTable, RowFilter
from .conninfo import root_cert_file, with_root_cert


@dataclass(frozen=True)
class MemberInfo:
    name: str
    dsn: str | None  # None while the member has no primary to reach
    priority: int = 100
    engine: str = "postgresql"
    version: str = "17"


def _member_dsn(name: str, where: dict[str, Any]) -> str | None:
    """The member's DSN; with a `ca` (PEM, for external members) it verifies the server
    against that CA, written to a file only this process's user can read."""
    dsn = where.get("dsn")
    ca = where.get("ca")
    if dsn is None or ca is None:
        return dsn if dsn is None else str(dsn)
    try:
        return with_root_cert(str(dsn), root_cert_file(str(ca)))
    except (OSError, ValueError) as exc:
        raise ValueError(f"ring config: member {name}: {exc}") from None


@dataclass(frozen=True)
class SatelliteInfo:
    """A satellite of one ring member (its parent): where it is and what it keeps.

    Its parent's sidecar syncs it (sync/satellite.py); every member needs its name, as
    its changes travel the ring under its own origin (core.ring.links)."""

    name: str
    parent: str
    dsn: str | None  # None while its instance has no address yet
    tables: tuple[tuple[str, RowFilter | None], ...]  # (schema.table, filter), spec order
    engine: str = "postgresql"
    version: str = "17"

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.tables)

    def filters(self) -> dict[str, RowFilter | None]:
        return dict(self.tables)


def _satellites(raw: Any, members: tuple[MemberInfo, ...]) -> tuple[SatelliteInfo, ...]:
    """{"name": {"parent", "dsn", "engine", "version", "tables": [CoreTable]}} parsed and
    checked: a parent that is no member, a name that is a member's, or a table or filter
    the Satellite model refuses is an error naming the satellite (nothing reaches SQL
    unchecked: filters are validated RowFilter models)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ValueError("ring config: 'satellites' must be an object of name -> satellite")
    member_names = {m.name for m in members}
    out = []
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise ValueError(f"ring config: satellite {name}: must be an object")
        if name in member_names or name == "_seed" or not name:
            raise ValueError(f"ring config: satellite {name!r}: the name is taken by a "
                             "ring member (satellite and member origins must differ)")
        parent = str(body.get("parent", ""))
        if parent not in member_names:
            raise ValueError(f"ring config: satellite {name}: parent {parent!r} is not a "
                             f"member of the ring ({', '.join(sorted(member_names))})")
        try:
            tables = [CoreTable.model_validate(t) for t in body.get("tables") or []]
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"ring config: satellite {name}: invalid table at {at}: "
                             f"{first['msg']}") from None
        if not tables:
            raise ValueError(f"ring config: satellite {name}: no tables")
        if len({t.name for t in tables}) != len(tables):
            raise ValueError(f"ring config: satellite {name}: a table is listed twice")
        dsn = body.get("dsn")
        out.append(SatelliteInfo(
            name=str(name), parent=parent, dsn=None if dsn is None else str(dsn),
            tables=tuple((t.name, t.filter) for t in tables),
            engine=str(body.get("engine", "postgresql")),
            version=str(body.get("version", "17"))))
    return tuple(out)


@dataclass(frozen=True)
class RingConfig:
    ring: str
    members: tuple[MemberInfo, ...]
    topology: Topology = Topology.RING
    policy: ConflictPolicy = ConflictPolicy.LAST_WRITER_WINS
    include: tuple[str, ...] = ("*.*",)
    exclude: tuple[str, ...] = ()
    bypass_after_seconds: float = 60.0
    max_slot_wal_keep_bytes: int = 50 * 1024**3
    seed: tuple[str, ...] = field(default_factory=tuple)  # members to stock-sync on join
    satellites: tuple[SatelliteInfo, ...] = ()

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> MemberInfo:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"{name!r} is not a member of ring {self.ring!r}: members are "
                       f"{', '.join(self.names)}")

    def priorities(self) -> dict[str, int]:
        """Priority by origin; a satellite's changes weigh as much as its parent's."""
        out = {m.name: m.priority for m in self.members}
        for sat in self.satellites:
            out[sat.name] = out.get(sat.parent, 0)
        return out

    def satellite_parents(self) -> dict[str, str]:
        """Satellite name -> its parent member (core.ring.links routes with it)."""
        return {s.name: s.parent for s in self.satellites}

    def satellites_of(self, member: str) -> tuple[SatelliteInfo, ...]:
        return tuple(s for s in self.satellites if s.parent == member)

    @property
    def origins(self) -> list[str]:
        """Every origin of the ring: its members' and its satellites'."""
        return [*self.names, *(s.name for s in self.satellites)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RingConfig:
        """{"ring": name, "spec": <ReplicationRing spec>, "members": {name: {dsn, engine,
        version}}, "seed": [names], "satellites": {name: {parent, dsn, engine, version,
        tables: [{name, filter}]}}}: the spec as users write it, plus where each member
        (and satellite) is."""
        try:
            spec = ReplicationRingSpec.model_validate(data["spec"])
            ring = str(data["ring"])
            where: dict[str, dict[str, Any]] = data.get("members", {})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"ring config needs 'ring', 'spec' and 'members': {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"ring config: invalid spec at {at}: {first['msg']}") from None
        members = tuple(
            MemberInfo(name=m.name, dsn=_member_dsn(m.name, where.get(m.name, {})),
                       priority=m.priority,
                       engine=str(where.get(m.name, {}).get("engine", "postgresql")),
                       version=str(where.get(m.name, {}).get("version", "17")))
            for m in spec.members)
        return cls(
            # The API models keep enum values as plain strings (use_enum_values): typed
            # here, so readers may use .value and match on members.
            ring=ring, members=members, topology=Topology(spec.topology),
            policy=ConflictPolicy(spec.conflicts.policy), include=tuple(spec.tables.include),
            exclude=tuple(spec.tables.exclude),
            bypass_after_seconds=float(spec.healing.bypass_after_seconds),
            max_slot_wal_keep_bytes=int(parse_quantity(spec.healing.max_slot_wal_keep_size)),
            seed=tuple(str(s) for s in data.get("seed", [])),
            satellites=_satellites(data.get("satellites"), members))

    @classmethod
    def load(cls, path: Path) -> RingConfig:
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read ring config {path}: {exc}") from None
