"""KingbaseES profiles: PostgreSQL under other names, NOT yet verified.

KingbaseES (V8R6 and later) is built on PostgreSQL and mostly renames things:
pg_ becomes sys_ for binaries and functions, postgresql.conf becomes
kingbase.conf, psql becomes ksql. The names below follow that rule and the
vendor documentation, but no real KingbaseES server has checked them yet, so
every profile says verified=False and callers can warn accordingly.
"""

from __future__ import annotations

import re

from ringkeeper.engines.parameters import ParameterCatalog
from ringkeeper.engines.postgresql import POSTGRESQL_PARAMETERS
from ringkeeper.engines.profile import Binaries, EngineProfile, SqlNames

# Same pattern the Campus API validates (V8R6, V9R1, V9, ...).
KINGBASE_VERSION_PATTERN = r"^V[0-9]+(R[0-9]+)?$"
_KINGBASE_VERSION = re.compile(KINGBASE_VERSION_PATTERN)

# ASSUMPTION (unverified): the PostgreSQL major each KingbaseES release is based
# on. V8R6 and V9R1 are taken to be PostgreSQL 12 based; any other accepted
# release is assumed to be 12 too until someone checks it on a real server.
# `major` drives feature gates (e.g. failover slots need PostgreSQL 17).
KINGBASE_BASE_MAJOR: dict[str, int] = {"V8R6": 12, "V9R1": 12}
_DEFAULT_BASE_MAJOR = 12

KINGBASE_BINARIES = Binaries(
    server="kingbase",
    ctl="sys_ctl",
    initdb="initdb",
    basebackup="sys_basebackup",
    rewind="sys_rewind",
    client="ksql",
    controldata="sys_controldata",
)

KINGBASE_SQL = SqlNames(
    current_wal_lsn="sys_current_wal_lsn",
    last_wal_receive_lsn="sys_last_wal_receive_lsn",
    last_wal_replay_lsn="sys_last_wal_replay_lsn",
    is_in_recovery="sys_is_in_recovery",
    wal_lsn_diff="sys_wal_lsn_diff",
    promote="sys_promote",
    stat_replication="sys_stat_replication",
    stat_wal_receiver="sys_stat_wal_receiver",
    stat_activity="sys_stat_activity",
    replication_slots="sys_replication_slots",
    create_physical_replication_slot="sys_create_physical_replication_slot",
    drop_replication_slot="sys_drop_replication_slot",
    control_checkpoint="sys_control_checkpoint",
    logical_slot_peek_binary_changes="sys_logical_slot_peek_binary_changes",
    replication_slot_advance="sys_replication_slot_advance",
    replication_origin_create="sys_replication_origin_create",
    replication_origin_session_setup="sys_replication_origin_session_setup",
    replication_origin_xact_setup="sys_replication_origin_xact_setup",
    replication_origin_progress="sys_replication_origin_progress",
    create_logical_replication_slot="sys_create_logical_replication_slot",
    copy_logical_replication_slot="sys_copy_logical_replication_slot",
    replication_origin_session_reset="sys_replication_origin_session_reset",
    replication_origin_drop="sys_replication_origin_drop",
    xact_commit_timestamp_origin="sys_xact_commit_timestamp_origin",
    terminate_backend="sys_terminate_backend",
    replication_origin_status="sys_replication_origin_status",
    replication_origin="sys_replication_origin",
)

# PostgreSQL settings that came after 12 (the assumed base of every KingbaseES
# release), or whose type changed since (wal_compression was a bool in 12).
_NEWER_THAN_BASE = frozenset({
    "autovacuum_vacuum_insert_scale_factor", "autovacuum_vacuum_insert_threshold",
    "client_connection_check_interval", "compute_query_id", "enable_async_append",
    "enable_incremental_sort", "enable_memoize", "hash_mem_multiplier",
    "idle_session_timeout", "log_parameter_max_length", "log_parameter_max_length_on_error",
    "log_recovery_conflict_waits", "logical_decoding_work_mem", "maintenance_io_concurrency",
    "track_wal_io_timing", "wal_compression", "wal_keep_size",
})

# ASSUMPTION (unverified, like the rest of this profile): KingbaseES takes the
# PostgreSQL 12 settings under the same names, types and ranges. Only that common
# core is allowed; anything KingbaseES-specific is refused until checked on a real
# server. Unit-tested only.
KINGBASE_PARAMETERS = ParameterCatalog("kingbase", tuple(
    p for p in POSTGRESQL_PARAMETERS.params
    if p.since == 0 and p.name not in _NEWER_THAN_BASE
))


def kingbase_profile(version: str) -> EngineProfile:
    """The profile of one KingbaseES release ("V8R6", "V9R1", ...)."""
    if not _KINGBASE_VERSION.match(version):
        raise ValueError(
            f"kingbase version {version!r} is not supported: use a KingbaseES release "
            "name such as V8R6 or V9R1 (V, major, optionally R and release)"
        )
    return EngineProfile(
        engine="kingbase",
        version=version,
        major=KINGBASE_BASE_MAJOR.get(version, _DEFAULT_BASE_MAJOR),
        default_port=54321,
        default_database="test",
        superuser="system",
        image=f"ghcr.io/ringkeeper/kingbase:{version.lower()}",
        binaries=KINGBASE_BINARIES,
        sql=KINGBASE_SQL,
        config_file="kingbase.conf",
        auto_config_file="kingbase.auto.conf",
        hba_file="sys_hba.conf",
        standby_signal="standby.signal",
        logical_plugin="kboutput",
        auth_methods=("scram-sha-256", "md5"),
        password_encryption="scram-sha-256",
        verified=False,
        parameters=KINGBASE_PARAMETERS,
    )
