"""The agent's HTTP API: probes for the kubelet, authenticated controls for the operator.

/healthz and /readyz are open (the kubelet calls them). Everything under /api
needs the campus's agent token: without it nobody can promote, pause or fence.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .agent import Agent
from .server_sql import ServerError

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def build_app(agent: Agent) -> web.Application:
    token = agent.cfg.token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Route) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            header = request.headers.get("Authorization", "")
            given = header.removeprefix("Bearer ").encode()
            if not header.startswith("Bearer ") or not hmac.compare_digest(given, token):
                return _json({"error": "missing or wrong agent token"}, 401)
        try:
            return await handler(request)
        except PermissionError as exc:
            return _json({"error": str(exc)}, 409)
        except ServerError as exc:
            return _json({"error": str(exc)}, 500)

    async def healthz(_: web.Request) -> web.Response:
        return _json({"agent": "ok", "name": agent.cfg.name})

    async def readyz(_: web.Request) -> web.Response:
        st = await agent.server.status()
        ok = agent.ready(st)
        return _json({"ready": ok, "plan": agent.state.plan}, 200 if ok else 503)

    async def status(_: web.Request) -> web.Response:
        return _json(await agent.report())

    async def vouch(_: web.Request) -> web.Response:
        # Asked by a primary cut from the API server (agent.contact.reach_a_peer).
        return _json({"name": agent.cfg.name, "follows": agent.vouches_for()})

    async def pause(_: web.Request) -> web.Response:
        await agent.pause()
        return _json(await agent.report())

    async def promote(request: web.Request) -> web.Response:
        # Optional body {"targetPrimary": "<instance>"}: the target the operator wrote,
        # which stands in for the Campus only when this agent cannot read it.
        named = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "body must be JSON"}, 400)
            named = body.get("targetPrimary") if isinstance(body, dict) else None
            if named is not None and not isinstance(named, str):
                return _json({"error": "targetPrimary must be a string"}, 400)
        await agent.promote(named)
        return _json(await agent.report())

    async def follow(request: web.Request) -> web.Response:
        body = await request.json()
        primary = body.get("primary")
        if not isinstance(primary, str) or not primary:
            return _json({"error": "body must be {\"primary\": \"<instance>\"}"}, 400)
        await agent.follow_call(primary)
        return _json(await agent.report())

    async def recover(_: web.Request) -> web.Response:
        await agent.recover()
        return _json(await agent.report())

    async def fence(_: web.Request) -> web.Response:
        await agent.fence(True)
        return _json(await agent.report())

    async def unfence(_: web.Request) -> web.Response:
        await agent.fence(False)
        return _json(await agent.report())

    app = web.Application(middlewares=[auth])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/vouch", vouch)
    app.router.add_post("/api/pause", pause)
    app.router.add_post("/api/promote", promote)
    app.router.add_post("/api/follow", follow)
    app.router.add_post("/api/recover", recover)
    app.router.add_post("/api/fence", fence)
    app.router.add_post("/api/unfence", unfence)
    return app
