"""spec.parameters: an allow-list per engine, checked at admission, by `validate` and again
by the agent before it writes the server's configuration.

The admission tables use only `validate()` (the API that existed before the allow-list),
so they can be run against older code to show they fail there.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ringkeeper.api.validation import validate


def campus(params: dict[str, Any], engine: str = "postgresql", version: str = "17"
           ) -> dict[str, Any]:
    return {
        "apiVersion": "ringkeeper.io/v1alpha1",
        "kind": "Campus",
        "metadata": {"name": "params"},
        "spec": {"engine": engine, "version": version, "parameters": params},
    }


def messages(doc: dict[str, Any]) -> str:
    return "\n".join(str(p) for p in validate(doc))


COMMAND = "it runs a shell command as the database user"
CODE = "it loads code into the server"
FILES = "it points the server at other files or directories"


@pytest.mark.parametrize(("name", "canonical", "why"), [
    ("archive_command", "archive_command", COMMAND),
    ("ARCHIVE_COMMAND", "archive_command", COMMAND),
    ("Archive_Command", "archive_command", COMMAND),
    ("restore_command", "restore_command", COMMAND),
    ("Restore_Command", "restore_command", COMMAND),
    ("RESTORE_COMMAND", "restore_command", COMMAND),
    ("archive_cleanup_command", "archive_cleanup_command", COMMAND),
    ("Archive_Cleanup_Command", "archive_cleanup_command", COMMAND),
    ("recovery_end_command", "recovery_end_command", COMMAND),
    ("ssl_passphrase_command", "ssl_passphrase_command", COMMAND),
    ("shared_preload_libraries", "shared_preload_libraries", CODE),
    ("SHARED_PRELOAD_LIBRARIES", "shared_preload_libraries", CODE),
    ("Session_Preload_Libraries", "session_preload_libraries", CODE),
    ("local_preload_libraries", "local_preload_libraries", CODE),
    ("dynamic_library_path", "dynamic_library_path", CODE),
    ("jit_provider", "jit_provider", CODE),
    ("archive_library", "archive_library", CODE),
    ("include", "include", FILES),
    ("INCLUDE", "include", FILES),
    ("Include_Dir", "include_dir", FILES),
    ("include_if_exists", "include_if_exists", FILES),
    ("config_file", "config_file", FILES),
    ("hba_file", "hba_file", FILES),
    ("data_directory", "data_directory", FILES),
    ("external_pid_file", "external_pid_file", FILES),
    ("log_directory", "log_directory", FILES),
    ("ssl_key_file", "ssl_key_file", FILES),
    ("fsync", "fsync", "turning it off can lose committed data"),
    ("Full_Page_Writes", "full_page_writes", "turning it off can lose committed data"),
    ("port", "port", "Ringkeeper manages this setting"),
    ("WAL_LEVEL", "wal_level", "Ringkeeper manages this setting"),
    ("Synchronous_Standby_Names", "synchronous_standby_names",
     "Ringkeeper manages this setting"),
    ("primary_conninfo", "primary_conninfo", "Ringkeeper manages this setting"),
    ("password_encryption", "password_encryption", "Ringkeeper manages this setting"),
])
@pytest.mark.parametrize("engine,version", [("postgresql", "17"), ("kingbase", "V8R6")])
def test_refused_names_in_any_case(name: str, canonical: str, why: str, engine: str,
                                   version: str) -> None:
    text = messages(campus({name: "/bin/sh -c 'env > /tmp/x'"}, engine, version))
    assert f"spec.parameters: parameters may not set {canonical}: {why}" in text


NAME_SHAPE = "parameter names must start with a letter and hold only letters, digits"


@pytest.mark.parametrize(("params", "expected"), [
    pytest.param({"work_mem\narchive_mode": "on"}, NAME_SHAPE, id="newline-in-name"),
    pytest.param({"work_mem = '1MB'\narchive_command": "x"}, NAME_SHAPE, id="line-in-name"),
    pytest.param({"": "on"}, NAME_SHAPE, id="empty-name"),
    pytest.param({"1work_mem": "1MB"}, NAME_SHAPE, id="digit-first"),
    pytest.param({"work-mem": "1MB"}, NAME_SHAPE, id="dash"),
    pytest.param({"work_mem ": "1MB"}, NAME_SHAPE, id="trailing-space"),
    pytest.param({"wörk_mem": "1MB"}, NAME_SHAPE, id="unicode-name"),
    pytest.param({"w" * 64: "1"}, NAME_SHAPE, id="name-too-long"),
    pytest.param({"no_such_setting": "1"},
                 "parameters may not set no_such_setting: it is not one of the settings "
                 "Ringkeeper allows for postgresql 17", id="unknown-name"),
    pytest.param({"auto_explain.log_min_duration": "0"},
                 "parameters may not set auto_explain.log_min_duration: it is not one of",
                 id="extension-setting"),
    pytest.param({"logging_collector": "on"}, "parameters may not set logging_collector",
                 id="not-allow-listed"),
    pytest.param({"max_connections": "100000"},
                 "parameter max_connections must be a whole number from 20 to 10000",
                 id="int-above-max"),
    pytest.param({"max_connections": "5"}, "parameter max_connections must be a whole number",
                 id="int-below-min"),
    pytest.param({"max_connections": "1e3"}, "parameter max_connections must be",
                 id="int-exponent"),
    pytest.param({"max_connections": "0x64"}, "parameter max_connections must be", id="hex"),
    pytest.param({"work_mem": "32kB"},
                 "parameter work_mem must be a whole number from 64 to 2147483647 kB",
                 id="memory-below-min"),
    pytest.param({"work_mem": "64mb"}, "parameter work_mem must be", id="unit-case"),
    pytest.param({"work_mem": "64 MB"}, "parameter work_mem must be", id="space-before-unit"),
    pytest.param({"work_mem": "100000B"}, "parameter work_mem must be", id="not-whole-kB"),
    pytest.param({"shared_buffers": "4s"}, "parameter shared_buffers must be",
                 id="time-unit-on-memory"),
    pytest.param({"checkpoint_timeout": "10s"},
                 "parameter checkpoint_timeout must be a whole number from 30 to 86400 s",
                 id="time-below-min"),
    pytest.param({"checkpoint_timeout": "1500ms"}, "parameter checkpoint_timeout must be",
                 id="not-whole-seconds"),
    pytest.param({"checkpoint_completion_target": "1.5"},
                 "parameter checkpoint_completion_target must be a number from 0 to 1",
                 id="real-above-max"),
    pytest.param({"log_statement": "everything"},
                 "parameter log_statement must be one of: none, ddl, mod, all", id="bad-enum"),
    pytest.param({"huge_pages": "on"}, "parameter huge_pages must be one of: try, off",
                 id="enum-narrowed"),
    pytest.param({"jit": "maybe"}, "parameter jit must be on or off", id="bad-bool"),
    pytest.param({"JIT": "maybe"}, "parameter jit must be on or off", id="bad-bool-upper"),
    pytest.param({"log_line_prefix": "%m\narchive_command = 'sh'"},
                 "parameter values must not contain control characters", id="newline-in-value"),
    pytest.param({"log_line_prefix": "%m\x00"},
                 "parameter values must not contain control characters", id="nul-in-value"),
    pytest.param({"log_line_prefix": "%m \x1b[2J"},
                 "parameter values must not contain control characters", id="escape-in-value"),
    pytest.param({"log_line_prefix": "%m' archive_command = 'sh"},
                 "parameter log_line_prefix must be printable ASCII text without ' or \\",
                 id="quote-in-string"),
    pytest.param({"timezone": "Asia/Shanghai; rm"}, "parameter timezone must be a time zone",
                 id="bad-timezone"),
    pytest.param({"work_mem": "1" * (1 << 20)}, "Too long", id="one-megabyte-value"),
    pytest.param({"work_mem": "64MB", "WORK_MEM": "1MB"},
                 "parameter names are case-insensitive: set each parameter once",
                 id="same-name-twice"),
    pytest.param({f"enable_{i}": "on" for i in range(101)}, "", id="too-many"),
])
def test_refused_entries(params: dict[str, str], expected: str) -> None:
    text = messages(campus(params))
    assert text, f"{params!r} was accepted"
    assert expected in text


def test_version_gated_setting() -> None:
    assert messages(campus({"transaction_timeout": "10min"}, version="17")) == ""
    assert ("parameters may not set transaction_timeout: it is not one of the settings "
            "Ringkeeper allows for postgresql 15") in messages(
                campus({"transaction_timeout": "10min"}, version="15"))


def test_kingbase_has_its_own_list() -> None:
    # wal_keep_size came after PostgreSQL 12, the assumed KingbaseES base.
    assert messages(campus({"work_mem": "64MB"}, "kingbase", "V8R6")) == ""
    assert ("parameters may not set wal_keep_size: it is not one of the settings Ringkeeper "
            "allows for kingbase V8R6") in messages(
                campus({"wal_keep_size": "1GB"}, "kingbase", "V8R6"))


HOSPITAL_TUNING = {
    "shared_buffers": "8GB",
    "work_mem": "32MB",
    "maintenance_work_mem": "1GB",
    "effective_cache_size": "24GB",
    "max_connections": "400",
    "max_wal_size": "16GB",
    "min_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "-1",
    "wal_compression": "on",
    "wal_keep_size": "2GB",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    "default_statistics_target": "500",
    "log_min_duration_statement": "500ms",
    "log_statement": "ddl",
    "log_connections": "on",
    "log_disconnections": "ON",
    "log_lock_waits": "true",
    "log_line_prefix": "%m [%p] %q%u@%d app=%a ",
    "log_timezone": "Asia/Shanghai",
    "TimeZone": "Asia/Shanghai",
    "DateStyle": "ISO, YMD",
    "autovacuum_vacuum_scale_factor": "0.05",
    "autovacuum_max_workers": "6",
    "autovacuum_naptime": "30s",
    "autovacuum_vacuum_cost_delay": "2ms",
    "statement_timeout": "0",
    "lock_timeout": "30s",
    "idle_in_transaction_session_timeout": "10min",
    "max_parallel_workers": "8",
    "max_parallel_workers_per_gather": "4",
    "jit": "off",
    "default_transaction_isolation": "read committed",
}


@pytest.mark.parametrize("version", ["15", "16", "17", "18"])
def test_hospital_tuning_is_accepted(version: str) -> None:
    assert messages(campus(HOSPITAL_TUNING, version=version)) == ""


def test_bounds_are_inclusive_in_every_unit() -> None:
    ok = {"work_mem": ["64", "64kB", "65536B", "2147483647", "2047GB", "1TB"],
          "shared_buffers": ["16", "128kB", "131072B", "1MB", "1073741823", "8191GB"],
          "checkpoint_timeout": ["30", "30s", "30000ms", "1d", "24h", "1440min", "86400"],
          "log_min_duration_statement": ["-1", "-1ms", "0", "2147483647", "2147483s"]}
    bad = {"work_mem": ["63", "63kB", "65535B", "2147483648", "2TB", "-1"],
           "shared_buffers": ["15", "120kB", "130kB", "1073741824", "8192GB"],
           "checkpoint_timeout": ["29", "29s", "29999ms", "2d", "86401"],
           "log_min_duration_statement": ["-2", "2147483648", "-1s", "-0.5"]}
    for name, values in ok.items():
        for value in values:
            assert messages(campus({name: value})) == "", (name, value)
    for name, values in bad.items():
        for value in values:
            assert f"parameter {name} must be" in messages(campus({name: value})), (name, value)


def test_managed_and_refused_lists_keep_their_promises() -> None:
    from ringkeeper.agent.config import TUNABLE_DEFAULTS, InstanceSettings, managed_settings
    from ringkeeper.engines import profile_for
    from ringkeeper.engines.refused_parameters import MANAGED_PARAMETERS, REFUSED_PARAMETERS

    profile = profile_for("postgresql", "18")
    for primary in (True, False):
        settings = InstanceSettings(campus="c", instance="c-1", pod_ip="10.0.0.1", port=5432,
                                    socket_dir="/run", primary=primary, upstream_host="h")
        managed = set(managed_settings(profile, settings))
        # Everything the agent writes is refused to users, except the defaults a user
        # may tune (the allow-list's floor for wal_keep_size is Ringkeeper's value).
        assert managed - set(MANAGED_PARAMETERS) == set(TUNABLE_DEFAULTS)
        assert set(TUNABLE_DEFAULTS) <= set(profile.parameters.by_name)
    assert profile.parameters.by_name["wal_keep_size"].min == 512
    for name in ("archive_command", "restore_command", "shared_preload_libraries", "include"):
        assert name in REFUSED_PARAMETERS
    for prof in (profile, profile_for("kingbase", "V9R1")):
        assert not set(prof.parameters.by_name) & set(REFUSED_PARAMETERS)
        for p in prof.parameters.params:
            assert re.fullmatch(r"[a-z][a-z0-9_.]*", p.name)


# -- the agent's renderer ------------------------------------------------------------------

def _render(user: dict[str, Any], version: str = "17") -> Any:
    from ringkeeper.agent.config import InstanceSettings, managed_settings, render_config
    from ringkeeper.engines import profile_for

    profile = profile_for("postgresql", version)
    settings = InstanceSettings(campus="c", instance="c-0", pod_ip="10.0.0.1", port=5432,
                                socket_dir="/run/pg", primary=True)
    return render_config(profile, managed_settings(profile, settings), user)


def _lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z][a-z0-9_.]*) = '((?:[^'\\]|''|\\\\)*)'", line)
        assert m, f"unexpected line {line!r}"
        out.append((m[1], m[2].replace("''", "'").replace("\\\\", "\\")))
    return out


def test_valid_tuning_is_rendered_quoted() -> None:
    out = _render(HOSPITAL_TUNING)
    assert out.refused == ()
    lines = out.text.splitlines()
    assert "work_mem = '32MB'" in lines
    assert "log_line_prefix = '%m [%p] %q%u@%d app=%a '" in lines
    assert "timezone = 'Asia/Shanghai'" in lines  # names are lower-cased
    assert "datestyle = 'ISO, YMD'" in lines
    assert "default_transaction_isolation = 'read committed'" in lines
    # The user's wal_keep_size replaces Ringkeeper's default; it is written once.
    assert [v for n, v in _lines(out.text) if n == "wal_keep_size"] == ["2GB"]
    # Managed settings come after the user's, so the server takes Ringkeeper's.
    names = [n for n, _ in _lines(out.text)]
    assert names.index("wal_level") > names.index("work_mem")
    assert "port = '5432'" in lines and "hot_standby = 'on'" in lines


def test_render_drops_and_reports_what_bypassed_admission() -> None:
    user = {"ARCHIVE_COMMAND": "sh -c 'env'", "work_mem\narchive_mode": "on",
            "": "x", "include": "/etc/passwd", "work_mem": "64MB", "wal_level": "minimal",
            "log_line_prefix": "%m\nshared_preload_libraries = 'evil'", "bogus": "1",
            "max_connections": 400}
    out = _render(user)
    user_part, _ = out.text.split("# Managed by Ringkeeper:")
    assert _lines(user_part) == [("work_mem", "64MB")]
    assert [v for n, v in _lines(out.text) if n == "wal_level"] == ["logical"]
    assert len(out.text.splitlines()) == len(_render({}).text.splitlines()) + len(user)
    refused = {p.name: p.message for p in out.refused}
    assert set(refused) == set(user) - {"work_mem"}
    assert refused["ARCHIVE_COMMAND"] == ("parameters may not set archive_command: it runs a "
                                          "shell command as the database user")
    assert refused["max_connections"] == "parameter values must be strings"
    for line in out.text.splitlines():
        assert "evil" not in line or line.startswith("# refused")
        assert "/etc/passwd" not in line


def test_render_quotes_quotes_and_backslashes() -> None:
    from ringkeeper.agent.config import _quote

    assert _quote("it's") == "'it''s'"
    assert _quote("a\\b") == "'a\\\\b'"
    assert _quote(True) == "'on'" and _quote(5432) == "'5432'"
    with pytest.raises(ValueError, match="control characters"):
        _quote("a\nb")


def test_docs_list_every_parameter_and_refusal() -> None:
    from conftest import REPO
    from ringkeeper.engines import profile_for
    from ringkeeper.engines.refused_parameters import REFUSED_PARAMETERS

    text = (REPO / "docs" / "parameters.md").read_text(encoding="utf-8")
    for p in profile_for("postgresql", "18").parameters.params:
        assert f"| `{p.name}` |" in text, p.name
    for name in REFUSED_PARAMETERS:
        assert f"`{name}`" in text, name


def test_standbys_of_17_and_later_copy_the_ring_slots() -> None:
    """A promoted standby must still have the ring's logical slots (failover slots, 17+):
    without slot sync a failover of a ring member on the cluster left its readers no slot,
    and the writes between the promotion and a new slot never reached the next member
    (tests/e2e/test_satellite_parent_failover_e2e.py). 15 and 16 cannot."""
    from ringkeeper.agent.config import InstanceSettings, managed_settings
    from ringkeeper.engines import profile_for

    def settings(major: str, primary: bool) -> dict[str, str | int | bool]:
        s = InstanceSettings(campus="c", instance="c-1", pod_ip="10.0.0.1", port=5432,
                             socket_dir="/run", primary=primary, upstream_host="10.0.0.2")
        return managed_settings(profile_for("postgresql", major), s)

    for major in ("17", "18"):
        standby = settings(major, False)
        assert standby["sync_replication_slots"] is True
        assert " dbname=postgres" in str(standby["primary_conninfo"])
        assert "sync_replication_slots" not in settings(major, True)
    old = settings("15", False)
    assert "sync_replication_slots" not in old and "dbname" not in str(old["primary_conninfo"])
