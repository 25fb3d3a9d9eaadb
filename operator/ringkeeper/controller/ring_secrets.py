"""The ring's Secrets: members resolved to connection strings (reading only the Secrets
the ring may use, core.secretrefs), the `<campus>-ring` and `<ring>-sync` Secrets it
writes, Campuses claimed and released (core.ownership), and the refusals told once.

Kept apart from the ring daemon (`ring.py`) because everything here handles credentials
or decides whose objects the ring may touch; the daemon only calls it once per cycle.
Connection strings carry passwords: none is ever logged.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..adapters import resources, secretrefs
from ..api.v1alpha1 import GROUP, VERSION
from ..contracts.conninfo import SslMode, Target, build_dsn
from ..core import manifests
from ..core.conditions import condition, set_condition
from ..core.failures import signature
from ..core.ownership import Owner, OwnershipRefusal, ring_claim
from ..core.ringplan import primary_address, satellite_address, satellite_entries
from ..core.secretrefs import SecretUse, may_use
from ..engines import profile_for

if TYPE_CHECKING:
    from .ring import _State

RING_LABEL = "ringkeeper.io/ring"
APP_DATABASE = "app"


def _owner(ring: dict[str, Any]) -> dict[str, Any]:
    meta = ring["metadata"]
    return {"apiVersion": ring["apiVersion"], "kind": ring["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": False}


async def _endpoint(api: client.ApiClient, ns: str, member: dict[str, Any], ring: str = "",
                    generated: frozenset[str] = frozenset()
                    ) -> tuple[dict[str, Any], str | None, str | None]:
    """(endpoint for the sidecars, sidecar host to poll, campus name or None)."""
    if member.get("campusRef"):
        cname = member["campusRef"]["name"]
        campus = await resources.read_campus(api, ns, cname)
        spec = campus["spec"]
        profile = profile_for(spec.get("engine", "postgresql"), str(spec["version"]))
        host = primary_address(campus)
        target: str | None = None
        if host:
            user = await resources.secret_value(
                api, ns, manifests.secret_name(cname, "superuser"), "username")
            pw = await resources.secret_value(
                api, ns, manifests.secret_name(cname, "superuser"), "password")
            target = build_dsn(Target(host=host, port=profile.default_port,
                                      database=APP_DATABASE, user=user, password=pw))
        return ({"dsn": target, "engine": profile.engine, "version": profile.version},
                host, cname)
    ext = member["external"]
    ref, ca = ext["passwordSecret"], (ext.get("tls") or {}).get("caSecret")
    if not ca:
        raise ValueError(f"external member {member['name']} has no tls.caSecret")
    pw = await _ring_secret(api, ns, ring, ref["name"], ref.get("key", "password"), generated)
    ca_pem = await _ring_secret(api, ns, ring, ca["name"], ca.get("key", "ca.crt"), generated)
    # Typed parts, checked and quoted one by one; external members: TLS verify-full
    # against the ring's CA (contracts.ringconfig writes it to a file) and SCRAM only.
    target = build_dsn(Target(host=ext["host"], port=int(ext.get("port", 5432)),
                              database=ext["database"], user=ext.get("user", "ringkeeper_sync"),
                              password=pw, sslmode=SslMode.VERIFY_FULL))
    return ({"dsn": target, "ca": ca_pem, "engine": ext["engine"],
             "version": str(ext["version"])}, None, None)


async def satellite_endpoints(api: client.ApiClient, ns: str, spec: dict[str, Any]
                              ) -> dict[str, dict[str, Any]]:
    """The ring's satellites (core.ringplan.satellite_entries) with their addresses: the
    pod its `<name>-rw` Service selects (core.ringplan.satellite_address) and its
    generated superuser, as a Campus member's sidecar is given its campus's. A satellite
    whose pod or Secret is not there yet gets no address (dsn None: its parent's sidecar
    waits for it); API errors propagate."""
    found = await client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, "satellites")
    entries = satellite_entries(spec, list(found.get("items") or []))
    for name, entry in entries.items():
        profile = profile_for(entry["engine"], entry["version"])
        try:
            pod = await client.CoreV1Api(api).read_namespaced_pod(f"{name}-0", ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            pod = None
        host = satellite_address(name, api.sanitize_for_serialization(pod) if pod else None)
        if host is None:
            entry["dsn"] = None
            continue
        try:
            user = await resources.secret_value(
                api, ns, manifests.secret_name(name, "superuser"), "username")
            pw = await resources.secret_value(
                api, ns, manifests.secret_name(name, "superuser"), "password")
        except ApiException as exc:
            if exc.status != 404:
                raise
            entry["dsn"] = None
            continue
        entry["dsn"] = build_dsn(Target(host=host, port=profile.default_port,
                                        database=APP_DATABASE, user=user, password=pw))
    return entries


class SecretRefused(Exception):
    """A Secret the ring names and may not use (core.secretrefs says why)."""

    def __init__(self, use: SecretUse) -> None:
        super().__init__(use.message)
        self.use = use


async def _ring_secret(api: client.ApiClient, ns: str, ring: str, name: str, key: str,
                       generated: frozenset[str]) -> str:
    """A key of a Secret the ring names, read only if core.secretrefs allows it."""
    use = may_use(ring, name, await secretrefs.secret_metadata(api, ns, name), generated)
    if not use.usable:
        raise SecretRefused(use)
    return await secretrefs.secret_key(api, ns, name, key)


def ring_owner(ring: dict[str, Any]) -> Owner:
    """The ring as the owner of the Secrets it writes (core.ownership)."""
    meta = ring["metadata"]
    return Owner(ring.get("kind", "ReplicationRing"), meta["name"], meta["uid"],
                 {RING_LABEL: meta["name"]})


def _secret(ring: dict[str, Any], name: str, payload: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": ring["metadata"]["namespace"],
                         "ownerReferences": [_owner(ring)],
                         "labels": {"app.kubernetes.io/name": "ringkeeper",
                                    RING_LABEL: ring["metadata"]["name"]}},
            "stringData": {"ring.json": payload}}


async def _write_secret(api: client.ApiClient, ring: dict[str, Any], name: str,
                        payload: str, state: _State) -> None:
    """Apply the ring's Secret unless someone else's Secret has that name (ForeignObjectError)."""
    digest = hashlib.sha256(payload.encode()).hexdigest()
    if state.secret_hashes.get(name) == digest:
        return
    await resources.apply_owned(api, _secret(ring, name, payload), ring_owner(ring))
    state.secret_hashes[name] = digest


async def _claim(api: client.ApiClient, ring: dict[str, Any], campus: str
                 ) -> tuple[OwnershipRefusal | None, str, bool]:
    """Whether this ring holds `campus` (core.ownership.ring_claim), and if its Secret exists."""
    probe = _secret(ring, manifests.ring_secret_name(campus), "")
    existing = await resources.get_metadata(api, probe)
    _, why, message = ring_claim(existing, ring_owner(ring), campus)
    return why, message, existing is not None


async def _write_ring_secret(api: client.ApiClient, ring: dict[str, Any], campus: str,
                             payload: str, exists: bool, state: _State
                             ) -> tuple[OwnershipRefusal | None, str]:
    """Write `<campus>-ring`; an absent one is created, so of two rings exactly one wins."""
    name = manifests.ring_secret_name(campus)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    if exists:
        if state.secret_hashes.get(name) != digest:
            await resources.apply(api, _secret(ring, name, payload))
            state.secret_hashes[name] = digest
        return None, ""
    if await resources.create_if_missing(api, _secret(ring, name, payload)):
        state.secret_hashes[name] = digest
        return None, ""
    why, message, _ = await _claim(api, ring, campus)  # another ring created it first
    if why is None:  # it was ours after all (a retried create): write the payload
        await resources.apply(api, _secret(ring, name, payload))
        state.secret_hashes[name] = digest
    return why, message


async def _release(api: client.ApiClient, ring: dict[str, Any], keep: set[str],
                   state: _State) -> None:
    """Delete this ring's `<campus>-ring` Secrets of Campuses it no longer names.

    That gives the Campus back: another ring may claim it (see core.ownership).
    Only Secrets this ring controls are deleted, each by uid precondition.
    """
    meta = ring["metadata"]
    found = await client.CoreV1Api(api).list_namespaced_secret(
        meta["namespace"], label_selector=f"{RING_LABEL}={meta['name']}")
    for item in found.items:
        sname = item.metadata.name
        refs = item.metadata.owner_references or []
        ours = any(r.controller and r.uid == meta["uid"] for r in refs)
        if not ours or sname in keep or not sname.endswith("-ring"):
            continue
        obj = _secret(ring, sname, "")
        if await resources.delete(api, obj, item.metadata.uid):
            state.secret_hashes.pop(sname, None)
            kopf.info(cast(Any, ring), reason="CampusReleased",
                      message=f"deleted {sname}: the ring no longer names its campus")


def _refusals(ring: dict[str, Any], status: dict[str, Any],
              refused: dict[str, tuple[str, OwnershipRefusal, str]], state: _State) -> None:
    """Ready=False naming what this ring will not write, and one Event per new refusal."""
    if not refused:
        state.refusals = set()
        return
    ordered = sorted(refused.items())
    reason = ordered[0][1][1]
    message = "; ".join(m for _, (_, _, m) in ordered)[:1000]
    status["conditions"] = set_condition(
        status["conditions"], type="Ready", status="False", reason=str(reason),
        message=message, now=datetime.now(UTC), generation=ring["metadata"].get("generation"))
    now_refused = {signature(str(why), m) for _, (_, why, m) in ordered}
    if state.refusals is None:
        prev = condition((ring.get("status") or {}).get("conditions") or [], "Ready") or {}
        said = str(prev.get("message", "")) if prev.get("reason") in set(OwnershipRefusal) else ""
        state.refusals = {signature(str(why), m) for _, (_, why, m) in ordered if m in said}
    for _, (_, why, m) in ordered:
        if signature(str(why), m) not in state.refusals:
            kopf.warn(cast(Any, ring), reason=str(why), message=m)
    state.refusals = now_refused


def _secret_events(ring: dict[str, Any], refused: list[SecretUse], state: _State) -> None:
    """One Warning per new Secret refusal (names only, never a value)."""
    now = {f"{r.verdict}:{r.secret}": r for r in refused}
    for key in now.keys() - state.secret_refusals:
        kopf.warn(cast(Any, ring), reason=str(now[key].verdict), message=now[key].message)
    state.secret_refusals = set(now)
