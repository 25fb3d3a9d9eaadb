"""A drill's I/O: a campus's -rw Service for the operator's own connections, the RTO probe,
the faults (pod deletion, partition policy).

The operator resolves `<campus>-rw` as kube-proxy does (the ready pods its selector picks), and
relays each new connection to the address listed at that moment (RwProxy): a connection
made after a failover reaches the new primary, whether or not the cluster routes Service
addresses (the local cluster has no kube-proxy or DNS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources
from ..adapters.resources import KubeApiError
from ..api.v1alpha1.drill import TargetKind
from ..base.sqlquote import quote_ident
from ..contracts.conninfo import SslMode, Target, build_dsn
from ..core.drill import DrillCampus
from ..workload.check import check
from ..workload.ledger import Ledger
from ..workload.schema import TABLES
from .drill_report import explain_lost, lost_keys

log = logging.getLogger("ringkeeper.drill")
PG_PORT = 5432
CONNECT_TIMEOUT = 2.0
PROBE_EVERY = 0.2


async def rw_addresses(api: client.ApiClient, namespace: str, campus: str) -> list[str]:
    """Addresses of the ready pods the campus's -rw Service selects: what its endpoints
    list, read from the Service's selector and the pods (the operator holds no
    EndpointSlice grant)."""
    core = client.CoreV1Api(api)
    svc = await core.read_namespaced_service(f"{campus}-rw", namespace)
    selector = (svc.spec.selector if svc.spec else None) or {}
    if not selector:
        return []
    pods = await core.list_namespaced_pod(
        namespace, label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())))
    return sorted(p.status.pod_ip for p in pods.items
                  if p.status and p.status.pod_ip and p.metadata.deletion_timestamp is None
                  and any(c.type == "Ready" and c.status == "True"
                          for c in p.status.conditions or []))


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        dst.close()


class RwProxy:
    """A loopback listener that relays each connection to the current -rw address."""

    def __init__(self, api: client.ApiClient, namespace: str, campus: str) -> None:
        self.api, self.namespace, self.campus = api, namespace, campus
        self.server: asyncio.Server | None = None
        self.host, self.port = "127.0.0.1", 0
        self.upstream_port = PG_PORT
        self.tasks: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.host, self.port = self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            addrs = await rw_addresses(self.api, self.namespace, self.campus)
            if len(addrs) != 1:  # none during a failover; two would be a split the Service hides
                raise ConnectionError(f"{self.campus}-rw lists {addrs}")
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(addrs[0], self.upstream_port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ApiException, ConnectionError):
            writer.close()
            return
        task = asyncio.ensure_future(asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def dsn(self, password: str) -> str:
        return build_dsn(Target(host=str(self.host), port=int(self.port), database="app",
                                user="app", password=password, sslmode=SslMode.PREFER))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()


# The drill's LIS load writes here, never into the hospital's own `lis` schema: synthetic
# patients must not mix with real ones, and the drill needs no grant on the real tables.
DRILL_SCHEMA = "ringkeeper_drill"
PROBE_TABLE = ("CREATE TABLE IF NOT EXISTS ringkeeper_drill_probe "
               "(campus text PRIMARY KEY, n bigint NOT NULL, at timestamptz NOT NULL)")
PROBE_WRITE = ("INSERT INTO ringkeeper_drill_probe VALUES ($1, 1, now()) "
               "ON CONFLICT (campus) DO UPDATE SET n = ringkeeper_drill_probe.n + 1, "
               "at = now() RETURNING host(inet_server_addr()), pg_postmaster_start_time()::text")


@dataclass
class Probe:
    """Writes one row through -rw every PROBE_EVERY s. After `fault()` the first write that
    lands on a server other than the one that was writable before (another address, or
    the same one restarted) ends the outage: that is the RTO."""

    campus: str
    dsn: str = field(repr=False)
    last_server: tuple[str, str] | None = None
    writes: int = 0
    fault_mono: float | None = None
    avoid: tuple[str, str] | None = None
    rto: float | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def fault(self, killed: bool) -> None:
        self.avoid = self.last_server if killed else None
        self.fault_mono = time.monotonic()

    async def run(self) -> None:
        conn: Any = None
        made = False
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
                    if not made:
                        await asyncio.wait_for(conn.execute(PROBE_TABLE), CONNECT_TIMEOUT)
                        made = True
                row = await asyncio.wait_for(conn.fetchrow(PROBE_WRITE, self.campus),
                                             CONNECT_TIMEOUT)
                at = time.monotonic()
                server = (str(row[0]), str(row[1]))
                self.writes += 1
                self.last_server = server
                if (self.fault_mono is not None and self.rto is None and at > self.fault_mono
                        and server != self.avoid):
                    self.rto = at - self.fault_mono
            except Exception:  # any failure is a write that did not happen
                if conn is not None:
                    conn.terminate()
                conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), PROBE_EVERY)
        if conn is not None:
            conn.terminate()


async def target(api: client.ApiClient, ns: str, kind: TargetKind, name: str
                  ) -> tuple[bool, tuple[DrillCampus, ...]]:
    """Whether the target exists, and its campuses (a ring's campusRef members)."""
    try:
        if kind == TargetKind.CAMPUS:
            names = [name]
            await resources.read_custom(api, ns, "campuses", name)
        else:
            ring = await resources.read_custom(api, ns, "replicationrings", name)
            names = [str((m.get("campusRef") or {}).get("name"))
                     for m in (ring.get("spec") or {}).get("members") or []
                     if (m.get("campusRef") or {}).get("name")]
    except KubeApiError as exc:
        if exc.status == 404:
            return False, ()
        raise
    views = []
    for n in names:
        try:
            st = (await resources.read_custom(api, ns, "campuses", n)).get("status") or {}
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            st = {}
        primary = st.get("currentPrimary")
        views.append(DrillCampus(n, st.get("phase") == "Ready" and bool(primary), primary))
    return True, tuple(views)


async def kill_pod(api: client.ApiClient, namespace: str, pod: str) -> None:
    """Delete the pod at once (grace 0): its server dies without a clean shutdown."""
    await client.CoreV1Api(api).delete_namespaced_pod(pod, namespace, grace_period_seconds=0)


async def campus_pod_ips(api: client.ApiClient, namespace: str, campus: str,
                         label: str) -> tuple[str, ...]:
    pods = await client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"{label}={campus}")
    return tuple(sorted(p.status.pod_ip for p in pods.items if p.status and p.status.pod_ip))


async def create_policy(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    await client.NetworkingV1Api(api).create_namespaced_network_policy(namespace, cast(Any, body))


async def drill_policies(api: client.ApiClient, namespace: str, drill: str,
                         label: str) -> list[str]:
    """The NetworkPolicies labelled as this drill's (its partition), by name."""
    found = await client.NetworkingV1Api(api).list_namespaced_network_policy(
        namespace, label_selector=f"{label}={drill}")
    return sorted(str(p.metadata.name) for p in found.items)


async def remove_policies(api: client.ApiClient, namespace: str, drill: str,
                          label: str) -> list[str]:
    """Delete every NetworkPolicy labelled as this drill's; the names removed."""
    net = client.NetworkingV1Api(api)
    found = await net.list_namespaced_network_policy(namespace,
                                                     label_selector=f"{label}={drill}")
    gone = []
    for p in found.items:
        try:
            await net.delete_namespaced_network_policy(p.metadata.name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        gone.append(str(p.metadata.name))
    return gone


SERVER_IDENTITY = ("SELECT host(inet_server_addr()), pg_is_in_recovery(), "
                   "pg_postmaster_start_time()::text")


async def server_identity(conn: Any) -> dict[str, Any]:
    """Which server a connection reached and its role: the ledger check records it, so a
    failure shows whether it read the new primary."""
    row = await conn.fetchrow(SERVER_IDENTITY)
    return {"address": str(row[0]), "inRecovery": bool(row[1]), "startedAt": str(row[2])}


def app_dsn(host: str, password: str, port: int = PG_PORT) -> str:
    return build_dsn(Target(host=host, port=port, database="app", user="app",
                            password=password, sslmode=SslMode.PREFER))


async def rows_at(servers: dict[str, str], wanted: list[tuple[str, int]]
                  ) -> dict[str, dict[str, Any]]:
    """What each server (name -> dsn) holds for each (table, key): the row's rev, or None
    when there is no row; with the server's address and role. A server that cannot be
    read says why instead. `table` must be a workload table (checked here: nothing
    else reaches the SQL)."""
    for table, _ in wanted:
        if table not in TABLES:
            raise ValueError(f"{table!r} is not a workload table")
    out: dict[str, dict[str, Any]] = {}
    for name, dsn in servers.items():
        conn: Any = None
        try:
            conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
            held: dict[str, Any] = await asyncio.wait_for(server_identity(conn),
                                                          CONNECT_TIMEOUT)
            revs: dict[str, int | None] = {}
            for table, key in wanted:
                t = TABLES[table]
                rev = await asyncio.wait_for(conn.fetchval(
                    f"SELECT rev FROM {quote_ident(DRILL_SCHEMA)}.{quote_ident(t.name)} "
                    f"WHERE {quote_ident(t.key)} = $1", key), CONNECT_TIMEOUT)
                revs[f"{table}/{key}"] = None if rev is None else int(rev)
            out[name] = {**held, "revs": revs}
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                TimeoutError) as exc:
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:150]}"}
        finally:
            if conn is not None:
                conn.terminate()
    return out


async def campus_pod_dsns(api: client.ApiClient, namespace: str, campus: str, label: str,
                          password: str) -> dict[str, str]:
    """Every pod of the campus (primary, replicas, a restarted old primary) by name, as
    a DSN to its own server, bypassing -rw."""
    pods = await client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"{label}={campus}")
    return {str(p.metadata.name): app_dsn(str(p.status.pod_ip), password)
            for p in sorted(pods.items, key=lambda p: str(p.metadata.name))
            if p.status and p.status.pod_ip}


CHECK_TRIES = 5


async def check_ledger(dsns: dict[str, str], ledger: Ledger
                       ) -> tuple[int | None, dict[str, Any]]:
    """The ledger check of each campus (name -> its -rw DSN): (acknowledged transactions
    lost, the check's report with the server each campus was read at; its `lostRows`
    counts the rows). A commit counts once however many of its rows are lost. Only a
    primary is checked, since a replica may lag behind it; while -rw moves or reaches a
    server in recovery the check retries, and (None, {"error": ...}) says it never could."""
    last_error = ""
    for _ in range(CHECK_TRIES):
        conns: dict[str, Any] = {}
        try:
            for c, dsn in dsns.items():
                conns[c] = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
            read = {c: await server_identity(conn) for c, conn in conns.items()}
            if standby := sorted(c for c, r in read.items() if r["inRecovery"]):
                last_error = f"-rw of {', '.join(standby)} reached a server in recovery"
            else:
                found = await check(conns, ledger, holds={c: [c] for c in conns},
                                    schema=DRILL_SCHEMA)
                return (found.lost_transactions,
                        {**found.as_dict(), "readFrom": read})
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            for conn in conns.values():
                conn.terminate()
        await asyncio.sleep(2)
    return None, {"error": last_error}


async def explain_lost_at(api: client.ApiClient, namespace: str, label: str, ledger: Ledger,
                          checked: dict[str, Any]) -> list[dict[str, Any]]:
    """The check's first lost keys, each with what every server of its campus holds for
    it and the ledger's versions in doubt (drill_report.explain_lost): a failure is
    diagnosable from the Event and status.lastRun alone. A lookup that fails is said in
    place of the server's answer, never fatal to the run's verdict."""
    keys = lost_keys(checked)
    held: dict[str, dict[str, dict[str, Any]]] = {}
    for member in sorted({m for m, _, _ in keys}):
        try:
            dsns = await campus_pod_dsns(api, namespace, member, label,
                                         await app_password(api, namespace, member))
        except (KubeApiError, ApiException, OSError) as exc:
            held[member] = {"(pods)": {"error": f"{type(exc).__name__}: {str(exc)[:150]}"}}
            continue
        held[member] = await rows_at(dsns, [(t, k) for m, t, k in keys if m == member])
    doubtful = {f"{t}/{k}": sorted(ledger.doubtful(t, k), key=lambda r: r or 0)
                for _, t, k in keys}
    return explain_lost(checked, held, doubtful)


async def app_password(api: client.ApiClient, namespace: str, campus: str) -> str:
    return await resources.secret_value(api, namespace, f"{campus}-app", "password")
