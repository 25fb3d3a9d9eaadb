"""`python -m ringkeeper_devcluster.runtime`: started by `ringkeeper-dev up`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

from kubernetes_asyncio import client, config

from .. import faults
from . import netpol, node, process
from .ipam import claim_network
from .kubelet import Runtime, Settings

log = logging.getLogger("ringkeeper_devcluster.runtime")
PODNET_SOURCE = Path(__file__).with_name("podnet.c")


def build_podnet(state: Path) -> Path | None:
    """Compile the source-address shim once per state folder (needs a C compiler)."""
    target = state / "libpodnet.so"
    if target.exists() and target.stat().st_mtime >= PODNET_SOURCE.stat().st_mtime:
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: pods will connect from 127.0.0.1 and network faults "
                    "cannot single out a pod (apt-get install gcc)")
        return None
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(target), str(PODNET_SOURCE),
                    "-ldl"], check=True)
    target.chmod(0o755)
    return target


def prepare(args: argparse.Namespace) -> tuple[process.PodUser, Path | None]:
    """Blocking set-up before the event loop starts: pod user, shim, egress guard."""
    state = Path(args.state_dir)
    user = process.pod_user(args.pod_user)
    podnet = build_podnet(state)
    if podnet is not None:
        # The pod user must be able to load it from outside root's hidden home.
        shared = Path("/run/ringkeeper-dev")
        shared.mkdir(parents=True, exist_ok=True)
        # Replace atomically: running pods of another dev cluster may have it mapped.
        tmp = shared / f".libpodnet.{os.getpid()}.so"
        shutil.copy2(podnet, tmp)
        tmp.replace(shared / "libpodnet.so")
        podnet = shared / "libpodnet.so"
    faults.install_egress_guard(user.uid)
    faults.kill_leftover_pods(state)
    return user, podnet


async def main(args: argparse.Namespace, user: process.PodUser, podnet: Path | None) -> None:
    state = Path(args.state_dir)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=args.kubeconfig,
                                  client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        await node.register(api, args.node_name)
        network = claim_network(os.getpid())
        rt = Runtime(api, Settings(state=state, node=args.node_name,
                                   apiserver_port=args.apiserver_port, user=user,
                                   podnet=podnet, network=network))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        policies = asyncio.create_task(netpol.NetpolController(api, network).run())
        tasks = [asyncio.create_task(t) for t in (
            node.heartbeat(api, args.node_name), rt.watch_pods(), rt.watch_claims())]
        log.info("process runtime up: node %s, pod network %s, pod user %s (uid %d)",
                 args.node_name, network, user.name, user.uid)
        await stop.wait()
        log.info("stopping every pod")
        for t in tasks:
            t.cancel()
        await rt.shutdown()
        # Its finally removes every rule of ours once the pods are gone.
        policies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await policies


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", default="ringkeeper-dev")
    p.add_argument("--apiserver-port", type=int, required=True)
    p.add_argument("--pod-user", default="ringkeeper-pod")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = p.parse_args()
    user, podnet = prepare(args)
    asyncio.run(main(args, user, podnet))


if __name__ == "__main__":
    cli()
