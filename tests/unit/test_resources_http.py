"""adapters.resources against a real HTTP server that answers like a refusing API server.

A small aiohttp server on 127.0.0.1 answers each request with the status the
test chose and a Kubernetes Status body; a kubernetes_asyncio ApiClient is
pointed at it. This is the real request path of the operator (the raw client
with `_preload_content=False`), which once returned refusals as if they were
objects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from ringkeeper.adapters import resources
from ringkeeper.adapters.resources import ForeignObjectError, KubeApiError
from ringkeeper.controller.campus import _Store
from ringkeeper.controller.failover import StaleStatus
from ringkeeper.core.ownership import Owner, Verdict


@dataclass
class Fake:
    """Answers by (method, path): (status, body); records what was asked."""

    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[tuple[str, str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append((request.method, request.path, body))
        status, answer = self.answers.get((request.method, request.path), (404, _status(
            404, "NotFound", f"{request.path} not found")))
        return web.Response(status=status, text=json.dumps(answer),
                            content_type="application/json")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Fake, client.ApiClient]]:
    state = Fake()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    conf = client.Configuration(host=f"http://127.0.0.1:{port}")
    api = client.ApiClient(conf)
    try:
        yield state, api
    finally:
        await api.close()
        await runner.cleanup()


CAMPUS_STATUS = "/apis/ringkeeper.io/v1alpha1/namespaces/ns/campuses/victim/status"
SVC = {"apiVersion": "v1", "kind": "Service",
       "metadata": {"name": "victim-rw", "namespace": "ns", "labels": {"a": "b"}}}
SVC_PATH = "/api/v1/namespaces/ns/services/victim-rw"


async def test_stale_resource_version_raises_409(fake: tuple[Fake, client.ApiClient]) -> None:
    state, api = fake
    msg = ('Operation cannot be fulfilled on campuses.ringkeeper.io "victim": the object has '
           "been modified; please apply your changes to the latest version and try again")
    state.answers[("PATCH", CAMPUS_STATUS)] = (409, _status(409, "Conflict", msg))
    with pytest.raises(KubeApiError) as caught:
        await resources.patch_campus_status(api, "ns", "victim", {"targetPrimary": "victim-1"},
                                            "41")
    assert caught.value.status == 409
    assert caught.value.api_reason == "Conflict"
    assert caught.value.message == msg
    # The precondition went out with the patch.
    assert state.seen[-1][2]["metadata"] == {"resourceVersion": "41"}
    # The HA code's store turns it into StaleStatus, which makes the loop re-read.
    with pytest.raises(StaleStatus):
        await _Store(api, "ns", "victim").patch_status({"targetPrimary": "victim-1"}, "41")


async def test_success_returns_the_object(fake: tuple[Fake, client.ApiClient]) -> None:
    state, api = fake
    state.answers[("PATCH", CAMPUS_STATUS)] = (200, {"metadata": {"name": "victim"},
                                                     "status": {"phase": "Ready"}})
    out = await resources.patch_campus_status(api, "ns", "victim", {"phase": "Ready"}, None)
    assert out["status"] == {"phase": "Ready"}


@pytest.mark.parametrize(("code", "reason"), [(422, "Invalid"), (500, "InternalError"),
                                              (403, "Forbidden")])
async def test_apply_refused_raises_with_the_servers_message(
        fake: tuple[Fake, client.ApiClient], code: int, reason: str) -> None:
    state, api = fake
    msg = 'StatefulSet.apps "victim" is invalid: spec...storage: Invalid value: "-1Gi"'
    state.answers[("PATCH", SVC_PATH)] = (code, _status(code, reason, msg))
    with pytest.raises(KubeApiError) as caught:
        await resources.apply(api, SVC)
    assert (caught.value.status, caught.value.api_reason, caught.value.message) == (
        code, reason, msg)
    assert msg in str(caught.value) and "PATCH" in str(caught.value)


async def test_non_status_error_body_is_kept(fake: tuple[Fake, client.ApiClient]) -> None:
    state, api = fake
    state.answers[("PATCH", SVC_PATH)] = (502, "bad gateway")
    with pytest.raises(KubeApiError) as caught:
        await resources.apply(api, SVC)
    assert caught.value.status == 502 and "bad gateway" in caught.value.message


async def test_create_if_missing_tells_created_from_existing(
        fake: tuple[Fake, client.ApiClient]) -> None:
    state, api = fake
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "victim-agent", "namespace": "ns"}}
    post = ("POST", "/api/v1/namespaces/ns/secrets")
    state.answers[post] = (201, secret)
    assert await resources.create_if_missing(api, secret) is True
    state.answers[post] = (409, _status(409, "AlreadyExists", "secrets exists"))
    assert await resources.create_if_missing(api, secret) is False
    state.answers[post] = (422, _status(422, "Invalid", "name: Invalid value: \"a.b\""))
    with pytest.raises(KubeApiError):
        await resources.create_if_missing(api, secret)


async def test_exists_and_get(fake: tuple[Fake, client.ApiClient]) -> None:
    state, api = fake
    assert await resources.exists(api, SVC) is False  # the fake's default is 404
    state.answers[("GET", SVC_PATH)] = (200, {"metadata": {"name": "victim-rw"}})
    assert await resources.exists(api, SVC) is True
    state.answers[("GET", SVC_PATH)] = (403, _status(403, "Forbidden", "no"))
    with pytest.raises(KubeApiError):
        await resources.exists(api, SVC)


async def test_apply_owned_refuses_a_foreign_object(fake: tuple[Fake, client.ApiClient]
                                                    ) -> None:
    state, api = fake
    owner = Owner("Campus", "victim", "uid-victim", {"ringkeeper.io/campus": "victim"})
    state.answers[("GET", SVC_PATH)] = (200, {"metadata": {
        "name": "victim-rw", "labels": {"ringkeeper.io/campus": "victim-rw"},
        "ownerReferences": [{"kind": "Campus", "name": "victim-rw", "uid": "uid-other",
                             "controller": True}]}})
    with pytest.raises(ForeignObjectError) as caught:
        await resources.apply_owned(api, SVC, owner)
    assert "Service victim-rw" in str(caught.value) and "Campus victim-rw" in str(caught.value)
    assert [m for m, _, _ in state.seen] == ["GET"]  # nothing was written
    # Our own object is applied.
    state.answers[("GET", SVC_PATH)] = (200, {"metadata": {
        "name": "victim-rw", "ownerReferences": [{"kind": "Campus", "name": "victim",
                                                  "uid": "uid-victim", "controller": True}]}})
    state.answers[("PATCH", SVC_PATH)] = (200, SVC)
    decision = await resources.apply_owned(api, SVC, owner)
    assert decision.verdict is Verdict.OWN
    assert [m for m, _, _ in state.seen] == ["GET", "GET", "PATCH"]
