"""NetworkPolicy enforcement on the dev cluster's loopback pod addresses.

Every pod has its own 127.x.y.z address and opens its connections from it (podnet.c), so
a policy becomes iptables rules in the filter table's OUTPUT chain, which every loopback
packet crosses. `translate` is pure (policies, pods, namespaces -> who may talk to whom);
`render` turns that into one iptables-restore transaction that rebuilds our chains
atomically; `NetpolController` watches the three kinds and re-applies on any change.

Semantics are Kubernetes': a pod selected by a policy with policyType Ingress (Egress) is
isolated in that direction and only the union of the allowed peers/ports passes. Unlike
most CNI plugins, a policy change also cuts connections opened before it: reply packets are
checked against the policy as if they were the original direction (conntrack --ctdir), not
let through as ESTABLISHED, so a partition made by a policy stops an existing replication
stream too. Traffic from the node address 127.0.0.1 (probes, the API server's webhooks)
to a pod is always allowed, as on a real node; traffic from a pod to 127.0.0.1 (the API
server) is not a pod peer and is allowed to an egress-isolated pod only by an ipBlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client, watch

log = logging.getLogger("ringkeeper_devcluster.runtime.netpol")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
NODE_IP = "127.0.0.1"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


class Direction(enum.Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # name -> (proto, n)


@dataclass(frozen=True, order=True)
class Allow:
    """Traffic from (ingress) or to (egress) `peer` (a CIDR, None = anywhere) on
    `proto` (None = any) and ports port..end (None = any port)."""
    peer: str | None
    proto: str | None = None
    port: int | None = None
    end: int | None = None


Model = dict[tuple[str, Direction], tuple[Allow, ...]]


def pod_from_api(obj: Mapping[str, Any]) -> Pod | None:
    """The pods policies can see: running with a loopback address that is not the node's."""
    status = obj.get("status") or {}
    ip = status.get("podIP") or ""
    if status.get("phase") in ("Succeeded", "Failed") or not ip or ip == NODE_IP:
        return None
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(ip) in LOOPBACK:
            meta = obj["metadata"]
            ports = {p["name"]: (PROTOCOLS.get(p.get("protocol", "TCP"), "tcp"),
                                 int(p["containerPort"]))
                     for c in (obj.get("spec") or {}).get("containers") or []
                     for p in c.get("ports") or [] if p.get("name")}
            return Pod(meta["namespace"], meta["name"], ip, meta.get("labels") or {}, ports)
    return None


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: the empty selector selects everything."""
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op)
        if ok is None:
            raise ValueError(f"unknown selector operator {op!r}")
        if not ok:
            return False
    return True


def _ip_block(block: Mapping[str, Any], warn: list[str]) -> list[str]:
    """An ipBlock's part inside 127.0.0.0/8, minus its exceptions, as CIDRs."""
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if not isinstance(net, ipaddress.IPv4Network) or not net.overlaps(LOOPBACK):
        warn.append(f"ipBlock {block['cidr']} lies outside 127.0.0.0/8: nothing to allow")
        return []
    nets = [net if net.subnet_of(LOOPBACK) else LOOPBACK]
    for ex in block.get("except") or []:
        e = ipaddress.ip_network(ex, strict=False)
        out: list[ipaddress.IPv4Network] = []
        for n in nets:
            if isinstance(e, ipaddress.IPv4Network) and e.subnet_of(n):
                out.extend(n.address_exclude(e))
            elif not (isinstance(e, ipaddress.IPv4Network) and n.subnet_of(e)):
                out.append(n)
        nets = out
    return [str(n) for n in sorted(nets)]


def _peers(rule_peers: list[Mapping[str, Any]] | None, policy_ns: str, pods: Iterable[Pod],
           namespaces: Mapping[str, Mapping[str, str]], warn: list[str]
           ) -> list[tuple[str | None, Pod | None]]:
    """(CIDR, the pod behind it if any) for each peer; [(None, None)] = every address."""
    if not rule_peers:
        return [(None, None)]
    out: list[tuple[str | None, Pod | None]] = []
    for peer in rule_peers:
        if "ipBlock" in peer:
            out += [(c, None) for c in _ip_block(peer["ipBlock"], warn)]
            continue
        ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
        for p in pods:
            if ns_sel is None:
                in_ns = p.namespace == policy_ns
            else:
                labels = {**namespaces.get(p.namespace, {}),
                          "kubernetes.io/metadata.name": p.namespace}
                in_ns = p.namespace in namespaces and selects(ns_sel, labels)
            if in_ns and selects(pod_sel, p.labels):
                out.append((f"{p.ip}/32", p))
    return out


def _ports(ports: list[Mapping[str, Any]] | None, dest: Pod | None, what: str,
           warn: list[str]) -> list[tuple[str | None, int | None, int | None]]:
    """(proto, port, end) triples; a named port resolves on the destination pod."""
    if not ports:
        return [(None, None, None)]
    out: list[tuple[str | None, int | None, int | None]] = []
    for p in ports:
        proto = PROTOCOLS.get(p.get("protocol", "TCP"))
        if proto is None:
            warn.append(f"{what}: protocol {p.get('protocol')!r} is not enforced")
            continue
        port = p.get("port")
        if port is None:
            out.append((proto, None, None))
        elif isinstance(port, int) or str(port).isdigit():
            end = p.get("endPort")
            out.append((proto, int(port), int(end) if end else None))
        elif dest is not None and dest.ports.get(str(port), ("", 0))[0] == proto:
            out.append((proto, dest.ports[str(port)][1], None))
    return out


def translate(policies: Iterable[Mapping[str, Any]], pods: Iterable[Pod],
              namespaces: Mapping[str, Mapping[str, str]]) -> tuple[Model, list[str]]:
    """Per isolated (pod IP, direction), what it allows; plus warnings about what cannot
    be enforced. A pod absent from the model is not isolated in that direction."""
    pods = sorted(pods, key=lambda p: p.ip)
    warn: list[str] = []
    allowed: dict[tuple[str, Direction], set[Allow]] = {}
    for pol in policies:
        meta, spec = pol["metadata"], pol.get("spec") or {}
        ns, what = meta["namespace"], f"NetworkPolicy {meta['namespace']}/{meta['name']}"
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec
                                            else ["Ingress"])
        try:
            targets = [p for p in pods if p.namespace == ns and selects(spec.get("podSelector"),
                                                                         p.labels)]
            for d in (Direction.INGRESS, Direction.EGRESS):
                if d.value not in types:
                    continue
                key = "ingress" if d is Direction.INGRESS else "egress"
                for t in targets:
                    got = allowed.setdefault((t.ip, d), set())
                    for rule in spec.get(key) or []:
                        peers = _peers(rule.get("from" if d is Direction.INGRESS else "to"),
                                       ns, pods, namespaces, warn)
                        for cidr, peer_pod in peers:
                            dest = t if d is Direction.INGRESS else peer_pod
                            got.update(Allow(cidr, *x) for x in _ports(
                                rule.get("ports"), dest, what, warn))
                            named = [p for p in rule.get("ports") or []
                                     if not str(p.get("port", 0)).isdigit()]
                            if dest is None and named:
                                # a named egress port to an address range resolves on
                                # every pod inside the range
                                for p in pods:
                                    if cidr is None or ipaddress.ip_address(p.ip) in \
                                            ipaddress.ip_network(cidr):
                                        got.update(Allow(f"{p.ip}/32", *x)
                                                   for x in _ports(named, p, what, warn))
        except (KeyError, ValueError, TypeError) as exc:
            warn.append(f"{what} is not enforced: {exc}")
    return {k: tuple(sorted(v, key=lambda a: (a.peer or "", a.proto or "", a.port or 0,
                                             a.end or 0)))
            for k, v in sorted(allowed.items(), key=lambda kv: (kv[0][0], kv[0][1].value))
            }, sorted(set(warn))


def decide(model: Model, src: str, dst: str, proto: str, port: int) -> bool:
    """Whether a new connection src -> dst:port passes; what the rendered rules do."""
    def ok(d: Direction, pod: str, peer: str) -> bool:
        allows = model.get((pod, d))
        if allows is None or src == dst or (d is Direction.INGRESS and src == NODE_IP):
            return True
        return any((a.peer is None or ipaddress.ip_address(peer) in ipaddress.ip_network(a.peer))
                   and a.proto in (None, proto)
                   and (a.port is None or a.port <= port <= (a.end or a.port)) for a in allows)
    return ok(Direction.INGRESS, dst, src) and ok(Direction.EGRESS, src, dst)


def chain_names(octet: int) -> tuple[str, str]:
    return f"RKNP{octet}", f"RKNP{octet}-R"


def _sub(main: str, d: Direction, reply: bool, ip: str) -> str:
    tail = ".".join(ip.split(".")[2:])
    return f"{main}-{'I' if d is Direction.INGRESS else 'E'}{'R' if reply else ''}-{tail}"


def render(model: Model, octet: int, old_chains: Iterable[str] = ()) -> tuple[str, set[str]]:
    """One `iptables-restore --noflush` transaction rebuilding every chain of ours, and the
    set of chains it leaves. Nothing here accepts a packet: an allowed packet RETURNs, so
    the fault chains later in OUTPUT still see it."""
    main, reply = chain_names(octet)
    chains: dict[str, list[str]] = {main: ["-m conntrack --ctstate RELATED -j RETURN",
                                           f"-m conntrack --ctdir REPLY -j {reply}",
                                           "-m conntrack --ctdir REPLY -j RETURN"], reply: []}
    for (ip, d), allows in model.items():
        ing = d is Direction.INGRESS
        here, there = ("-d", "-s") if ing else ("-s", "-d")
        fwd, back = _sub(main, d, False, ip), _sub(main, d, True, ip)
        chains[main].append(f"{here} {ip}/32 -j {fwd}")
        # a reply comes back from the ingress-isolated pod / to the egress-isolated pod
        chains[reply].append(f"{there} {ip}/32 -j {back}")
        chains[fwd] = [f"{there} {ip}/32 -j RETURN"]
        chains[back] = [f"{here} {ip}/32 -j RETURN"]
        if ing:
            chains[fwd].append(f"-s {NODE_IP}/32 -j RETURN")
            chains[back].append(f"-d {NODE_IP}/32 -j RETURN")
        for a in allows:
            peer_f = f"{there} {a.peer} " if a.peer else ""
            peer_b = f"{here} {a.peer} " if a.peer else ""
            proto = f"-p {a.proto} -m {a.proto} " if a.proto else ""
            ports = "" if a.port is None else (
                f"{a.port}:{a.end}" if a.end else str(a.port))
            chains[fwd].append(f"{peer_f}{proto}{'--dport ' + ports + ' ' if ports else ''}"
                               "-j RETURN")
            chains[back].append(f"{peer_b}{proto}{'--sport ' + ports + ' ' if ports else ''}"
                                "-j RETURN")
        chains[fwd].append("-j DROP")
        chains[back].append("-j DROP")
    stale = sorted(set(old_chains) - set(chains))
    lines = ["*filter"] + [f":{c} - [0:0]" for c in [*chains, *stale]]
    lines += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
    lines += [f"-X {c}" for c in stale] + ["COMMIT", ""]
    return "\n".join(lines), set(chains)


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> str:
    exe = shutil.which(args[0])
    if exe is None:
        raise RuntimeError(f"{args[0]} is not installed: apt-get install iptables")
    res = subprocess.run([exe, "-w", *args[1:]], input=stdin, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {res.stderr.strip()}")
    return res.stdout


def our_chains(octet: int) -> set[str]:
    main, _ = chain_names(octet)
    return {line.split()[1] for line in _run(["iptables", "-S"]).splitlines()
            if line.startswith("-N ") and (line.split()[1] == main
                                           or line.split()[1].startswith(main + "-"))}


def apply(text: str, octet: int) -> None:
    _run(["iptables-restore", "--noflush"], stdin=text)
    main, _ = chain_names(octet)
    jump = ["-d", str(LOOPBACK), "-j", main]
    if subprocess.run([shutil.which("iptables") or "iptables", "-w", "-C", "OUTPUT", *jump],
                      capture_output=True).returncode != 0:
        _run(["iptables", "-I", "OUTPUT", "1", *jump])


def remove(octet: int) -> None:
    """Remove our OUTPUT jump and every chain of ours (start-up leftovers and shutdown)."""
    main, _ = chain_names(octet)
    for line in _run(["iptables", "-S", "OUTPUT"]).splitlines():
        if line.endswith(f"-j {main}"):
            _run(["iptables", *line.replace("-A OUTPUT", "-D OUTPUT", 1).split()], check=False)
    chains = our_chains(octet)
    for c in chains:
        _run(["iptables", "-F", c], check=False)
    for c in chains:
        _run(["iptables", "-X", c], check=False)


class NetpolController:
    """Keeps our chains equal to render(translate(what the API server holds))."""

    def __init__(self, api: client.ApiClient, network: ipaddress.IPv4Network) -> None:
        self.api = api
        self.octet = int(str(network.network_address).split(".")[1])
        self.store: dict[str, dict[str, dict[str, Any]]] = {"pods": {}, "ns": {}, "np": {}}
        self.listed: set[str] = set()
        self.changed = asyncio.Event()
        self.chains: set[str] = set()
        self.applied: str | None = None

    async def _watch(self, kind: str, lister: Callable[..., Awaitable[Any]]) -> None:
        store = self.store[kind]
        while True:
            try:
                listing = await lister()
                store.clear()
                for item in listing.items:
                    obj = self.api.sanitize_for_serialization(item)
                    store[obj["metadata"]["uid"]] = obj
                self.listed.add(kind)
                self.changed.set()
                async with watch.Watch().stream(
                        lister, resource_version=listing.metadata.resource_version,
                        timeout_seconds=300) as stream:
                    async for ev in stream:
                        if ev["type"] == "ERROR":
                            break
                        obj = ev["object"]
                        obj = obj if isinstance(obj, dict) else \
                            self.api.sanitize_for_serialization(obj)
                        if ev["type"] == "DELETED":
                            store.pop(obj["metadata"]["uid"], None)
                        else:
                            store[obj["metadata"]["uid"]] = obj
                        self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must survive API hiccups
                log.warning("%s watch restarting: %s", kind, exc)
                await asyncio.sleep(1)

    def model(self) -> tuple[Model, list[str]]:
        pods = [p for p in map(pod_from_api, self.store["pods"].values()) if p is not None]
        namespaces = {o["metadata"]["name"]: o["metadata"].get("labels") or {}
                      for o in self.store["ns"].values()}
        return translate(self.store["np"].values(), pods, namespaces)

    async def run(self) -> None:
        core, net = client.CoreV1Api(self.api), client.NetworkingV1Api(self.api)
        await self._remove()
        tasks = [asyncio.create_task(self._watch(k, f)) for k, f in (
            ("pods", core.list_pod_for_all_namespaces), ("ns", core.list_namespace),
            ("np", net.list_network_policy_for_all_namespaces))]
        try:
            while True:
                await self.changed.wait()
                await asyncio.sleep(0.05)  # coalesce a burst of events
                self.changed.clear()
                if self.listed != {"pods", "ns", "np"}:
                    continue  # a partial picture would open or cut the wrong things
                model, warnings = self.model()
                text, chains = render(model, self.octet, self.chains)
                if text == self.applied:
                    continue
                try:
                    await asyncio.to_thread(apply, text, self.octet)
                except Exception as exc:
                    log.error("network policies not applied, retrying: %s", exc)
                    await asyncio.sleep(2)
                    self.changed.set()
                    continue
                self.chains, self.applied = chains, text
                for w in warnings:
                    log.warning("%s", w)
                log.info("network policies applied: %d isolated pod directions", len(model))
        finally:
            for t in tasks:
                t.cancel()
            await self._remove()

    async def _remove(self) -> None:
        """Without iptables the runtime still runs pods; each apply then logs the error."""
        try:
            await asyncio.to_thread(remove, self.octet)
        except Exception as exc:
            log.error("could not remove the network policy chains: %s", exc)
