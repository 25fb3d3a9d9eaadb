"""The server settings an instance runs with, rendered from plain inputs.

Ringkeeper owns replication, failover and fencing settings (the same list the
Campus CRD refuses in spec.parameters); the user may add the tuning settings of
the engine's allow-list. Admission already refused everything else, but a
Campus written before that check, or by someone who bypassed admission, must not
reach the server's configuration: the renderer checks each user entry against
the same allow-list again and drops (and reports) what fails, and quotes every
value. Rendering is pure so tests pin the exact file an instance would start with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..engines import EngineProfile
from ..engines.parameters import CONTROL_PATTERN, ParameterProblem, ascii_lower

log = logging.getLogger(__name__)


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
    """A configuration-file string literal: single quotes, ' doubled, backslash escaped.
    Every value is quoted, numbers and booleans too (the server accepts '5432', 'on')."""
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    if re.search(CONTROL_PATTERN, text):
        raise ValueError("a configuration value must not contain control characters")
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


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


# Defaults a user may replace in spec.parameters (they are on the allow-list). The TCP
# keepalives: a client whose network vanished (a satellite cut from its parent, a
# partitioned campus) otherwise keeps its session, its open transaction and its row locks
# at the server for the kernel's two hours; probes after 10 s idle, every 5 s, 3 unanswered
# end it within about 25 s, so local writers are not blocked behind a dead peer's locks.
TUNABLE_DEFAULTS: dict[str, str | int | bool] = {
    "wal_keep_size": "512MB",
    "tcp_keepalives_idle": 10,
    "tcp_keepalives_interval": 5,
    "tcp_keepalives_count": 3,
}


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
        **TUNABLE_DEFAULTS,
        "password_encryption": profile.password_encryption,
        "synchronous_commit": "on",
        "synchronous_standby_names": sync_standby_names(profile, s),
        "recovery_target_timeline": "latest",
    }
    if not s.primary and s.upstream_host:
        conninfo = (f"host={s.upstream_host} port={s.upstream_port or s.port} "
                    f"user={s.replication_user} application_name={s.instance} "
                    "sslmode=prefer connect_timeout=2")
        if profile.failover_slots:
            # The ring's logical slots are failover slots (sync/slots.py): a standby
            # copies them, so the one promoted in a failover still has every ring
            # reader's slot at (or before) where it read. The slot sync worker needs a
            # database to connect to (physical streaming ignores dbname).
            conninfo += " dbname=postgres"
            out["sync_replication_slots"] = True
        if s.passfile:
            conninfo += f" passfile={s.passfile}"
        out["primary_conninfo"] = conninfo
        out["primary_slot_name"] = slot_name(s.instance)
    else:
        out["primary_conninfo"] = ""
        out["primary_slot_name"] = ""
    return out


@dataclass(frozen=True)
class RenderedConfig:
    """The include file's text and the user entries it left out (with why)."""

    text: str
    refused: tuple[ParameterProblem, ...]


def checked_user_parameters(profile: EngineProfile, user: Mapping[str, object]
                            ) -> tuple[dict[str, str], list[ParameterProblem]]:
    """The user's entries the engine's allow-list accepts, by lower-cased name, and the
    refused rest. Same check as admission: a spec that bypassed it changes nothing."""
    entries = {str(k): v for k, v in user.items()}
    strings = {k: v for k, v in entries.items() if isinstance(v, str)}
    refused = [ParameterProblem(k, "parameter values must be strings")
               for k, v in entries.items() if not isinstance(v, str)]
    problems = profile.parameter_problems(strings)
    refused += problems
    bad = {p.name for p in problems}
    kept = {ascii_lower(k): v for k, v in strings.items() if k not in bad}
    return kept, refused


def render_config(profile: EngineProfile, managed: Mapping[str, str | int | bool],
                  user: Mapping[str, object]) -> RenderedConfig:
    """The include file: allowed user settings first, then Ringkeeper's, which win
    (the server takes the last line for a name). A managed default the allow-list lets
    users tune (TUNABLE_DEFAULTS: wal_keep_size, which a user may only raise, and the
    TCP keepalives) is left out when set."""
    kept, refused = checked_user_parameters(profile, user)
    lines = ["# Written by the Ringkeeper agent; edits are overwritten.",
             "# User parameters (spec.parameters):"]
    # Every kept name is on the allow-list, which shares no name with the managed list
    # (MANAGED_PARAMETERS is refused) except TUNABLE_DEFAULTS.
    lines += [f"{k} = {_quote(v)}" for k, v in sorted(kept.items())]
    for problem in refused:
        # ascii() escapes newlines and other control characters: one comment line each.
        lines.append(f"# refused {problem.name!a}: {problem.message!a}")
    lines.append("# Managed by Ringkeeper:")
    lines += [f"{k} = {_quote(v)}" for k, v in managed.items() if k not in kept]
    return RenderedConfig("\n".join(lines) + "\n", tuple(refused))


def render(managed: Mapping[str, str | int | bool], user: Mapping[str, object],
           profile: EngineProfile) -> str:
    """render_config's text; refused entries are logged (names escaped, values never)."""
    out = render_config(profile, managed, user)
    for problem in out.refused:
        log.warning("spec.parameters entry %s not written: %s", ascii(problem.name),
                    problem.message)
    return out.text
