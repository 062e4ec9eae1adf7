"""Reference check of `envs.live.scoring` against Dynamo's own KvRouter, on a live deployment.

Run by `tests/test_live.py` in a subprocess (a Dynamo runtime per process), with the deployment's
environment: `python tests/live_oracle.py WORKDIR`. For each knob setting it builds a KvRouter
with those knobs in its `KvRouterConfig` (which the runtime honours), books a random load on it
through its own `best_worker`, and asks it to place query prompts (some with cached prefixes);
our choice on the same router's reported state must be the one it makes. Prints one JSON line:
{setting: [agreements, choices with a unique minimum, disagreements of the control pricing]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.live.client import prompt_text, run_prompts
from envs.live.deploy import Deployment
from envs.live.scoring import choose_worker, knobs_for, worker_states
from envs.sim.config import RouterConfig

SETTINGS = (
    {"overlap_score_credit": 1.0, "prefill_load_scale": 1.0},
    {"overlap_score_credit": 0.0, "prefill_load_scale": 1.0},
    {"overlap_score_credit": 2.0, "prefill_load_scale": 1.0},
    {"overlap_score_credit": 1.0, "prefill_load_scale": 0.0},
    {"overlap_score_credit": 0.5, "prefill_load_scale": 2.0},
    {"overlap_score_credit": 2.0, "prefill_load_scale": 2.0},
)
CONTROL = {"overlap_score_credit": 0.0, "prefill_load_scale": 0.0}
NUM_BOOKED = 6
NUM_QUERIES = 12


async def _check(workdir: Path) -> dict[str, list[int]]:
    from dynamo.common.utils.runtime import create_runtime
    from dynamo.llm import KvRouter, KvRouterConfig
    from tokenizers import Tokenizer

    deployment = Deployment.load(workdir)
    config = json.loads((workdir / "knob_router.json").read_text())
    router_config = RouterConfig(**config["router"])
    block_size = config["block_size"]
    tokenizer = Tokenizer.from_file(str(Path(config["model_path"]) / "tokenizer.json"))
    runtime, _ = create_runtime("file", "tcp")
    routers = [
        KvRouter(
            runtime.endpoint(config["upstream_endpoint"]),
            block_size,
            KvRouterConfig(**{**config["kv_router"], **knobs}),
        )
        for knobs in SETTINGS
    ]
    await asyncio.sleep(2.0)  # the routers' ZMQ subscriptions, before the cache is filled
    # Cache 4 prefixes of different lengths on the workers the frontend picks.
    warm = [prompt_text(7000 + g, 0, 128 * (g + 1), 60) for g in range(4)]
    await run_prompts(deployment.frontend_url, deployment.model_name, warm, 2, 1)
    await asyncio.sleep(1.0)
    rng = np.random.default_rng(0)
    agreed: dict[str, list[int]] = {}
    for knobs, router in zip(SETTINGS, routers, strict=True):
        for i in range(NUM_BOOKED):
            booked = tokenizer.encode(prompt_text(8000 + i, 0, 64 * int(rng.integers(1, 8)), 40)).ids
            await router.best_worker(booked, request_id=f"booked-{i}")
        hits = unique = contrary = 0
        for q in range(NUM_QUERIES):
            group = 7000 + q % 4 if q % 3 else 9000 + q
            text = prompt_text(group, 100 + q, 128 * (q % 4 + 1), int(rng.integers(10, 300)))
            tokens = tokenizer.encode(text).ids
            states = worker_states(
                await router.get_potential_loads(tokens),
                await router.get_overlap_scores(tokens),
                len(tokens),
                block_size,
                router_config.assume_kv_reuse,
            )
            choice = choose_worker(
                states, len(tokens), block_size, knobs_for(router_config, knobs), router_config, rng
            )
            low = min(choice.costs)
            best = {s.worker_id for s, c in zip(states, choice.costs, strict=True) if c == low}
            picked, _, _ = await router.best_worker(tokens)
            hits += picked in best
            unique += len(best) == 1
            # The control: the same state priced with knobs this router was not given.
            other = choose_worker(
                states, len(tokens), block_size, knobs_for(router_config, CONTROL), router_config, rng
            )
            contrary += picked != other.worker.worker_id
        for i in range(NUM_BOOKED):
            await router.free(f"booked-{i}")
        agreed[json.dumps(knobs, sort_keys=True)] = [hits, unique, contrary]
    runtime.shutdown()
    return agreed


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_check(Path(sys.argv[1])))))
