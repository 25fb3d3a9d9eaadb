"""What an engine is, as data: the one place PostgreSQL and KingbaseES differ.

KingbaseES is a PostgreSQL derivative that renames binaries (sys_ctl), files
(kingbase.conf, sys_hba.conf) and SQL functions (sys_current_wal_lsn). If the
rest of Ringkeeper branched on the engine name, every new statement would be a
chance to forget one spelling. Instead the rest of the code asks an
`EngineProfile` for names and for the few statements it runs, so adding or
correcting an engine touches only the engine modules. This module is pure: no
I/O, only data and string building.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ringkeeper.engines.parameters import ParameterCatalog, ParameterProblem

# PostgreSQL added failover slots (CREATE ... failover => true, sync_replication_slots)
# in 17; before that a promoted standby has no copy of the primary's logical slots.
_FAILOVER_SLOTS_MIN_POSTGRESQL_MAJOR = 17
# pgoutput's origin option (CREATE SUBSCRIPTION ... origin = none) came in PostgreSQL 16.
_ORIGIN_FILTER_MIN_POSTGRESQL_MAJOR = 16

_SYNC_METHODS = {"any": "ANY", "first": "FIRST"}

# hba user names Ringkeeper writes unquoted; hba has no escape for '"', and
# keywords (all, replication, ...) or +group/@file prefixes would change meaning.
_HBA_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HBA_KEYWORDS = frozenset({"all", "sameuser", "samerole", "samegroup", "replication"})


@dataclass(frozen=True)
class Binaries:
    """Executable names inside the engine's bin directory."""

    server: str
    ctl: str
    initdb: str
    basebackup: str
    rewind: str
    client: str
    controldata: str


@dataclass(frozen=True)
class SqlNames:
    """Functions and views as the engine spells them."""

    current_wal_lsn: str
    last_wal_receive_lsn: str
    last_wal_replay_lsn: str
    is_in_recovery: str
    wal_lsn_diff: str
    promote: str
    stat_replication: str
    stat_wal_receiver: str
    stat_activity: str
    replication_slots: str
    create_physical_replication_slot: str
    drop_replication_slot: str
    control_checkpoint: str
    logical_slot_peek_binary_changes: str
    replication_slot_advance: str
    replication_origin_create: str
    replication_origin_session_setup: str
    replication_origin_xact_setup: str
    replication_origin_progress: str
    create_logical_replication_slot: str
    copy_logical_replication_slot: str
    replication_origin_session_reset: str
    replication_origin_drop: str
    xact_commit_timestamp_origin: str
    replication_origin: str
    terminate_backend: str
    replication_origin_status: str


@dataclass(frozen=True)
class EngineProfile:
    """Everything engine-specific Ringkeeper needs: names, defaults and statements."""

    engine: str
    version: str
    major: int
    default_port: int
    default_database: str
    superuser: str
    image: str
    binaries: Binaries
    sql: SqlNames
    config_file: str
    auto_config_file: str
    hba_file: str
    standby_signal: str
    logical_plugin: str
    auth_methods: tuple[str, ...]
    password_encryption: str
    verified: bool
    # The spec.parameters this engine may be given (an allow-list with types and ranges).
    parameters: ParameterCatalog

    def parameter_problems(self, params: Mapping[str, str]) -> list[ParameterProblem]:
        """Every spec.parameters entry this engine and version must not be given."""
        return self.parameters.problems(params, major=self.major, version=self.version)

    @property
    def failover_slots(self) -> bool:
        """Whether logical slots can be synchronised to standbys (PostgreSQL 17+ only)."""
        return self.engine == "postgresql" and self.major >= _FAILOVER_SLOTS_MIN_POSTGRESQL_MAJOR

    @property
    def origin_filter(self) -> bool:
        """Whether the logical output plugin takes origin 'none' (PostgreSQL 16+): send
        only changes written at this server, filtered before they are even queued."""
        return self.engine == "postgresql" and self.major >= _ORIGIN_FILTER_MIN_POSTGRESQL_MAJOR

    @property
    def pg_rewind_needs_wal_log_hints(self) -> bool:
        """Always True: rewind needs wal_log_hints unless data checksums are on, and
        Ringkeeper does not assume checksums (images and adopted clusters may lack them)."""
        return True

    def status_query(self) -> str:
        """One row: in_recovery, current_lsn, receive_lsn, replay_lsn, timeline,
        receiver_status. Needs a superuser or pg_monitor (control and receiver
        functions hide their data from other roles)."""
        s = self.sql
        # current_wal_lsn() raises during recovery, hence the CASE (it is volatile, so
        # the planner never evaluates it early). The receiver view has at most one row.
        return (
            "SELECT "
            f"{s.is_in_recovery}() AS in_recovery, "
            f"CASE WHEN {s.is_in_recovery}() THEN NULL "
            f"ELSE {s.current_wal_lsn}()::text END AS current_lsn, "
            f"{s.last_wal_receive_lsn}()::text AS receive_lsn, "
            f"{s.last_wal_replay_lsn}()::text AS replay_lsn, "
            f"(SELECT timeline_id FROM {s.control_checkpoint}())::int AS timeline, "
            f"(SELECT status FROM {s.stat_wal_receiver} LIMIT 1)::text AS receiver_status"
        )

    def sync_wait_query(self) -> str:
        """One row on a primary: how many backends wait for their synchronous standbys to
        confirm a commit (wait_event SyncRep), and the oldest wait in seconds (NULL when
        none waits). A commit that waits is locally durable but not acknowledged."""
        return (
            "SELECT count(*)::int AS waiters, "
            "EXTRACT(EPOCH FROM max(now() - query_start))::float8 AS oldest "
            f"FROM {self.sql.stat_activity} WHERE wait_event = 'SyncRep'"
        )

    def receiver_silence_query(self) -> str:
        """At most one row on a replica: its WAL receiver's state and the seconds since it
        last received anything from the primary (NULL before its first message)."""
        return (
            "SELECT status::text AS status, "
            "EXTRACT(EPOCH FROM now() - last_msg_receipt_time)::float8 AS silent "
            f"FROM {self.sql.stat_wal_receiver} LIMIT 1"
        )

    def replication_query(self) -> str:
        """The standbys connected to this server, one row each, ordered by name."""
        s = self.sql
        # A cascading standby also has walsenders, and current_wal_lsn() raises there:
        # measure against its own replay position instead.
        here = (
            f"CASE WHEN {s.is_in_recovery}() THEN {s.last_wal_replay_lsn}() "
            f"ELSE {s.current_wal_lsn}() END"
        )
        # host() and not client_addr::text, which keeps the mask ('10.1.2.3/32').
        return (
            "SELECT application_name, host(client_addr) AS client_addr, state, sync_state, "
            "sent_lsn::text AS sent_lsn, write_lsn::text AS write_lsn, "
            "flush_lsn::text AS flush_lsn, replay_lsn::text AS replay_lsn, "
            f"({s.wal_lsn_diff}({here}, replay_lsn))::bigint AS replay_lag_bytes "
            f"FROM {s.stat_replication} ORDER BY application_name"
        )

    def synchronous_standby_names(self, method: str, number: int, names: Sequence[str]) -> str:
        """The synchronous_standby_names value: 'ANY 2 ("a", "b")' or 'FIRST 1 (...)'.

        Returns '' (asynchronous) when number is 0 or there are no names yet; whether
        that is acceptable (dataDurability) is the caller's decision, not the engine's.
        Names are sorted so an unchanged set never rewrites the configuration.
        """
        keyword = _SYNC_METHODS.get(str(method).lower())
        if keyword is None:
            raise ValueError(f"unknown synchronous method {method!r}: use any or first")
        if number < 0:
            raise ValueError(f"synchronous standby number must not be negative, got {number}")
        if any(not n for n in names):
            raise ValueError("synchronous standby names must not be empty")
        unique = sorted(set(names))
        if len(unique) != len(names):
            raise ValueError(f"synchronous standby names must be unique, got {list(names)}")
        if number == 0 or not unique:
            return ""
        if number > len(unique):
            raise ValueError(
                f"cannot wait for {number} synchronous standbys: only {len(unique)} named"
            )
        quoted = ", ".join('"' + n.replace('"', '""') + '"' for n in unique)
        return f"{keyword} {number} ({quoted})"

    def hba_lines(self, *, pod_cidr: str, replication_user: str, tls: bool) -> list[str]:
        """Host-based authentication lines: password auth everywhere, never trust;
        network access only from the pod network, over TLS when tls is set."""
        try:
            network = ipaddress.ip_network(pod_cidr, strict=True)
        except ValueError as exc:
            raise ValueError(f"pod CIDR {pod_cidr!r} is not a valid network: {exc}") from None
        if not _HBA_USER.match(replication_user) or replication_user in _HBA_KEYWORDS:
            raise ValueError(
                f"replication user {replication_user!r} must be a plain identifier "
                "(letters, digits, underscore) and not an hba keyword"
            )
        method = self.auth_methods[0]
        host = "hostssl" if tls else "host"
        rows = [
            ("local", "all", "all", "", method),
            (host, "replication", replication_user, str(network), method),
            (host, "all", "all", str(network), method),
        ]
        # One space at least between columns, aligned for people reading the file.
        return [f"{k:<7} {db:<11} {user:<23} {addr:<39} {m}" for k, db, user, addr, m in rows]
