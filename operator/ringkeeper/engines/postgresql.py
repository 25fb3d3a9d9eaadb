"""PostgreSQL profiles: the reference engine, verified against real servers.

Only the majors Ringkeeper is tested on are accepted (15 to 18): older ones lack
pieces the failover logic relies on, and an untested major should fail loudly
at admission rather than at the first failover.
"""

from __future__ import annotations

from ringkeeper.engines.parameters import Param, ParameterCatalog
from ringkeeper.engines.parameters import ParamType as T
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
    stat_activity="pg_stat_activity",
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


def _p(name: str, type_: T, lo: float = 0, hi: float = 0, unit: str = "",
       since: int = 0) -> Param:
    return Param(name, type_, lo, hi, unit, since=since)


def _enum(name: str, *values: str) -> Param:
    return Param(name, T.ENUM, values=values)


_BOOL = T.BOOL
_INT = T.INT
_REAL = T.REAL
_INT_MAX = 2147483647
# Planner costs and other reals: the server allows up to 1.8e308, a sane file never
# needs more than a billion (and the value grammar allows 10 digits).
_COST_MAX = 1e9
# Printable ASCII except ' and \ (quoting would cope; nothing legitimate needs them).
_PRINTABLE = r"[ -&(-\[\]-~]{0,256}"
# Time zone names as in the IANA database ("Asia/Shanghai", "UTC", "Etc/GMT-8").
_ZONE = r"[A-Za-z][A-Za-z0-9_+/-]{0,63}"
_ZONE_HINT = ("a time zone name such as Asia/Shanghai or UTC (letters, digits, '_', '+', "
              "'-', '/'); the server refuses names it does not know")
_DATESTYLE = (r"(?i)(ISO|SQL|Postgres|German)"
              r"(, ?(DMY|MDY|YMD|Euro|European|US|NonEuro|NonEuropean))?")
_LEVELS = ("debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning",
           "error", "log", "fatal", "panic")

# The settings a hospital DBA tunes, with PostgreSQL's own types, units and ranges
# (the strictest of 15..18, checked against real servers by
# tests/integration/test_parameters_engine.py). Some ranges are narrower than the
# server's, each for a stated reason. Everything not listed is refused.
POSTGRESQL_PARAMETERS = ParameterCatalog("postgresql", (
    # Memory.
    _p("shared_buffers", _INT, 16, 1073741823, "8kB"),
    _p("work_mem", _INT, 64, _INT_MAX, "kB"),
    _p("maintenance_work_mem", _INT, 1024, _INT_MAX, "kB"),
    _p("autovacuum_work_mem", _INT, -1, _INT_MAX, "kB"),
    _p("logical_decoding_work_mem", _INT, 64, _INT_MAX, "kB"),
    _p("effective_cache_size", _INT, 1, _INT_MAX, "8kB"),
    _p("temp_buffers", _INT, 100, 1073741823, "8kB"),
    _p("wal_buffers", _INT, -1, 262143, "8kB"),
    _p("temp_file_limit", _INT, -1, _INT_MAX, "kB"),
    _p("hash_mem_multiplier", _REAL, 1, 1000),
    # 'on' stops the server where the node has no huge pages; 'try' falls back.
    _enum("huge_pages", "try", "off"),
    # 0 and 128kB..16GB are valid; 1..127 kB are not, so the range starts at 128.
    _p("vacuum_buffer_usage_limit", _INT, 128, 16777216, "kB", since=16),
    # Connections. Below 20 the reserved superuser slots and Ringkeeper's own
    # agent, sync and metrics connections leave no room for applications.
    _p("max_connections", _INT, 20, 10000),
    _p("max_prepared_transactions", _INT, 0, 10000),
    _p("max_locks_per_transaction", _INT, 10, 100000),
    _p("max_pred_locks_per_transaction", _INT, 10, 100000),
    _p("max_worker_processes", _INT, 0, 1024),
    _p("tcp_keepalives_idle", _INT, 0, _INT_MAX, "s"),
    _p("tcp_keepalives_interval", _INT, 0, _INT_MAX, "s"),
    _p("tcp_keepalives_count", _INT, 0, _INT_MAX),
    _p("client_connection_check_interval", _INT, 0, _INT_MAX, "ms"),
    _p("authentication_timeout", _INT, 1, 600, "s"),
    # WAL and checkpoints. wal_keep_size is also set by Ringkeeper (512MB, so a
    # briefly disconnected standby can catch up); a user may only raise it.
    # Both must be at least two WAL segments (16MB each as initdb makes them), or the
    # server refuses to start: a check `postgres -C` cannot show.
    _p("max_wal_size", _INT, 32, _INT_MAX, "MB"),
    _p("min_wal_size", _INT, 32, _INT_MAX, "MB"),
    _p("wal_keep_size", _INT, 512, _INT_MAX, "MB"),
    _p("checkpoint_timeout", _INT, 30, 86400, "s"),
    _p("checkpoint_completion_target", _REAL, 0, 1),
    _p("checkpoint_warning", _INT, 0, _INT_MAX, "s"),
    _p("checkpoint_flush_after", _INT, 0, 256, "8kB"),
    # lz4 and zstd depend on how the server was built; pglz is always there.
    _enum("wal_compression", "on", "off", "pglz"),
    _p("wal_writer_delay", _INT, 1, 10000, "ms"),
    _p("wal_writer_flush_after", _INT, 0, _INT_MAX, "8kB"),
    _p("commit_delay", _INT, 0, 100000),
    _p("commit_siblings", _INT, 0, 1000),
    _p("bgwriter_delay", _INT, 10, 10000, "ms"),
    _p("bgwriter_lru_maxpages", _INT, 0, 1073741823),
    _p("bgwriter_lru_multiplier", _REAL, 0, 10),
    _p("bgwriter_flush_after", _INT, 0, 256, "8kB"),
    _p("backend_flush_after", _INT, 0, 256, "8kB"),
    # Planner.
    _p("random_page_cost", _REAL, 0, _COST_MAX),
    _p("seq_page_cost", _REAL, 0, _COST_MAX),
    _p("cpu_tuple_cost", _REAL, 0, _COST_MAX),
    _p("cpu_index_tuple_cost", _REAL, 0, _COST_MAX),
    _p("cpu_operator_cost", _REAL, 0, _COST_MAX),
    _p("parallel_setup_cost", _REAL, 0, _COST_MAX),
    _p("parallel_tuple_cost", _REAL, 0, _COST_MAX),
    _p("min_parallel_table_scan_size", _INT, 0, 715827882, "8kB"),
    _p("min_parallel_index_scan_size", _INT, 0, 715827882, "8kB"),
    _p("effective_io_concurrency", _INT, 0, 1000),
    _p("maintenance_io_concurrency", _INT, 0, 1000),
    _p("default_statistics_target", _INT, 1, 10000),
    _p("from_collapse_limit", _INT, 1, _INT_MAX),
    _p("join_collapse_limit", _INT, 1, _INT_MAX),
    _p("geqo", _BOOL),
    _p("geqo_threshold", _INT, 2, _INT_MAX),
    _enum("plan_cache_mode", "auto", "force_generic_plan", "force_custom_plan"),
    *(_p(f"enable_{n}", _BOOL) for n in (
        "async_append", "bitmapscan", "gathermerge", "hashagg", "hashjoin",
        "incremental_sort", "indexonlyscan", "indexscan", "material", "memoize",
        "mergejoin", "nestloop", "parallel_append", "parallel_hash", "partition_pruning",
        "partitionwise_aggregate", "partitionwise_join", "seqscan", "sort", "tidscan")),
    _p("jit", _BOOL),
    _p("jit_above_cost", _REAL, -1, _COST_MAX),
    _p("jit_inline_above_cost", _REAL, -1, _COST_MAX),
    _p("jit_optimize_above_cost", _REAL, -1, _COST_MAX),
    # Parallel query.
    _p("max_parallel_workers", _INT, 0, 1024),
    _p("max_parallel_workers_per_gather", _INT, 0, 1024),
    _p("max_parallel_maintenance_workers", _INT, 0, 1024),
    _p("parallel_leader_participation", _BOOL),
    # Logging. log_connections became a list in 18, which still takes on/off.
    _p("log_min_duration_statement", _INT, -1, _INT_MAX, "ms"),
    _enum("log_statement", "none", "ddl", "mod", "all"),
    _p("log_connections", _BOOL),
    _p("log_disconnections", _BOOL),
    _p("log_lock_waits", _BOOL),
    _p("log_checkpoints", _BOOL),
    _p("log_duration", _BOOL),
    _p("log_replication_commands", _BOOL),
    _p("log_recovery_conflict_waits", _BOOL),
    _p("log_autovacuum_min_duration", _INT, -1, _INT_MAX, "ms"),
    _p("log_temp_files", _INT, -1, _INT_MAX, "kB"),
    _enum("log_min_messages", *_LEVELS),
    _enum("log_min_error_statement", *_LEVELS),
    _enum("log_error_verbosity", "terse", "default", "verbose"),
    _p("log_parameter_max_length", _INT, -1, 1073741823, "B"),
    _p("log_parameter_max_length_on_error", _INT, -1, 1073741823, "B"),
    Param("log_line_prefix", T.STRING, pattern=_PRINTABLE,
          hint="printable ASCII text without ' or \\, at most 256 characters"),
    Param("log_timezone", T.STRING, pattern=_ZONE, hint=_ZONE_HINT),
    Param("timezone", T.STRING, pattern=_ZONE, hint=_ZONE_HINT),
    Param("datestyle", T.STRING, pattern=_DATESTYLE,
          hint="an output style (ISO, SQL, Postgres, German), optionally followed by "
          "', ' and an order (DMY, MDY, YMD), e.g. 'ISO, YMD'"),
    _enum("intervalstyle", "postgres", "postgres_verbose", "sql_standard", "iso_8601"),
    _p("extra_float_digits", _INT, -15, 3),
    _enum("bytea_output", "hex", "escape"),
    _enum("default_transaction_isolation", "read committed", "repeatable read",
          "serializable", "read uncommitted"),
    # Timeouts.
    _p("statement_timeout", _INT, 0, _INT_MAX, "ms"),
    _p("lock_timeout", _INT, 0, _INT_MAX, "ms"),
    _p("idle_in_transaction_session_timeout", _INT, 0, _INT_MAX, "ms"),
    _p("idle_session_timeout", _INT, 0, _INT_MAX, "ms"),
    _p("transaction_timeout", _INT, 0, _INT_MAX, "ms", since=17),
    _p("deadlock_timeout", _INT, 1, _INT_MAX, "ms"),
    # Autovacuum and vacuum. At most 16 autovacuum workers: PostgreSQL 18 only
    # starts as many as autovacuum_worker_slots (16 by default).
    _p("autovacuum", _BOOL),
    _p("autovacuum_max_workers", _INT, 1, 16),
    _p("autovacuum_naptime", _INT, 1, 2147483, "s"),
    _p("autovacuum_vacuum_threshold", _INT, 0, _INT_MAX),
    _p("autovacuum_vacuum_scale_factor", _REAL, 0, 100),
    _p("autovacuum_vacuum_insert_threshold", _INT, -1, _INT_MAX),
    _p("autovacuum_vacuum_insert_scale_factor", _REAL, 0, 100),
    _p("autovacuum_vacuum_max_threshold", _INT, -1, _INT_MAX, since=18),
    _p("autovacuum_analyze_threshold", _INT, 0, _INT_MAX),
    _p("autovacuum_analyze_scale_factor", _REAL, 0, 100),
    _p("autovacuum_freeze_max_age", _INT, 100000, 2000000000),
    _p("autovacuum_multixact_freeze_max_age", _INT, 10000, 2000000000),
    _p("autovacuum_vacuum_cost_delay", _REAL, -1, 100, "ms"),
    _p("autovacuum_vacuum_cost_limit", _INT, -1, 10000),
    _p("vacuum_cost_delay", _REAL, 0, 100, "ms"),
    _p("vacuum_cost_limit", _INT, 1, 10000),
    _p("vacuum_cost_page_hit", _INT, 0, 10000),
    _p("vacuum_cost_page_miss", _INT, 0, 10000),
    _p("vacuum_cost_page_dirty", _INT, 0, 10000),
    _p("vacuum_freeze_min_age", _INT, 0, 1000000000),
    _p("vacuum_freeze_table_age", _INT, 0, 2000000000),
    _p("vacuum_multixact_freeze_min_age", _INT, 0, 1000000000),
    _p("vacuum_multixact_freeze_table_age", _INT, 0, 2000000000),
    # Statistics.
    _p("track_activities", _BOOL),
    _p("track_counts", _BOOL),
    _p("track_io_timing", _BOOL),
    _p("track_wal_io_timing", _BOOL),
    _enum("track_functions", "none", "pl", "all"),
    _p("track_activity_query_size", _INT, 100, 1048576, "B"),
    _enum("compute_query_id", "auto", "regress", "on", "off"),
))


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
        parameters=POSTGRESQL_PARAMETERS,
    )
