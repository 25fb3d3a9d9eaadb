"""The server settings an instance runs with, rendered from plain inputs.

Ringkeeper owns replication, failover and fencing settings (the same list the
Campus CRD refuses in spec.parameters); everything else comes from the user.
Rendering is pure so tests pin the exact file an instance would start with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..engines import EngineProfile


@dataclass(frozen=True)
class InstanceSettings:
    campus: str
    instance: str
    pod_ip: str
    port: int
    socket_dir: str
    primary: bool
    upstream_host: str | None = None
    upstream_port: int | None = None
    replication_user: str = "ringkeeper_repl"
    passfile: str | None = None
    sync_method: str = "any"
    sync_number: int = 0
    peers: tuple[str, ...] = ()
    durability: str = "required"
    connected_standbys: int | None = None


def slot_name(instance: str) -> str:
    """Physical slot on the primary for one standby (slot names allow [a-z0-9_] only)."""
    return "ringkeeper_" + "".join(c if c.isalnum() else "_" for c in instance.lower())


def _quote(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sync_standby_names(profile: EngineProfile, s: InstanceSettings) -> str:
    if not s.primary or s.sync_number < 1 or not s.peers:
        return ""
    number = min(s.sync_number, len(s.peers))
    if s.durability == "preferred" and s.connected_standbys is not None:
        # preferred: keep accepting writes with fewer standbys than asked for.
        number = min(number, s.connected_standbys)
        if number < 1:
            return ""
    return profile.synchronous_standby_names(s.sync_method, number, list(s.peers))


def managed_settings(profile: EngineProfile, s: InstanceSettings) -> dict[str, str | int | bool]:
    out: dict[str, str | int | bool] = {
        "listen_addresses": s.pod_ip,
        "port": s.port,
        "unix_socket_directories": s.socket_dir,
        "cluster_name": s.campus,
        "wal_level": "logical",
        "hot_standby": True,
        "hot_standby_feedback": True,
        "track_commit_timestamp": True,
        "wal_log_hints": True,
        "max_wal_senders": 20,
        "max_replication_slots": 20,
        "wal_keep_size": "512MB",
        "password_encryption": profile.password_encryption,
        "synchronous_commit": "on",
        "synchronous_standby_names": sync_standby_names(profile, s),
        "recovery_target_timeline": "latest",
    }
    if not s.primary and s.upstream_host:
        conninfo = (f"host={s.upstream_host} port={s.upstream_port or s.port} "
                    f"user={s.replication_user} application_name={s.instance} "
                    "sslmode=prefer connect_timeout=2")
        if s.passfile:
            conninfo += f" passfile={s.passfile}"
        out["primary_conninfo"] = conninfo
        out["primary_slot_name"] = slot_name(s.instance)
    else:
        out["primary_conninfo"] = ""
        out["primary_slot_name"] = ""
    return out


def render(managed: Mapping[str, str | int | bool], user: Mapping[str, str]) -> str:
    lines = ["# Written by the Ringkeeper agent; edits are overwritten.",
             "# User parameters (spec.parameters):"]
    lines += [f"{k} = {_quote(v)}" for k, v in sorted(user.items()) if k not in managed]
    lines.append("# Managed by Ringkeeper:")
    lines += [f"{k} = {_quote(v)}" for k, v in managed.items()]
    return "\n".join(lines) + "\n"
