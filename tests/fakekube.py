"""A small in-memory Kubernetes API server over real HTTP on 127.0.0.1, for controller tests.

It speaks just enough of the API for the operator's reconcile and ring code:
GET/POST/DELETE of namespaced objects, label-selector lists, server-side apply
(stored as a merge, no field ownership), JSON merge patches of `/status` with
the resourceVersion precondition (409 when stale), and error answers a test
plants for a method and path (the API server's Status body, as kube-apiserver
sends it). The operator's ApiClient reaches it through a kubeconfig, so the
code under test runs its real request path.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    out = dict(into)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # path -> object
        self.refuse: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.refuse_once: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.metadata_reads = 0  # GETs that asked for PartialObjectMetadata only
        self._rv = itertools.count(100)
        self.url = ""

    # -- set-up helpers -------------------------------------------------------------------
    def put(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("generation", 1)
        self.objects[path] = obj
        return obj

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("POST", "PATCH", "PUT", "DELETE")]

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": "ns"}}]}))
        return path

    # -- HTTP -----------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.Response:
        method, path = request.method, request.path
        self.requests.append((method, path))
        raw = await request.read()
        body = json.loads(raw) if raw else None
        planted = self.refuse_once.pop((method, path), None) or self.refuse.get((method, path))
        if planted is not None:
            return self._json(planted[0], status_body(*planted))
        if method == "GET":
            if path in self.objects:
                if "as=PartialObjectMetadata" in request.headers.get("Accept", ""):
                    self.metadata_reads += 1
                    return self._json(200, {"kind": "PartialObjectMetadata",
                                            "apiVersion": "meta.k8s.io/v1",
                                            "metadata": self.objects[path]["metadata"]})
                return self._json(200, self.objects[path])
            selector = request.query.get("labelSelector")
            if selector is not None or (path.endswith("s") and any(
                    p.startswith(path + "/") for p in self.objects)):
                return self._json(200, self._list(path, selector))
            return self._json(404, status_body(404, "NotFound", f"{path} not found"))
        if method == "POST":
            full = f"{path}/{body['metadata']['name']}"
            if full in self.objects:
                return self._json(409, status_body(
                    409, "AlreadyExists", f"{body['metadata']['name']} already exists"))
            return self._json(201, self.put(full, body))
        if method == "DELETE":
            if path not in self.objects:
                return self._json(404, status_body(404, "NotFound", f"{path} not found"))
            want = ((body or {}).get("preconditions") or {}).get("uid")
            if want and want != self.objects[path]["metadata"]["uid"]:
                return self._json(409, status_body(409, "Conflict", "uid precondition"))
            return self._json(200, self.objects.pop(path))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "")
            if path.endswith("/status"):
                target = path[: -len("/status")]
                if target not in self.objects:
                    return self._json(404, status_body(404, "NotFound", f"{target} not found"))
                current = self.objects[target]
                want = ((body or {}).get("metadata") or {}).get("resourceVersion")
                if want and want != current["metadata"]["resourceVersion"]:
                    return self._json(409, status_body(
                        409, "Conflict", "Operation cannot be fulfilled: the object has been "
                        "modified; please apply your changes to the latest version"))
                current["status"] = _merge(current.get("status") or {},
                                           (body or {}).get("status") or {})
                current["metadata"]["resourceVersion"] = str(next(self._rv))
                return self._json(200, current)
            if "apply-patch" in ctype:
                if path in self.objects:
                    merged = _merge(self.objects[path], body)
                    merged["metadata"]["resourceVersion"] = str(next(self._rv))
                    self.objects[path] = merged
                    return self._json(200, merged)
                return self._json(201, self.put(path, body))
            if path not in self.objects:
                return self._json(404, status_body(404, "NotFound", f"{path} not found"))
            self.objects[path] = _merge(self.objects[path], body)
            self.objects[path]["metadata"]["resourceVersion"] = str(next(self._rv))
            return self._json(200, self.objects[path])
        return self._json(405, status_body(405, "MethodNotAllowed", method))

    def _list(self, path: str, selector: str | None) -> dict[str, Any]:
        want = dict(part.split("=", 1) for part in selector.split(",")) if selector else {}
        items = [o for p, o in self.objects.items()
                 if p.rsplit("/", 1)[0] == path
                 and all((o["metadata"].get("labels") or {}).get(k) == v
                         for k, v in want.items())]
        return {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}

    @staticmethod
    def _json(code: int, body: Any) -> web.Response:
        return web.Response(status=code, text=json.dumps(body), content_type="application/json")


@asynccontextmanager
async def serve() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
