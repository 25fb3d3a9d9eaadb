"""The engine settings a Campus may never set, and why: the deny half of the parameter
policy.

`parameters.py` is an allow-list, so an unknown name is refused anyway; these names are
listed because a DBA may reasonably try them (they run shell commands, load code, point
the server at other files, risk committed data, or are settings Ringkeeper itself owns),
and each deserves a sentence saying why it is refused rather than "not allowed". Kept in
its own module because this list is the security-relevant part of the policy and is
reviewed on its own. Pure: no I/O.
"""

from __future__ import annotations

from enum import StrEnum


class ParameterRefusal(StrEnum):
    """Why a name can never be set; the text follows "parameters may not set NAME: "."""

    COMMAND = "it runs a shell command as the database user"
    CODE = "it loads code into the server"
    FILES = "it points the server at other files or directories"
    UNSAFE = "turning it off can lose committed data, and failover and pg_rewind rely on it"
    MANAGED = "Ringkeeper manages this setting"


# The settings Ringkeeper's operator and agent own; overriding one would break
# replication, failover or fencing (the agent writes them after the user's lines).
MANAGED_PARAMETERS: tuple[str, ...] = (
    "cluster_name",
    "hot_standby",
    "hot_standby_feedback",
    "listen_addresses",
    "max_replication_slots",
    "max_slot_wal_keep_size",
    "max_wal_senders",
    "password_encryption",
    "port",
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
    "ssl",
    "sync_replication_slots",
    "synchronized_standby_slots",
    "synchronous_commit",
    "synchronous_standby_names",
    "track_commit_timestamp",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_level",
    "wal_log_hints",
)

REFUSED_PARAMETERS: dict[str, ParameterRefusal] = {
    **{n: ParameterRefusal.COMMAND for n in (
        "archive_command", "archive_cleanup_command", "restore_command",
        "recovery_end_command", "ssl_passphrase_command")},
    **{n: ParameterRefusal.CODE for n in (
        "shared_preload_libraries", "local_preload_libraries", "session_preload_libraries",
        "dynamic_library_path", "jit_provider", "archive_library",
        "oauth_validator_libraries", "extension_control_path")},
    **{n: ParameterRefusal.FILES for n in (
        "include", "include_dir", "include_if_exists", "config_file", "hba_file",
        "ident_file", "data_directory", "external_pid_file", "log_directory",
        "log_filename", "krb_server_keyfile", "ssl_ca_file", "ssl_cert_file",
        "ssl_key_file", "ssl_crl_file", "ssl_crl_dir", "ssl_dh_params_file")},
    **{n: ParameterRefusal.UNSAFE for n in ("fsync", "full_page_writes")},
    **{n: ParameterRefusal.MANAGED for n in MANAGED_PARAMETERS},
}


def refusal_message(name: str) -> str:
    """The sentence for a refused name (lower-cased, known to be in REFUSED_PARAMETERS)."""
    return f"parameters may not set {name}: {REFUSED_PARAMETERS[name].value}"
