"""An OpenAI-compatible client for a live deployment: prompts with exact shared prefixes, sent at a
fixed concurrency, with Dynamo's per-request routing and timing (`nvext.extra_fields`).

The deployment's tokenizer is byte-level with no merges (`envs.live.tiny_model`), so a prompt of
N ASCII characters is N tokens and two prompts share exactly the blocks their prefixes share.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CompletionResult:
    ok: bool
    status: int
    latency_s: float
    ttft_ms: float | None = None
    worker_id: int | None = None  # the worker that ran the prefill (Dynamo's nvext)
    error: str = ""


def prompt_text(group: int, index: int, prefix_tokens: int, suffix_tokens: int) -> str:
    """A prompt whose first `prefix_tokens` tokens are shared by its group and the rest unique."""
    prefix = (f"[shared prefix {group:06d}] " * (prefix_tokens // 10 + 1))[:prefix_tokens]
    suffix = (f"<request {group}/{index}> " * (suffix_tokens // 8 + 1))[:suffix_tokens]
    return prefix + suffix


async def complete(session: Any, url: str, model: str, prompt: str, max_tokens: int) -> CompletionResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": False,
        "nvext": {"extra_fields": ["worker_id", "timing"]},
    }
    start_s = time.perf_counter()
    try:
        async with session.post(f"{url}/v1/completions", json=body) as response:
            text = await response.text()
            latency_s = time.perf_counter() - start_s
            if response.status != 200:
                return CompletionResult(False, response.status, latency_s, error=text[:300])
            nvext = json.loads(text).get("nvext") or {}
    except (TimeoutError, OSError, ValueError) as error:
        return CompletionResult(False, 0, time.perf_counter() - start_s, error=repr(error))
    worker = (nvext.get("worker_id") or {}).get("prefill_worker_id")
    ttft_ms = (nvext.get("timing") or {}).get("ttft_ms")
    return CompletionResult(True, 200, latency_s, ttft_ms, None if worker is None else int(worker))


async def run_prompts(
    url: str, model: str, prompts: Sequence[str], max_tokens: int, concurrency: int, timeout_s: float = 60.0
) -> list[CompletionResult]:
    """Send every prompt, at most `concurrency` at a time; results in prompt order."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(session: Any, prompt: str) -> CompletionResult:
        async with gate:
            return await complete(session, url, model, prompt, max_tokens)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session, prompt) for prompt in prompts)))


def routed_counts(metrics_text: str) -> dict[str, dict[str, float]]:
    """The knob router's counters by real worker: {"requests"|"prompt_tokens"|"cached_tokens":
    {worker_id: total}}, and {"pin_misses"|"forward_errors": {"": total}}, parsed with
    prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    names = ("requests", "prompt_tokens", "cached_tokens", "pin_misses", "forward_errors")
    wanted = {f"poa_gym_router_{name}_total": name for name in names}
    counts: dict[str, dict[str, float]] = {name: {} for name in wanted.values()}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in wanted:
                counts[wanted[sample.name]][sample.labels.get("worker_id", "")] = sample.value
    return counts
