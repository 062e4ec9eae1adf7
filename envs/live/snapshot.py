"""One `MetricsSnapshot` of a live deployment from its two `/metrics` bodies: the frontend's and
the knob router's. The live backend and the router sidecar both read a deployment through this.

The frontend sees only the knob router in place of the real workers of its tier, and a
disaggregated frontend counts the decode workers' cached tokens; so the per-worker load gauges
of the knob tier and the prompt and cached token counts come from the knob router, the rest
from the frontend. Pure: text in, snapshot out.
"""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from envs.live.client import routed_counts
from envs.metrics_snapshot import TOTAL_KV_BLOCKS, MetricsSnapshot
from envs.prometheus import parse_snapshot


def live_snapshot(
    frontend_text: str, router_text: str, model_name: str, time_s: float, speedup: float
) -> MetricsSnapshot:
    """The deployment's snapshot at `time_s` scenario seconds; latencies are scaled by the
    mocker's `speedup` into scenario seconds (a real deployment has speedup 1)."""
    frontend = parse_snapshot(frontend_text, 0.0)
    router = parse_snapshot(router_text, 0.0)
    routed = routed_counts(router_text)
    knob_tier = {w.worker_type for w in router.workers}
    other_tiers = tuple(w for w in frontend.workers if w.worker_type not in knob_tier)
    workers = tuple(sorted(router.workers + other_tiers, key=lambda w: (w.worker_type, w.worker_id)))
    num_kv_workers = sum(w.worker_type in ("decode", "agg") for w in workers)
    return replace(
        frontend,
        time_s=time_s,
        ttft=frontend.ttft.scaled(speedup),
        itl=frontend.itl.scaled(speedup),
        workers=workers,
        input_tokens_total=sum(routed["prompt_tokens"].values()),
        cached_tokens_total=sum(routed["cached_tokens"].values()),
        total_kv_blocks=per_worker_kv_blocks(frontend_text, model_name) * num_kv_workers,
    )


def per_worker_kv_blocks(text: str, model_name: str) -> float:
    """One worker's KV blocks, as the frontend reports them per model: the served model's
    workers (decode, when disaggregated), else the knob tier's hidden ones (aggregated)."""
    by_model = {
        sample.labels.get("model", ""): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == TOTAL_KV_BLOCKS
        for sample in family.samples
    }
    return by_model.get(model_name, max(by_model.values(), default=0.0))
