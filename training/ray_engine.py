"""Ray as an engine for independent runs (`poa-gym sweep --engine ray`) and for RLlib.

Without an address a local Ray instance starts on this machine's cores; with one (`auto`, or
HOST:PORT) the work goes to that cluster, which gets this project's packages as `py_modules`
(its nodes need the dependencies installed, not the checkout). Ray stays optional: without it,
`ray_missing()` is true and the flags say how to install it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

PACKAGES = ("envs", "agents", "training", "eval")
INSTALL_HINT = "pip install 'poa-gym[ray]'"
T = TypeVar("T")
R = TypeVar("R")


def ray_missing() -> bool:
    return importlib.util.find_spec("ray") is None


def init_ray(address: str | None, min_cpus: int = 1) -> bool:
    """Connect to `address`, or start a local instance with at least `min_cpus` CPUs; False when
    Ray was already initialised (the caller then leaves it running)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        root = Path(__file__).resolve().parents[1]
        modules = [str(root / name) for name in PACKAGES]
        ray.init(address=address, runtime_env={"py_modules": modules}, log_to_driver=False)
    else:
        num_cpus = max(os.cpu_count() or 1, min_cpus)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def map_on_ray(
    function: Callable[[T], R],
    items: Sequence[T],
    address: str | None,
    on_done: Callable[[int, R], None] = lambda i, r: None,
) -> list[R]:
    """`function` on every item as one-CPU Ray tasks; results in item order, `on_done` as each
    finishes (in finishing order)."""
    import ray

    started = init_ray(address)
    try:
        remote = ray.remote(num_cpus=1)(function)
        index_of = {remote.remote(item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        pending = list(index_of)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index_of[done[0]]
            results[i] = ray.get(done[0])
            on_done(i, results[i])
        return results
    finally:
        if started:
            ray.shutdown()
