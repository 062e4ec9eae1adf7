"""Workloads: sessions of requests, their arrival process and the content of their prompts.

A prompt's content is described as in Mooncake traces: a list of `hash_ids`, each standing for a
block of `block_tokens` identical tokens (the last one possibly cut short by `input_tokens`).
Two prompts share a KV-cache prefix exactly as far as their token streams agree, which is how
Dynamo's replay synthesises tokens from the same traces; `prompt_block_hashes` turns that into
the hash-chained full engine blocks that prefix caching and the router's indexer work on.

Randomness comes from named child streams of the scenario seed, so a change of routing policy
never changes the workload.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from envs.sim.config import LoadStep, WorkloadConfig
from envs.sim.policy_config import draw_policy_class


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of a session."""

    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]
    delay_s: float = 0.0  # think time after the previous turn completed (turns after the first)
    policy_class: str | None = None  # the router policy it names (`x-dynamo-meta-policy-class`)


@dataclass(frozen=True, slots=True)
class Session:
    """A client's sequence of turns; turn k+1 is sent when turn k completes plus its delay."""

    session_id: int
    start_s: float  # first arrival (open loop); closed loop dispatches when a slot frees
    turns: tuple[Turn, ...]


def prompt_block_hashes(
    hash_ids: tuple[int, ...], input_tokens: int, block_tokens: int, block_size: int
) -> tuple[int, ...]:
    """Chained hashes of the full `block_size`-token blocks of a prompt.

    Token i of the prompt is `hash_ids[i // block_tokens]`; each engine block's hash chains its
    parent's hash with its content, so equal hashes mean equal prefixes.
    """
    num_full = input_tokens // block_size
    hashes = []
    parent = 0
    if block_tokens % block_size == 0:
        per_trace_block = block_tokens // block_size
        for j in range(num_full):
            parent = hash((parent, hash_ids[j // per_trace_block]))
            hashes.append(parent)
        return tuple(hashes)
    for j in range(num_full):
        parent = hash((parent, _block_content(hash_ids, j * block_size, block_size, block_tokens)))
        hashes.append(parent)
    return tuple(hashes)


def _block_content(hash_ids: tuple[int, ...], start: int, length: int, block_tokens: int) -> tuple:
    """Runs of (content id, count) covering tokens [start, start + length)."""
    runs = []
    position, end = start, start + length
    while position < end:
        index = position // block_tokens
        run_end = min(end, (index + 1) * block_tokens)
        runs.append((hash_ids[index], run_end - position))
        position = run_end
    return tuple(runs)


def sequence_block_hashes(
    prompt_hashes: tuple[int, ...], input_tokens: int, output_tokens: int, block_size: int, unique_id: int
) -> tuple[int, ...]:
    """Prompt blocks followed by blocks holding generated tokens, which are unique to the
    request (sampled text is never shared), so they fill the cache but never hit."""
    num_total = (input_tokens + output_tokens) // block_size
    hashes = list(prompt_hashes)
    parent = hashes[-1] if hashes else 0
    for j in range(len(hashes), num_total):
        parent = hash((parent, -1 - unique_id, j))
        hashes.append(parent)
    return tuple(hashes)


class SyntheticSessions:
    """Sessions of synthetic prompts with shared-prefix groups and multi-turn history.

    A first turn's prompt is `round(shared_prefix_ratio * isl)` tokens of its prefix group's
    shared text followed by unique text. A later turn's prompt is the previous turn's prompt
    followed by `isl` new tokens, so it shares everything that came before (the output of the
    previous turn is not replayed, as in Mooncake traces).
    """

    def __init__(
        self,
        config: WorkloadConfig,
        block_tokens: int,
        rng: np.random.Generator,
        class_rng: np.random.Generator | None = None,
    ) -> None:
        self.config = config
        self.block_tokens = block_tokens
        self._rng = rng
        # A stream of its own, so naming policy classes leaves every other draw as it was.
        self._class_rng = class_rng if class_rng is not None else np.random.default_rng(0)
        self._next_unique = itertools.count(1 << 40)

    def _jitter(self, mean: int, spread: float) -> int:
        if spread <= 0:
            return mean
        return max(1, round(mean * (1.0 + self._rng.uniform(-spread, spread))))

    def _think_time_s(self) -> float:
        mean_s = self.config.inter_turn_delay_s
        if self.config.inter_turn_delay == "exponential" and mean_s > 0:
            return float(self._rng.exponential(mean_s))
        return mean_s

    def _unique_ids(self, num_tokens: int) -> list[int]:
        return [next(self._next_unique) for _ in range(math.ceil(num_tokens / self.block_tokens))]

    def session(self, session_id: int, start_s: float) -> Session:
        config, bt = self.config, self.block_tokens
        group = int(self._rng.integers(config.num_prefix_groups))
        mix = config.policy_class_mix
        policy_class = draw_policy_class(mix, float(self._class_rng.random())) if mix else None
        turns = []
        history: list[int] = []
        total = total_aligned = 0
        for turn_index in range(config.turns_per_session):
            isl = self._jitter(config.isl_tokens, config.isl_jitter)
            osl = self._jitter(config.osl_tokens, config.osl_jitter)
            if turn_index == 0:
                shared_blocks = round(config.shared_prefix_ratio * isl) // bt
                history = [group * 1_000_003 + 1 + j for j in range(shared_blocks)]
                history += self._unique_ids(isl - shared_blocks * bt)
                total = isl
            else:
                # Later turns append whole blocks so that the history stays block-aligned.
                new_tokens = max(bt, isl // bt * bt)
                history = history[: math.ceil(total / bt)] + self._unique_ids(new_tokens)
                total = total_aligned + new_tokens
            total_aligned = math.ceil(total / bt) * bt
            delay = self._think_time_s() if turn_index else 0.0
            turns.append(Turn(total, osl, tuple(history[: math.ceil(total / bt)]), delay, policy_class))
        return Session(session_id, start_s, tuple(turns))


def load_at(schedule: tuple[LoadStep, ...], base: float, time_s: float) -> float:
    """The load in force at `time_s`: the last step that started, or `base` before any."""
    value = base
    for step in schedule:
        if step.at_s > time_s:
            break
        value = step.value
    return value


def open_loop_starts(config: WorkloadConfig, rng: np.random.Generator) -> Iterator[float]:
    """Session start times: Poisson, or Gamma-distributed gaps with coefficient of variation
    `burstiness_cv` (cv > 1 is burstier than Poisson). The first arrival is at t = 0."""
    time_s = 0.0
    while True:
        yield time_s
        rate = load_at(config.load_schedule, config.rate_rps, time_s) / config.turns_per_session
        if config.arrival == "gamma":
            shape = 1.0 / (config.burstiness_cv**2)
            time_s += float(rng.gamma(shape, 1.0 / (rate * shape)))
        else:
            time_s += float(rng.exponential(1.0 / rate))
