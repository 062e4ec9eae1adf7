"""What the knob router routed, and under which knobs: Prometheus metrics for its control server.

The live deployment is Dynamo 1.6.1, so its per-request knobs are that release's (`KNOB_NAMES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from envs.live.scoring import WorkerState
from envs.sim.knobs import RELEASE_KNOBS, check_knob_values

KNOB_NAMES = RELEASE_KNOBS["dynamo-1.6"]


def validate_knobs(knobs: Mapping[str, Any]) -> dict[str, float]:
    """Dynamo's own rules for an override: known names, finite, >= 0 (raises ValueError)."""
    return check_knob_values(knobs, KNOB_NAMES)


class RoutingLedger:
    """The knobs in force and what was routed under them, as Prometheus metrics."""

    def __init__(self, knobs: Mapping[str, float]) -> None:
        self.knobs = dict(knobs)
        self.registry = CollectorRegistry()
        self._knob = Gauge("poa_gym_router_knob", "knob value in force", ["knob"], registry=self.registry)
        self._requests = Counter(
            "poa_gym_router_requests",
            "requests routed, by real worker",
            ["worker_id"],
            registry=self.registry,
        )
        self._prompt = Counter(
            "poa_gym_router_prompt_tokens", "prompt tokens routed", ["worker_id"], registry=self.registry
        )
        self._cached = Counter(
            "poa_gym_router_cached_tokens",
            "prompt tokens the worker found in its prefix cache",
            ["worker_id"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "poa_gym_router_stage_seconds",
            "time per request in the knob router, by stage: choose (state + cost) or forward",
            ["stage"],
            buckets=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5),
            registry=self.registry,
        )
        self._errors = Counter(
            "poa_gym_router_forward_errors", "requests that failed", registry=self.registry
        )
        self._retries = Counter(
            "poa_gym_router_retries",
            "forwards a worker refused (dead or departed), sent again to another worker",
            registry=self.registry,
        )
        self._unpinned = Counter(
            "poa_gym_router_pin_misses",
            "requests the workers ran elsewhere than the knob router chose",
            registry=self.registry,
        )
        self._updates = Counter(
            "poa_gym_router_knob_updates", "accepted knob changes", registry=self.registry
        )
        # The real workers' load under the frontend's own names: the frontend sees only this
        # component in their place, so the live environment reads the workers' gauges here.
        labels = ["worker_id", "dp_rank", "worker_type"]
        self._decode_blocks = Gauge(
            "dynamo_frontend_worker_active_decode_blocks",
            "blocks booked on the worker",
            labels,
            registry=self.registry,
        )
        self._prefill_tokens = Gauge(
            "dynamo_frontend_worker_active_prefill_tokens",
            "prefill tokens booked on the worker",
            labels,
            registry=self.registry,
        )
        self._show_knobs()

    def set_knobs(self, knobs: Mapping[str, Any]) -> dict[str, float]:
        self.knobs.update(validate_knobs(knobs))
        self._updates.inc()
        self._show_knobs()
        return dict(self.knobs)

    def _show_knobs(self) -> None:
        for name, value in self.knobs.items():
            self._knob.labels(knob=name).set(value)

    def record(self, worker_id: int, prompt_tokens: int, cached_tokens: int) -> None:
        label = str(worker_id)
        self._requests.labels(worker_id=label).inc()
        self._prompt.labels(worker_id=label).inc(prompt_tokens)
        self._cached.labels(worker_id=label).inc(cached_tokens)

    def record_pin_miss(self) -> None:
        self._unpinned.inc()

    def record_error(self) -> None:
        self._errors.inc()

    def record_retry(self) -> None:
        self._retries.inc()

    def show_workers(self, states: list[WorkerState], worker_type: str) -> None:
        self._decode_blocks.clear()
        self._prefill_tokens.clear()
        for state in states:
            labels = (str(state.worker_id), str(state.dp_rank), worker_type)
            self._decode_blocks.labels(*labels).set(state.potential_decode_blocks)
            self._prefill_tokens.labels(*labels).set(state.active_prefill_tokens)

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)


def routing_outcome(output: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(real worker id, prompt tokens, cached tokens) from a KvRouter output that carries them."""
    routing = output.get("routing_data") or {}
    worker = (routing.get("worker_id") or {}).get("prefill_worker_id")
    usage = output.get("completion_usage") or {}
    if worker is None or "prompt_tokens" not in usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return int(worker), int(usage["prompt_tokens"]), int(cached)
