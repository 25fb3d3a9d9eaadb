"""Materialise a pod's volumes as folders the container namespace binds in.

emptyDir lives with the pod; a PVC is a folder per claim that outlives pods and
is removed when the claim is deleted; Secrets, ConfigMaps, the downward API and
projected service-account tokens are written as files, as a kubelet would.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from .podspec import PodSpecError, field_ref
from .process import Mount, PodUser

SecretFetch = Callable[[str, str], Awaitable[Mapping[str, str] | None]]
TokenFetch = Callable[[Mapping[str, Any], Mapping[str, Any]], Awaitable[str]]


def pvc_dir(state: Path, namespace: str, claim: str) -> Path:
    return state / "pvc" / namespace / claim


def _write(path: Path, data: bytes, mode: int, user: PodUser) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chown(tmp, user.uid, user.gid)
    tmp.chmod(mode)
    tmp.replace(path)


def _project(
    target: Path, data: Mapping[str, bytes], items: list[dict[str, Any]] | None,
    mode: int, user: PodUser,
) -> None:
    selected = (
        [(i["key"], i.get("path", i["key"]), i.get("mode", mode)) for i in items]
        if items else [(k, k, mode) for k in data]
    )
    for key, rel, item_mode in selected:
        if key not in data:
            raise PodSpecError("FailedMount", f"key {key!r} not found")
        _write(target / rel, data[key], item_mode, user)


async def materialise(
    *,
    pod: Mapping[str, Any],
    pod_dir: Path,
    state: Path,
    user: PodUser,
    pod_ip: str,
    node: str,
    secrets: SecretFetch,
    config_maps: SecretFetch,
    token: TokenFetch,
) -> dict[str, Path]:
    """Create every volume; returns volume name -> host folder. Idempotent (refreshes files)."""
    ns = pod["metadata"]["namespace"]
    out: dict[str, Path] = {}
    for vol in pod.get("spec", {}).get("volumes") or []:
        name = vol["name"]
        target = pod_dir / "volumes" / name
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
            os.chown(target, user.uid, user.gid)
            target.chmod(0o777)
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            target = pvc_dir(state, ns, claim)
            target.mkdir(parents=True, exist_ok=True)
            os.chown(target, user.uid, user.gid)
            target.chmod(0o750)
        elif "secret" in vol or "configMap" in vol:
            is_secret = "secret" in vol
            src = vol["secret" if is_secret else "configMap"]
            ref = src.get("secretName") if is_secret else src.get("name")
            data = await (secrets if is_secret else config_maps)(ns, ref)
            if data is None:
                if src.get("optional"):
                    target.mkdir(parents=True, exist_ok=True)
                    out[name] = target
                    continue
                kind = "secret" if is_secret else "configmap"
                raise PodSpecError("FailedMount", f"{kind} {ref!r} not found")
            target.mkdir(parents=True, exist_ok=True)
            raw = {k: v.encode() for k, v in data.items()}
            _project(target, raw, src.get("items"), int(src.get("defaultMode", 0o644)), user)
        elif "projected" in vol:
            target.mkdir(parents=True, exist_ok=True)
            mode = int(vol["projected"].get("defaultMode", 0o644))
            for source in vol["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    text = await token(pod, sat)
                    _write(target / sat["path"], text.encode(), mode, user)
                elif "configMap" in source or "secret" in source:
                    is_secret = "secret" in source
                    src = source["secret" if is_secret else "configMap"]
                    data = await (secrets if is_secret else config_maps)(ns, src["name"])
                    if data is None:
                        if src.get("optional"):
                            continue
                        raise PodSpecError("FailedMount", f"{src['name']!r} not found")
                    raw = {k: v.encode() for k, v in data.items()}
                    _project(target, raw, src.get("items"), mode, user)
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        value = field_ref(pod, item["fieldRef"]["fieldPath"], pod_ip, node)
                        _write(target / item["path"], value.encode(), mode, user)
        elif "downwardAPI" in vol:
            target.mkdir(parents=True, exist_ok=True)
            for item in vol["downwardAPI"].get("items") or []:
                value = field_ref(pod, item["fieldRef"]["fieldPath"], pod_ip, node)
                _write(target / item["path"], value.encode(),
                       int(vol["downwardAPI"].get("defaultMode", 0o644)), user)
        else:
            kind = next((k for k in vol if k != "name"), "?")
            raise PodSpecError(
                "FailedMount", f"volume {name}: {kind} volumes are not supported on the dev cluster"
            )
        out[name] = target
    return out


def mounts_for(container: Mapping[str, Any], volumes: Mapping[str, Path]) -> list[Mount]:
    out = []
    for vm in container.get("volumeMounts") or []:
        source = volumes.get(vm["name"])
        if source is None:
            raise PodSpecError("CreateContainerConfigError", f"no volume named {vm['name']}")
        if vm.get("subPath"):
            source = source / vm["subPath"]
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        out.append(Mount(str(source), vm["mountPath"], bool(vm.get("readOnly"))))
    return out


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (data or {}).items()}


def remove_pod_dir(pod_dir: Path) -> None:
    shutil.rmtree(pod_dir, ignore_errors=True)
