"""The sidecar's loop on the wall clock, its HTTP calls, and its own endpoints.

Per interval: read the frontend's and the knob router's `/metrics` (both at once, each with a
timeout), turn them into a snapshot (`envs.live.snapshot`), let the `Decider` decide, and
`PUT /knobs` on the knob router. The knobs are put every interval, not only on change, so a knob
router that restarted with its start-up knobs is corrected within one interval.

The busy lever (`active_prefill_tokens_threshold_frac`, `envs.levers`) goes to the frontend
itself with `POST /busy_threshold`: no hop on the request path, so it also runs on plain Dynamo
(`poa-gym dynamo up --layout dynamo`, no knob router: `control_url` None), where it is the only
knob the sidecar may set.

The P/D lever (`num_prefill_workers`) moves workers of a local deployment started with one
process per worker (`agents.sidecar.pd_lever`), every `lever_every` intervals, on the policy's own
decisions only.

The sidecar's own server binds 127.0.0.1 unless told otherwise and serves `GET /metrics`
(Prometheus text), `GET /health` (JSON) and `PUT /mode` (`{"mode": "safe"|"policy"}`, bearer
token): the one endpoint that changes behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agents.sidecar import pd_lever
from agents.sidecar.decider import FAULTS, Decider, Decision
from agents.sidecar.policies import PolicyLoadError, load_policy
from envs.levers import BUSY_LEVER, busy_threshold_value
from envs.live.snapshot import live_snapshot
from envs.sim.knobs import split_levers

log = logging.getLogger("poa_gym.sidecar")
# Decision latency buckets: the target is p99 under 1 ms.
DECISION_BUCKETS_S = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2)


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Where the deployment is and how often to decide; validated on construction."""

    frontend_url: str
    control_url: str | None  # the knob router's control server; None on plain Dynamo
    model_name: str
    router_token: str  # the knob router's bearer token (PUT /knobs)
    token: str  # this sidecar's bearer token (PUT /mode)
    interval_s: float  # deployment seconds per interval (the policy's control interval)
    speedup: float = 1.0  # a mocker deployment's speed-up: wall seconds are `speedup` deployment seconds
    metrics_url: str | None = None  # the frontend's metrics, when served elsewhere
    host: str = "127.0.0.1"
    port: int = 0
    http_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("interval_s", "speedup", "http_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port: must be in [0, 65535], got {self.port}")
        if not self.token:
            raise ValueError("token: the sidecar's PUT /mode needs a bearer token")

    @property
    def interval_wall_s(self) -> float:
        return self.interval_s / self.speedup

    @property
    def frontend_metrics_url(self) -> str:
        return self.metrics_url or self.frontend_url.rstrip("/") + "/metrics"


class SidecarMetrics:
    """What the sidecar did, as Prometheus metrics in a registry of its own."""

    def __init__(self, policy_name: str, knob_names: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "poa_gym_sidecar_decisions", "intervals decided, by source", ["source"], registry=r
        )
        self.knob = Gauge("poa_gym_sidecar_knob", "knob value put in force", ["knob"], registry=r)
        self.fault = Gauge(
            "poa_gym_sidecar_fault_active", "1 while a fault holds the safe setting", ["fault"], registry=r
        )
        self.fallbacks = Counter(
            "poa_gym_sidecar_fallbacks", "episodes of failure (safe setting), by fault", ["fault"], registry=r
        )
        self.latency = Histogram(
            "poa_gym_sidecar_decision_seconds",
            "observation + inference time per policy decision",
            buckets=DECISION_BUCKETS_S,
            registry=r,
        )
        self.read_failures = Counter("poa_gym_sidecar_read_failures", "metrics reads that failed", registry=r)
        self.apply_failures = Counter(
            "poa_gym_sidecar_apply_failures", "knob updates the deployment did not take", registry=r
        )
        self.policy = Gauge("poa_gym_sidecar_policy_info", "the policy running", ["policy"], registry=r)
        self.policy.labels(policy_name).set(1)
        for fault in FAULTS:
            self.fault.labels(fault).set(0)
            self.fallbacks.labels(fault)
        for source in ("policy", "safe", "hold"):
            self.decisions.labels(source)
        for name in knob_names:
            self.knob.labels(name)

    def record(self, decision: Decision) -> None:
        self.decisions.labels(decision.source).inc()
        for name, value in decision.knobs.items():
            self.knob.labels(name).set(value)
        for fault in FAULTS:
            self.fault.labels(fault).set(1 if fault in decision.faults else 0)
        for fault in decision.started:
            self.fallbacks.labels(fault).inc()
        if decision.decision_s is not None:
            self.latency.observe(decision.decision_s)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class Sidecar:
    """One decider on one deployment; `run` until stopped (or for `num_intervals`)."""

    def __init__(
        self,
        config: SidecarConfig,
        decider: Decider,
        policy_spec: str,
        pools: pd_lever.PoolMover | None = None,
    ) -> None:
        self.config = config
        self.decider = decider
        self.metrics = SidecarMetrics(decider.policy.name, decider.policy.context.knob_names)
        self.pools = pools  # the P/D lever's mover, when the policy sets the lever
        if pools is not None:
            pools.register(self.metrics.registry)
        self._spec = policy_spec
        self._signature = decider.policy.files_signature()
        self._t0_s = time.monotonic()
        self.num_intervals = 0
        self.last_decision: Decision | None = None
        self._apply_failing = False

    async def run(self, stop: asyncio.Event | None = None, num_intervals: int | None = None) -> None:
        import aiohttp

        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.config.http_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self._adopt_router_knobs(session)
            next_s = loop.time()
            while not stop.is_set() and (num_intervals is None or self.num_intervals < num_intervals):
                await self.tick(session)
                next_s += self.config.interval_wall_s
                delay_s = next_s - loop.time()
                if delay_s < 0:  # a slow interval: start the next one now, do not try to catch up
                    next_s, delay_s = loop.time(), 0.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)
            if self.pools is not None:
                await self.pools.wait()

    async def tick(self, session: Any) -> Decision:
        self._check_reload()
        try:
            snapshot = await self._read(session)
        except Exception as error:  # unreachable, timed out, or a body that does not parse
            self.metrics.read_failures.inc()
            decision = self.decider.read_failed(f"{type(error).__name__}: {error}")
        else:
            decision = self.decider.observe(snapshot)
        if decision.source != "hold":  # a hold leaves the router's knobs alone
            await self._apply(session, decision.knobs)
        if decision.source == "policy" and self.pools is not None and pd_lever.PD_LEVER in decision.knobs:
            self.pools.maybe_move(decision.knobs[pd_lever.PD_LEVER], self.num_intervals)
        self.metrics.record(decision)
        self._log(decision)
        self.last_decision = decision
        self.num_intervals += 1
        return decision

    async def _adopt_router_knobs(self, session: Any) -> None:
        """Start from the knobs the router has in force: the policy's first observation names
        them as the last action."""
        if self.config.control_url is None:
            return
        try:
            knobs = json.loads(await _get_text(session, self.config.control_url + "/knobs"))
            self.decider.adopt_knobs(knobs)
        except Exception as error:  # the first interval's read reports an unreachable router
            log.warning("could not read the knob router's knobs (%s); assuming the safe setting", error)

    def set_operator_hold(self, safe: bool) -> None:
        self.decider.set_fault("operator", "an operator asked for the safe setting" if safe else None)

    async def _read(self, session: Any) -> Any:
        config = self.config
        if config.control_url is None:
            frontend, router = await _get_text(session, config.frontend_metrics_url), ""
        else:
            frontend, router = await asyncio.gather(
                _get_text(session, config.frontend_metrics_url),
                _get_text(session, config.control_url + "/metrics"),
            )
        time_s = (time.monotonic() - self._t0_s) * config.speedup
        return live_snapshot(frontend, router, config.model_name, time_s, config.speedup)

    async def _apply(self, session: Any, knobs: dict[str, float]) -> None:
        config = self.config
        override, levers = split_levers(knobs)
        try:
            if override and config.control_url is not None:
                headers = {"Authorization": f"Bearer {config.router_token}"}
                await _send(session.put(config.control_url + "/knobs", json=override, headers=headers))
            if BUSY_LEVER in levers:
                frac = busy_threshold_value(levers[BUSY_LEVER], self.decider.policy.context.knobs)
                body = {"model": config.model_name, BUSY_LEVER: frac}
                await _send(session.post(config.frontend_url.rstrip("/") + "/busy_threshold", json=body))
        except Exception as error:
            self.metrics.apply_failures.inc()
            if not self._apply_failing:
                log.warning("the deployment did not take the knobs (%s); retrying every interval", error)
            self._apply_failing = True
            return
        if self._apply_failing:
            log.info("the deployment takes the knobs again")
        self._apply_failing = False

    def _check_reload(self) -> None:
        signature = self.decider.policy.files_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            policy = load_policy(self._spec, self.decider.config.safe_knobs)
            self.decider.replace_policy(policy)
        except (PolicyLoadError, ValueError) as error:
            self.decider.set_fault("reload", f"the policy's files changed and do not load: {error}")
            return
        self.decider.set_fault("reload", None)
        log.info("reloaded %s", policy.name)

    def _log(self, decision: Decision) -> None:
        for fault in decision.started:
            log.warning(
                "fault %s: %s; safe setting %s", fault, self.decider.faults.get(fault, ""), decision.knobs
            )
        for fault in decision.ended:
            log.info("fault %s cleared", fault)

    def health(self) -> dict[str, Any]:
        decision = self.last_decision
        faults = self.decider.faults
        return {
            "status": "fallback" if faults else "ok",
            "policy": self.decider.policy.name,
            "faults": faults,
            "knobs": self.decider.knobs,
            "intervals": self.num_intervals,
            "last_source": decision.source if decision else None,
        } | pd_lever.health(self.pools)


def control_app(sidecar: Sidecar) -> Any:
    from aiohttp import web

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=sidecar.metrics.text(), content_type="text/plain")

    async def health(_: web.Request) -> web.Response:
        return web.json_response(sidecar.health())

    async def put_mode(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), sidecar.config.token.encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in ("safe", "policy"):
            return web.json_response(
                {"error": 'the body must be {"mode": "safe"} or {"mode": "policy"}'}, status=400
            )
        sidecar.set_operator_hold(mode == "safe")
        return web.json_response(sidecar.health())

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/health", health), web.put("/mode", put_mode)])
    return app


async def _send(request: Any) -> None:
    async with request as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")


async def _get_text(session: Any, url: str) -> str:
    async with session.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        return await response.text()


async def serve(
    sidecar: Sidecar,
    stop: asyncio.Event | None = None,
    on_ready: Any = None,
    num_intervals: int | None = None,
) -> None:
    """The control server and the loop, until `stop` is set (or after `num_intervals`)."""
    from aiohttp import web

    runner = web.AppRunner(control_app(sidecar), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, sidecar.config.host, sidecar.config.port)
    await site.start()
    if on_ready is not None:
        on_ready(runner.addresses[0][1])
    try:
        await sidecar.run(stop, num_intervals)
    finally:
        await runner.cleanup()
