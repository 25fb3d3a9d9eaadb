"""`ringkeeper agent`: wire configuration from the environment into the agent."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..engines import profile_for
from .agent import Agent
from .contact import AgentConfig, CampusSource
from .http import build_app
from .server import Server
from .server_sql import Credentials
from .sources import api_source

SourceFor = Callable[[AgentConfig], CampusSource]


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SystemExit(f"ringkeeper agent: environment variable {name} is required")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("PGDATA", "/var/lib/ringkeeper/data"))
    p.add_argument("--socket-dir", default=os.environ.get("RINGKEEPER_SOCKET_DIR",
                                                          "/run/ringkeeper"))
    p.add_argument("--agent-port", type=int,
                   default=int(os.environ.get("RINGKEEPER_AGENT_PORT", "8000")))
    p.add_argument("--verbose", action="store_true")


async def _main(args: argparse.Namespace, source_for: SourceFor | None) -> None:
    engine, version = _env("RINGKEEPER_ENGINE", "postgresql"), _env("RINGKEEPER_VERSION")
    profile = profile_for(engine, version)
    cfg = AgentConfig(
        campus=_env("RINGKEEPER_CAMPUS"), namespace=_env("POD_NAMESPACE", "default"),
        name=_env("POD_NAME"), pod_ip=_env("POD_IP"),
        port=int(_env("RINGKEEPER_PORT", str(profile.default_port))),
        agent_port=args.agent_port, token=_env("RINGKEEPER_AGENT_TOKEN"))
    creds = Credentials(
        superuser=_env("RINGKEEPER_SUPERUSER", profile.superuser),
        superuser_password=_env("RINGKEEPER_SUPERUSER_PASSWORD"),
        replication_user=_env("RINGKEEPER_REPLICATION_USER", "ringkeeper_repl"),
        replication_password=_env("RINGKEEPER_REPLICATION_PASSWORD"),
        app_user=_env("RINGKEEPER_APP_USER", "app"),
        app_password=_env("RINGKEEPER_APP_PASSWORD"),
        app_database=_env("RINGKEEPER_APP_DATABASE", "app"))
    socket_dir = Path(args.socket_dir)
    server = Server(profile, Path(args.data_dir), socket_dir, cfg.port, creds,
                    pod_cidr=_env("RINGKEEPER_POD_CIDR", "0.0.0.0/0"))
    # The product reads its Campus from the API server; local tests hand in their own
    # source through run(), so the command line carries no test switch.
    source = (source_for(cfg) if source_for is not None
              else api_source(os.environ.get("RINGKEEPER_KIND") or "Campus", cfg.namespace,
                              cfg.campus))
    agent = Agent(cfg, source, server)
    runner = web.AppRunner(build_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.pod_ip, cfg.agent_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    logging.getLogger("ringkeeper.agent").info(
        "agent %s of campus %s (%s %s) on %s:%d", cfg.name, cfg.campus, engine, version,
        cfg.pod_ip, cfg.agent_port)
    try:
        await agent.run(stop)
    finally:
        await runner.cleanup()


def _dump_tasks() -> None:
    """`kill -USR2` logs where every asyncio task waits (for stuck-agent reports)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stdout)


def run(args: argparse.Namespace, source_for: SourceFor | None = None) -> int:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack
    Path(args.socket_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    asyncio.run(_main(args, source_for))
    return 0
