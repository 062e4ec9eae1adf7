"""A request's in-flight state on one worker, and the engine's pass statistics."""

from __future__ import annotations

from dataclasses import dataclass, field


class Sequence:
    """A request's in-flight state on one worker.

    While a sequence decodes, its progress is implicit: its context at pass tick T is
    `decode_base + T`, so a pass costs nothing per decoding sequence; only the passes at which
    it needs a new block or finishes touch it (see `Engine`).
    """

    __slots__ = (
        "block_hashes",
        "decode_base",
        "disk_hit_tokens",
        "epoch",
        "generated",
        "held",
        "host_hit_tokens",
        "in_decode",
        "input_tokens",
        "last_token_s",
        "num_blocks",
        "num_computed",
        "num_emitted",
        "num_preemptions",
        "num_private",
        "num_registered",
        "output_target",
        "owner",
        "prompt_tokens",
        "request_id",
        "reused_tokens",
        "scheduled_s",
        "skip_prefill",
    )

    def __init__(
        self,
        request_id: int,
        input_tokens: int,
        output_tokens: int,
        block_hashes: tuple[int, ...],
        skip_prefill: bool = False,
    ) -> None:
        self.request_id = request_id
        self.input_tokens = input_tokens
        # Tokens sampled before the sequence leaves this worker. A decode worker's sequence
        # arrives with the prompt's KV only: the token its prefill worker sampled is neither
        # sent to the client nor in the decode worker's KV (the replay's first decode pass runs
        # at exactly `input_tokens` of context).
        self.output_target = output_tokens
        self.block_hashes = block_hashes  # hashes of the full blocks of prompt + output
        self.skip_prefill = skip_prefill  # a decode worker receives the prompt's KV, not computes it
        self.prompt_tokens = input_tokens  # tokens to (re)compute before sampling
        self.generated = 0  # tokens sampled so far on this worker
        self.num_emitted = 0  # tokens this worker sent to the client
        self.num_computed = 0
        self.held: list[int] = []
        self.num_private = 0
        self.num_blocks = 0
        self.num_registered = 0
        self.num_preemptions = 0
        self.reused_tokens = -1
        self.last_token_s = 0.0
        self.scheduled_s = -1.0  # start of the first pass that worked on it here
        self.in_decode = False
        self.decode_base = 0
        self.epoch = 0  # bumped when the sequence leaves the decode set, voiding its pending events
        self.owner: object = None  # the cluster's handle for the request
        # KV tiers (envs.sim.kv_tiers): prompt tokens read from G2 / G3 at the admission that
        # set `reused_tokens`.
        self.host_hit_tokens = 0
        self.disk_hit_tokens = 0


@dataclass(slots=True)
class EngineStats:
    """What the engine measured beyond per-request records (the pooled ITL distribution)."""

    pass_gaps_s: list[float] = field(default_factory=list)  # one gap per decode pass ...
    pass_gap_counts: list[int] = field(default_factory=list)  # ... shared by this many tokens
    other_gaps_s: list[float] = field(default_factory=list)  # gaps broken by a preemption
    num_passes: int = 0
    busy_s: float = 0.0
    # One token per decoding sequence per pass, counted as it is emitted: the live service rate.
    num_decode_tokens: int = 0
