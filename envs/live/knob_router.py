"""The knob router: routes every request of a live Dynamo 1.6.1 with the agent's knobs.

Dynamo 1.6.1 takes `router_config_override` (`overlap_score_credit`, `prefill_load_scale`,
`router_temperature`) only through its Python router API, not over HTTP (the frontend answers
400 `Unsupported parameter(s)`), and the installed runtime's `KvRouter` then ignores it (its
default policy reads the score knobs from its `KvRouterConfig` only; measured). So this component
registers with the frontend in place of the tier the knobs act on (the aggregated workers, or the
prefill workers of a disaggregated deployment) and routes each preprocessed request itself:

1. It asks an in-process `dynamo.llm.KvRouter` over the real workers for the cost's inputs (each
   worker's cached prefix from the KV-event index, its booked prefill tokens, decode blocks and
   requests): Dynamo's own index and load bookkeeping.
2. It prices them with Dynamo's cost and the current knobs (`envs.live.scoring`, the simulator's
   formula) and picks a worker.
3. It sends the request through the same `KvRouter` pinned to that worker's instance id, so the
   `KvRouter` books it, tracks its prefill and frees it as it does its own choices.

A worker that refuses the forward (it died, or left discovery before the KvRouter's books caught
up) is passed over for `QUARANTINE_S` and the choice made again among the others, so a worker's
death costs only the requests it was running.

Steps 1-3 hold a lock: two requests never decide on the same snapshot (Dynamo's scheduler decides
one request at a time too). The real workers register under a model name clients do not use
(`<model>--workers`), so the frontend routes only to this component.

Its control server (127.0.0.1 by default) serves `GET /knobs`, `PUT /knobs` (bearer token),
`GET /metrics` (Prometheus text: the knobs, requests and prompt/cached tokens per real worker,
forward errors, pins the workers did not honour) and `GET /health`. The live environment and the
sidecar set knobs through it.

Run as `python -m envs.live.knob_router --config FILE.json` (`poa-gym dynamo up` writes the file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.live.decisions import DecisionLog, LiveDecision
from envs.live.ledger import KNOB_NAMES, RoutingLedger, routing_outcome, validate_knobs
from envs.live.scoring import Choice, WorkerState, choose_worker, knobs_for, worker_states
from envs.sim.config import RouterConfig

TOKEN_ENV = "POA_GYM_CONTROL_TOKEN"
ROLES = ("aggregated", "prefill")
DISCOVERY_BACKENDS = ("file", "etcd", "kubernetes", "mem")  # dynamo.common.utils.runtime.create_runtime's
REQUEST_PLANES = ("tcp", "nats")
# How long a worker that refused a request is passed over (it is tried again after, in case it
# came back; discovery drops a dead one well within this).
QUARANTINE_S = 10.0


@dataclass(frozen=True, slots=True)
class KnobRouterConfig:
    """Where the knob router sits and what it forwards to; validated on construction."""

    model_name: str
    model_path: str
    role: str  # "aggregated" or "prefill": the tier it stands in for
    serve_endpoint: str  # namespace.component.endpoint it registers at
    upstream_endpoint: str  # the real workers' namespace.component.endpoint
    block_size: int
    kv_router: Mapping[str, Any] = field(default_factory=dict)  # KvRouterConfig keyword arguments
    router: Mapping[str, Any] = field(default_factory=dict)  # the scenario's `router` section
    knobs: Mapping[str, float] = field(default_factory=dict)  # the initial override
    control_host: str = "127.0.0.1"
    control_port: int = 0
    # As the workers run: "file"/"tcp" locally; "etcd" or "kubernetes", and "nats" or "tcp", on a cluster.
    discovery_backend: str = "file"
    request_plane: str = "tcp"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: must be one of {ROLES}, got {self.role!r}")
        for name in ("serve_endpoint", "upstream_endpoint"):
            if len(str(getattr(self, name)).split(".")) != 3:
                raise ValueError(f"{name}: needs namespace.component.endpoint")
        if self.block_size < 1 or not 0 <= self.control_port < 65536:
            raise ValueError("block_size >= 1 and control_port in [0, 65535]")
        validate_knobs(self.knobs)
        if self.discovery_backend not in DISCOVERY_BACKENDS or self.request_plane not in REQUEST_PLANES:
            raise ValueError(
                f"discovery_backend must be one of {DISCOVERY_BACKENDS} and request_plane one of "
                f"{REQUEST_PLANES}, got {self.discovery_backend!r} and {self.request_plane!r}"
            )
        if self.router.get("mode", "kv") != "kv":
            raise ValueError("router.mode: the knob router prices Dynamo's KV cost; needs mode kv")

    def router_config(self) -> RouterConfig:
        return RouterConfig(**self.router)

    @classmethod
    def from_file(cls, path: Path) -> KnobRouterConfig:
        return cls(**json.loads(path.read_text()))


class KnobRouter:
    """Chooses each request's worker with the current knobs and forwards it there, pinned."""

    def __init__(
        self,
        kv_router: Any,
        ledger: RoutingLedger,
        config: KnobRouterConfig,
        seed: int | None = None,
        live_ids: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self._kv_router = kv_router
        # The workers registered now: the KvRouter's load books keep a departed worker for a while.
        self._live_ids = live_ids
        self._quarantine: dict[int, float] = {}  # worker id -> monotonic time it may be tried again
        self.ledger = ledger
        self._router = config.router_config()
        self._block_size = config.block_size
        self._prefill = config.role == "prefill"
        self._rng = np.random.default_rng(seed)
        self._deciding = asyncio.Lock()
        self.decisions = DecisionLog()

    async def worker_states(self) -> list[WorkerState]:
        """Every real worker's booked load (no request: nothing added, nothing cached)."""
        loads = await self._kv_router.get_potential_loads([])
        return worker_states(loads, {}, 0, self._block_size, self._router.assume_kv_reuse)

    @property
    def worker_type(self) -> str:
        return "prefill" if self._prefill else ""  # Dynamo leaves it empty for aggregated workers

    async def choose(self, token_ids: list[int], exclude: frozenset[int] = frozenset()) -> Choice:
        loads = await self._kv_router.get_potential_loads(token_ids)
        overlaps = await self._kv_router.get_overlap_scores(token_ids)
        isl_tokens = len(token_ids)
        states = worker_states(loads, overlaps, isl_tokens, self._block_size, self._router.assume_kv_reuse)
        live = set(self._live_ids()) if self._live_ids is not None else None
        now_s = time.monotonic()
        barred = exclude | {w for w, until_s in self._quarantine.items() if until_s > now_s}
        usable = [s for s in states if live is None or s.worker_id in live]
        states = [s for s in usable if s.worker_id not in barred] or [
            s for s in usable if s.worker_id not in exclude
        ]
        knobs = knobs_for(self._router, self.ledger.knobs)
        return choose_worker(states, isl_tokens, self._block_size, knobs, self._router, self._rng)

    async def _forward(self, request: Mapping[str, Any], context: Any) -> tuple[Choice, Any]:
        """Choose and send; a worker that refuses the request (it died, or left) is excluded and
        the choice made again among the others, as Dynamo's own router does for a dead instance."""
        failed: set[int] = set()
        while True:
            async with self._deciding:
                start_s = time.perf_counter()
                choice = await self.choose(list(request["token_ids"]), frozenset(failed))
                self._log(choice, len(request["token_ids"]), context)
                chosen_s = time.perf_counter()
                self.ledger.stage_seconds.labels("choose").observe(chosen_s - start_s)
                # The runtime starts the forward (and books the request) when it is called; awaiting
                # its stream outside the lock lets the next decision proceed meanwhile.
                forward = self._kv_router.generate_from_request(self._pinned(request, choice))
            try:
                stream = await forward
                self.ledger.stage_seconds.labels("forward").observe(time.perf_counter() - chosen_s)
                return choice, stream
            except Exception:
                self._quarantine[choice.worker.worker_id] = time.monotonic() + QUARANTINE_S
                if len(failed) + 1 >= len(choice.states):
                    raise
                failed.add(choice.worker.worker_id)
                self.ledger.record_retry()

    async def generate(self, request: Mapping[str, Any], context: Any = None) -> AsyncIterator[Any]:
        try:
            choice, stream = await self._forward(request, context)
            recorded = False
            async for output in stream:
                if not recorded and (outcome := routing_outcome(output)) is not None:
                    self.ledger.record(*outcome)
                    if outcome[0] != choice.worker.worker_id:
                        self.ledger.record_pin_miss()
                    recorded = True
                yield output
        except Exception:
            self.ledger.record_error()
            raise

    def _log(self, choice: Choice, isl_tokens: int, context: Any) -> None:
        knobs = self.ledger.knobs
        self.decisions.append(
            LiveDecision(
                self.decisions.next_seq(),
                time.time(),
                str(context.id()) if context is not None else "",
                "prefill" if self._prefill else "agg",
                choice.worker.worker_id,
                tuple(s.worker_id for s in choice.states),
                choice.costs,
                tuple(s.device_blocks for s in choice.states),
                isl_tokens,
                *(knobs[name] for name in KNOB_NAMES),  # LiveDecision's knob fields, in this order
            )
        )

    def _pinned(self, request: Mapping[str, Any], choice: Choice) -> dict[str, Any]:
        routing = dict(request.get("routing") or {})
        routing.update(backend_instance_id=choice.worker.worker_id, dp_rank=choice.worker.dp_rank)
        if self._prefill:
            routing.update(prefill_worker_id=choice.worker.worker_id, prefill_dp_rank=choice.worker.dp_rank)
        return {**request, "routing": routing}


async def serve(config: KnobRouterConfig, token: str) -> None:
    from aiohttp import web
    from dynamo.common.utils.runtime import create_runtime
    from dynamo.llm import KvRouter, KvRouterConfig, ModelInput, ModelType, WorkerType, register_model

    runtime, _ = create_runtime(config.discovery_backend, config.request_plane)
    # The KvRouter only keeps the index and the load books (its own scoring is not used); a
    # credit above 0 keeps its KV-event index on whatever the scenario's credit is.
    bookkeeping = {**config.kv_router, "overlap_score_credit": 1.0}
    kv_router = KvRouter(
        runtime.endpoint(config.upstream_endpoint), config.block_size, KvRouterConfig(**bookkeeping)
    )
    workers = await runtime.endpoint(config.upstream_endpoint).client()
    router = KnobRouter(kv_router, RoutingLedger(config.knobs), config, live_ids=workers.instance_ids)
    from envs.live.knob_control import control_app

    runner = web.AppRunner(control_app(router, token, lambda: len(workers.instance_ids())))
    await runner.setup()
    await web.TCPSite(runner, config.control_host, config.control_port).start()
    endpoint = runtime.endpoint(config.serve_endpoint)
    if config.role == "prefill":
        model_type, worker_type, needs = ModelType.Empty, WorkerType.Prefill, [[WorkerType.Decode]]
    else:
        model_type, worker_type, needs = ModelType.Chat | ModelType.Completions, WorkerType.Aggregated, None
    await register_model(
        ModelInput.Tokens,
        model_type,
        endpoint,
        config.model_path,
        config.model_name,
        worker_type=worker_type,
        kv_cache_block_size=config.block_size,
        needs=needs,
    )
    await endpoint.serve_endpoint(router.generate)


def main(argv: list[str] | None = None) -> None:
    import uvloop

    parser = argparse.ArgumentParser(
        prog="python -m envs.live.knob_router", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, type=Path, help="the JSON file `poa-gym dynamo up` wrote")
    args = parser.parse_args(argv)
    config = KnobRouterConfig.from_file(args.config)
    uvloop.run(serve(config, os.environ.get(TOKEN_ENV, "")))


if __name__ == "__main__":
    main()
