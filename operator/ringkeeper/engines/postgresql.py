"""PostgreSQL profiles: the reference engine, verified against real servers.

Only the majors Ringkeeper is tested on are accepted (15 to 18): older ones lack
pieces the failover logic relies on, and an untested major should fail loudly
at admission rather than at the first failover.
"""

from __future__ import annotations

from ringkeeper.engines.profile import Binaries, EngineProfile, SqlNames

SUPPORTED_POSTGRESQL_VERSIONS: tuple[str, ...] = ("15", "16", "17", "18")

POSTGRESQL_BINARIES = Binaries(
    server="postgres",
    ctl="pg_ctl",
    initdb="initdb",
    basebackup="pg_basebackup",
    rewind="pg_rewind",
    client="psql",
    controldata="pg_controldata",
)

POSTGRESQL_SQL = SqlNames(
    current_wal_lsn="pg_current_wal_lsn",
    last_wal_receive_lsn="pg_last_wal_receive_lsn",
    last_wal_replay_lsn="pg_last_wal_replay_lsn",
    is_in_recovery="pg_is_in_recovery",
    wal_lsn_diff="pg_wal_lsn_diff",
    promote="pg_promote",
    stat_replication="pg_stat_replication",
    stat_wal_receiver="pg_stat_wal_receiver",
    replication_slots="pg_replication_slots",
    create_physical_replication_slot="pg_create_physical_replication_slot",
    drop_replication_slot="pg_drop_replication_slot",
    control_checkpoint="pg_control_checkpoint",
    logical_slot_peek_binary_changes="pg_logical_slot_peek_binary_changes",
    replication_slot_advance="pg_replication_slot_advance",
    replication_origin_create="pg_replication_origin_create",
    replication_origin_session_setup="pg_replication_origin_session_setup",
    replication_origin_xact_setup="pg_replication_origin_xact_setup",
    replication_origin_progress="pg_replication_origin_progress",
    create_logical_replication_slot="pg_create_logical_replication_slot",
    copy_logical_replication_slot="pg_copy_logical_replication_slot",
    replication_origin_session_reset="pg_replication_origin_session_reset",
    replication_origin_drop="pg_replication_origin_drop",
    xact_commit_timestamp_origin="pg_xact_commit_timestamp_origin",
    terminate_backend="pg_terminate_backend",
    replication_origin_status="pg_replication_origin_status",
    replication_origin="pg_replication_origin",
)


def postgresql_profile(version: str) -> EngineProfile:
    """The profile of one PostgreSQL major ("15" ... "18")."""
    if version not in SUPPORTED_POSTGRESQL_VERSIONS:
        supported = ", ".join(SUPPORTED_POSTGRESQL_VERSIONS[:-1])
        raise ValueError(
            f"postgresql version {version} is not supported: "
            f"use {supported} or {SUPPORTED_POSTGRESQL_VERSIONS[-1]}"
        )
    return EngineProfile(
        engine="postgresql",
        version=version,
        major=int(version),
        default_port=5432,
        default_database="postgres",
        superuser="postgres",
        image=f"ghcr.io/ringkeeper/postgres:{version}",
        binaries=POSTGRESQL_BINARIES,
        sql=POSTGRESQL_SQL,
        config_file="postgresql.conf",
        auto_config_file="postgresql.auto.conf",
        hba_file="pg_hba.conf",
        standby_signal="standby.signal",
        logical_plugin="pgoutput",
        auth_methods=("scram-sha-256",),
        password_encryption="scram-sha-256",
        verified=True,
    )
