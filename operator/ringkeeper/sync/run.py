"""`ringkeeper sync`: the sidecar process, its status endpoint and metrics.

Config comes from a JSON file (local rings, tests, the bench) or from the ring's
Secret that the operator writes (in pods). The status endpoint is read-only and
carries no secrets; the operator polls it to fill the ReplicationRing status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..contracts.conninfo import Target, build_dsn
from ..contracts.ringconfig import RingConfig
from ..core.failures import backoff_delay
from ..core.liveness import FLOWING
from ..observability import metrics as m
from .configsource import ConfigSource, file_config
from .satreport import SatelliteReport
from .sidecar import Sidecar

log = logging.getLogger("ringkeeper.sync")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member", default=os.environ.get("RINGKEEPER_CAMPUS"),
                   help="this member's name in the ring (default: $RINGKEEPER_CAMPUS)")
    p.add_argument("--local-dsn", default=os.environ.get("RINGKEEPER_LOCAL_DSN"),
                   help="connection string of the local database (default: the pod's "
                   "Unix socket with the superuser password from the environment)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ring-file", help="read the ring config from this JSON file")
    src.add_argument("--ring-secret", default=os.environ.get("RINGKEEPER_RING_SECRET"),
                     help="read the ring config from this Secret (key ring.json) in "
                     "$POD_NAMESPACE")
    p.add_argument("--status-address",
                   default=os.environ.get("POD_IP", "127.0.0.1"),
                   help="address of the status and metrics endpoint")
    p.add_argument("--status-port", type=int,
                   default=int(os.environ.get("RINGKEEPER_SYNC_PORT", "8001")),
                   help="port of the status endpoint (0: do not serve)")
    p.add_argument("--verbose", action="store_true")


def _local_dsn(args: argparse.Namespace) -> str:
    if args.local_dsn:
        return str(args.local_dsn)
    password = os.environ.get("RINGKEEPER_SUPERUSER_PASSWORD")
    if not password:
        raise SystemExit("ringkeeper sync: give --local-dsn, or set "
                         "RINGKEEPER_SUPERUSER_PASSWORD for the pod's Unix socket")
    user = os.environ.get("RINGKEEPER_SUPERUSER", "postgres")
    db = os.environ.get("RINGKEEPER_APP_DATABASE", "app")
    sock = os.environ.get("RINGKEEPER_SOCKET_DIR", "/run/ringkeeper")
    port = os.environ.get("RINGKEEPER_PORT", "5432")
    try:
        return build_dsn(Target(host=sock, port=int(port), database=db, user=user,
                                password=password))
    except ValueError as exc:
        raise SystemExit(f"ringkeeper sync: local database settings: {exc}") from None


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong, whatever the exception carries.

    A timeout's message is empty (str(TimeoutError()) == ''), and the first line of an
    empty text does not exist: the sidecar crash-looped on that IndexError after failovers.
    """
    if getattr(exc, "status", None) == 404:
        return "not found: the Campus is not in a ring yet"
    status = getattr(exc, "status", None)
    kind = type(exc).__name__ + (f" {status}" if isinstance(status, int) else "")
    text = str(getattr(exc, "reason", None) or exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{kind}: {first}" if first else f"{kind} (no message)"


def secret_config(namespace: str, name: str) -> ConfigSource:
    cache: dict[str, Any] = {}

    async def load() -> RingConfig:
        from ..adapters.kube import api_client
        from ..adapters.ringsecret import read_ring_config

        if "api" not in cache:
            cache["api"] = await api_client()
        try:
            cache["cfg"] = await read_ring_config(cache["api"], namespace, name, 5)
        except Exception as exc:  # the API may blink; keep the last good config
            why = describe_error(exc)
            if "cfg" not in cache:
                raise RuntimeError(f"ring config Secret {namespace}/{name}: {why}") from exc
            log.warning("ring config Secret unreadable, keeping the last one: %s", why)
        cfg: RingConfig = cache["cfg"]
        return cfg

    return load


def export_metrics(ring: str, sidecar: Sidecar) -> None:
    st = sidecar.state
    for lk in st.links.values():
        labels = (ring, lk.source, lk.target)
        m.LINK_LAG_BYTES.labels(*labels).set(lk.lag_bytes or 0)
        m.LINK_LAG_SECONDS.labels(*labels).set(lk.lag_seconds or 0)
        m.LINK_ROWS.labels(*labels).set(lk.rows_per_second)
        m.LINK_UP.labels(*labels).set(1 if lk.state in FLOWING else 0)
        m.LINK_APPLIED_TXNS.labels(*labels).set(lk.applied_txns)
        m.CONFLICTS.labels(*labels).set(lk.conflicts)
    if st.seeding is not None:
        m.SEED_PERCENT.labels(ring, st.member).set(st.seeding.percent)
    if st.hold_lag_bytes is not None:
        m.HOLD_LAG_BYTES.labels(ring, st.member).set(st.hold_lag_bytes)
    for sat in st.satellites.values():
        export_satellite(ring, sat)


def export_satellite(ring: str, sat: SatelliteReport) -> None:
    """One satellite's gauges from its parent's report (-1 where a value is unknown)."""
    labels = (ring, sat.parent, sat.name)
    backlog = sat.spool_rows
    m.SAT_CONNECTED.labels(*labels).set(1 if sat.connected else 0)
    m.SAT_PARENT_BACKLOG_ROWS.labels(*labels).set(-1 if backlog is None else backlog)
    m.SAT_PARENT_BACKLOG_BYTES.labels(*labels).set(
        -1 if sat.spool_bytes is None else sat.spool_bytes)
    m.SAT_SATELLITE_BACKLOG_BYTES.labels(*labels).set(
        -1 if sat.up.lag_bytes is None else sat.up.lag_bytes)
    m.SAT_CONTACT_AGE.labels(*labels).set(
        -1 if sat.contact_at is None else round(time.monotonic() - sat.contact_at, 1))
    m.SAT_DRAINED_ROWS.labels(*labels).set(sat.drained_rows)
    m.SAT_CATCHUP_PERCENT.labels(*labels).set(sat.catch_up().percent)


def build_app(sidecar: Sidecar, ring: str) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"sync": "ok", "member": sidecar.member})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(sidecar.state.as_dict(),
                                 dumps=lambda d: json.dumps(d, default=str))

    async def metrics(_: web.Request) -> web.Response:
        export_metrics(sidecar.ring or ring, sidecar)
        return web.Response(body=generate_latest(), headers={"Content-Type":
                                                             CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    return app


async def _main(args: argparse.Namespace) -> None:
    if not args.member:
        raise SystemExit("ringkeeper sync: --member (or $RINGKEEPER_CAMPUS) is required")
    if args.ring_file:
        source = file_config(args.ring_file)
    elif args.ring_secret:
        source = secret_config(os.environ.get("POD_NAMESPACE", "default"), args.ring_secret)
    else:
        raise SystemExit("ringkeeper sync: give --ring-file or --ring-secret")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(args.member, _local_dsn(args), source)
    runner = None
    if args.status_port:
        runner = web.AppRunner(build_app(sidecar, os.environ.get("RINGKEEPER_RING", "")),
                               access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.status_address, args.status_port).start()
    try:
        # A Campus not (yet) in a ring has no config, and the API may time out during a
        # failover: wait for it with backoff instead of exiting into a crash loop.
        failures = 0
        while not stop.is_set():
            try:
                cfg = await source()
                cfg.member(args.member)
                break
            except Exception as exc:
                failures += 1
                sidecar.state.error = f"waiting for the ring config: {describe_error(exc)}"
                log.info("%s", sidecar.state.error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_delay(failures, 1.0, 30.0))
        else:
            return
        log.info("sync sidecar for member %s of ring %s (%s)", args.member, cfg.ring,
                 cfg.topology)
        sidecar.ring = cfg.ring
        await sidecar.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where it is installed (a dependency on Linux and macOS): the sidecar wakes
    for every transaction a busy source commits, and the stock loop's per-wakeup cost
    showed in the target's CPU (about a third less with uvloop, make bench-ring)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    try:
        _event_loop_runner()(_main(args))
    except ValueError as exc:
        print(f"ringkeeper sync: {exc}", file=sys.stderr)
        return 2
    return 0
