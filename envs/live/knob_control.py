"""The knob router's control server: `GET/PUT /knobs`, `GET /metrics`, `GET /decisions`, `GET /health`.

`PUT /knobs` needs the bearer token; the server binds 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, Protocol

from envs.live.decisions import DecisionLog
from envs.live.ledger import RoutingLedger
from envs.live.scoring import WorkerState


class ControlledRouter(Protocol):
    """What the control server reads of the knob router (`envs.live.knob_router.KnobRouter`)."""

    ledger: RoutingLedger
    decisions: DecisionLog

    async def worker_states(self) -> list[WorkerState]: ...

    @property
    def worker_type(self) -> str: ...


def control_app(router: ControlledRouter, token: str, num_workers: Callable[[], int]) -> Any:
    """The aiohttp app of the control server: knobs, metrics (with the real workers' load),
    decisions, and health with the number of real workers seen."""
    from aiohttp import web

    ledger = router.ledger

    async def get_knobs(_: web.Request) -> web.Response:
        return web.json_response(ledger.knobs)

    async def put_knobs(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object of knob values")
            return web.json_response(ledger.set_knobs(body))
        except (ValueError, json.JSONDecodeError) as error:
            return web.json_response({"error": str(error)}, status=400)

    async def metrics(_: web.Request) -> web.Response:
        ledger.show_workers(await router.worker_states(), router.worker_type)
        return web.Response(body=ledger.metrics_text(), content_type="text/plain")

    async def decisions(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return web.json_response({"error": "after: needs an integer sequence number"}, status=400)
        return web.json_response([d.to_json() for d in router.decisions.after(after)])

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "num_workers": num_workers(), "knobs": ledger.knobs})

    app = web.Application()
    routes = [web.get("/knobs", get_knobs), web.put("/knobs", put_knobs), web.get("/metrics", metrics)]
    app.add_routes([*routes, web.get("/decisions", decisions), web.get("/health", health)])
    return app
