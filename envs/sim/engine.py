"""One worker's engine loop, after the mocker's vLLM-v1-style scheduler (aisimulate).

Each pass schedules the running sequences first (one token for a decoding sequence, the next
chunk for a prefilling one), then admits waiting sequences in arrival order while the
`max_num_seqs` and `max_num_batched_tokens` budgets allow. A pass lasts

    prefill_ms(new prefill tokens) + (decode_ms(u) if any sequence decodes in it),

with u the KV tokens of the decoding sequences over the pool's capacity, and emits one token for
every sequence that decoded or finished its prompt. When a sequence needs a block and none can be
freed, the most recently admitted running sequence is preempted (its blocks go back to the pool
and it recomputes later), as the mocker does. Requests that arrive during a pass wait for its end.

The engine is iteration-level: one simpy timeout per pass, never one event per token.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from envs.sim.config import EngineConfig
from envs.sim.kv_cache import BlockPool
from envs.sim.timing import TimingModel


class Sequence:
    """A request's in-flight state on one worker."""

    __slots__ = (
        "block_hashes",
        "generated",
        "held",
        "input_tokens",
        "is_prefilling",
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
        output_target: int,
        block_hashes: tuple[int, ...],
        skip_prefill: bool = False,
    ) -> None:
        self.request_id = request_id
        self.input_tokens = input_tokens
        # Tokens sampled before the sequence leaves this worker; a decode worker's sequence
        # arrives with the token its prefill worker sampled, which the client never sees.
        self.output_target = output_target + (1 if skip_prefill else 0)
        self.block_hashes = block_hashes  # hashes of the full blocks of prompt + output
        self.skip_prefill = skip_prefill  # a decode worker receives the prompt's KV, not computes it
        self.prompt_tokens = input_tokens  # tokens to (re)compute before sampling
        self.generated = 1 if skip_prefill else 0  # tokens sampled so far (here or upstream)
        self.num_emitted = 0  # tokens this worker sent to the client
        self.num_computed = 0
        self.is_prefilling = True
        self.held: list[int] = []
        self.num_private = 0
        self.num_blocks = 0
        self.num_registered = 0
        self.num_preemptions = 0
        self.reused_tokens = -1
        self.last_token_s = 0.0
        self.scheduled_s = -1.0  # start of the first pass that worked on it here
        self.owner: object = None  # the cluster's handle for the request


@dataclass(slots=True)
class EngineStats:
    """What the engine measured, beyond per-request records (for the ITL distribution)."""

    pass_gaps_s: list[float] = field(default_factory=list)  # one gap per decode pass ...
    pass_gap_counts: list[int] = field(default_factory=list)  # ... shared by this many tokens
    other_gaps_s: list[float] = field(default_factory=list)  # gaps broken by a preemption
    num_passes: int = 0
    busy_s: float = 0.0


TokenSink = Callable[[Sequence, float], None]
TransferHook = Callable[[Sequence, bool], None]  # (sequence, transfer finished?)


class Engine:
    """A worker: a waiting queue, a running batch, a block pool and a timing model.

    `on_first_token(seq, t)` fires when a sequence samples its first token here; `on_done(seq, t)`
    when it has sampled `output_target` tokens (its blocks are released then, unless the worker
    is a prefill worker, whose caller releases them after the KV transfer with `release`).
    """

    def __init__(
        self,
        env: simpy.Environment,
        worker_id: int,
        kind: str,
        config: EngineConfig,
        timing: TimingModel,
        on_first_token: TokenSink,
        on_done: TokenSink,
    ) -> None:
        self.env = env
        self.worker_id = worker_id
        self.kind = kind
        self.config = config
        self.block_size = config.block_size
        self.pool = BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        self.timing = timing
        self.stats = EngineStats()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._on_first_token = on_first_token
        self._on_done = on_done
        self._wakeup: simpy.Event | None = None
        self._in_pass = False
        self._incoming: list[tuple[Sequence, float, TransferHook]] = []  # KV transfers to reserve
        self._pending_release: list[Sequence] = []
        self._capacity_tokens = config.num_gpu_blocks * config.block_size
        self._hold_after_done = kind == "prefill"
        env.process(self._loop())

    @property
    def num_active_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def submit(self, seq: Sequence) -> None:
        """A routed request joins the waiting queue; it is scheduled from the next pass on."""
        self.waiting.append(seq)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def reserve(self, seq: Sequence, transfer_s: float, on_arrival: TransferHook) -> None:
        """A prefill worker hands `seq` over. As in the mocker, the destination reserves it at
        its next pass boundary (now, if idle); the KV transfer runs from then on, and the
        sequence joins the waiting queue when the transfer completes."""
        if self._in_pass:
            self._incoming.append((seq, transfer_s, on_arrival))
        else:
            self._start_transfer(seq, transfer_s, on_arrival)

    def release_at_boundary(self, seq: Sequence) -> None:
        """Release a handed-over sequence's blocks at this worker's next pass boundary."""
        if self._in_pass:
            self._pending_release.append(seq)
        else:
            self.release(seq)

    def _start_transfer(self, seq: Sequence, transfer_s: float, on_arrival: TransferHook) -> None:
        if transfer_s <= 0:
            on_arrival(seq, True)
            self.submit(seq)
            return
        on_arrival(seq, False)
        timer = self.env.timeout(transfer_s)
        timer.callbacks.append(lambda _event: (on_arrival(seq, True), self.submit(seq)))

    def _at_boundary(self) -> None:
        for seq in self._pending_release:
            self.release(seq)
        self._pending_release.clear()
        incoming, self._incoming = self._incoming, []
        for seq, transfer_s, on_arrival in incoming:
            self._start_transfer(seq, transfer_s, on_arrival)

    def release(self, seq: Sequence) -> None:
        """Give back a finished sequence's blocks (prefill workers: after the KV transfer)."""
        self.pool.release(seq.held, seq.num_private)
        seq.held = []
        seq.num_private = seq.num_blocks = 0

    def _loop(self):  # simpy process
        env = self.env
        while True:
            if self._incoming or self._pending_release:
                self._at_boundary()
            if not self.running and not self.waiting:
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
            batch, num_prefill_tokens, num_decoding, decode_kv_tokens = self._schedule()
            duration_s = self._pass_duration_s(num_prefill_tokens, num_decoding, decode_kv_tokens)
            start_s = env.now
            self._in_pass = True
            yield env.timeout(duration_s)
            self._in_pass = False
            self.stats.num_passes += 1
            self.stats.busy_s += duration_s
            self._complete_pass(batch, start_s)

    def _pass_duration_s(self, num_prefill_tokens: int, num_decoding: int, decode_kv_tokens: int) -> float:
        duration_ms = self.timing.prefill_ms(num_prefill_tokens) if num_prefill_tokens else 0.0
        if num_decoding:
            duration_ms += self.timing.decode_ms(
                decode_kv_tokens, self._capacity_tokens, decode_kv_tokens / num_decoding
            )
        return duration_ms / 1000.0

    # -- scheduling ---------------------------------------------------------------------------

    def _schedule(self) -> tuple[list[tuple[Sequence, int]], int, int, int]:
        """Build one pass: (sequence, new prefill tokens or 0 for a decode step) pairs, the
        number of new prefill tokens, the number of decoding sequences and their KV tokens."""
        budget = self.config.max_num_batched_tokens
        batch: list[tuple[Sequence, int]] = []
        num_prefill_tokens = decode_kv_tokens = 0
        preempted = False
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            if seq.is_prefilling:
                num_new = min(seq.prompt_tokens - seq.num_computed, budget)
                context = seq.num_computed + num_new
            else:
                num_new = 1
                context = seq.input_tokens + seq.generated
            if not self._grow(seq, context):
                preempted = True
                if not self._preempt_for(seq):
                    break  # `seq` itself was preempted: nothing after it is scheduled
                if not self._grow(seq, context):
                    break
            budget -= num_new
            if seq.is_prefilling:
                batch.append((seq, num_new))
                num_prefill_tokens += num_new
            else:
                batch.append((seq, 0))
                decode_kv_tokens += context
            i += 1
        num_decoding = len(batch) - sum(1 for _, n in batch if n)
        if not preempted:
            num_prefill_tokens, more_decoding, more_kv = self._admit(batch, budget, num_prefill_tokens)
            num_decoding += more_decoding
            decode_kv_tokens += more_kv
        return batch, num_prefill_tokens, num_decoding, decode_kv_tokens

    def _admit(
        self, batch: list[tuple[Sequence, int]], budget: int, num_prefill_tokens: int
    ) -> tuple[int, int, int]:
        """Admit waiting sequences FCFS while the budgets allow."""
        num_decoding = decode_kv_tokens = 0
        waiting, running, max_seqs = self.waiting, self.running, self.config.max_num_seqs
        chunked = self.config.enable_chunked_prefill
        while waiting and budget > 0 and len(running) < max_seqs:
            seq = waiting[0]
            self._claim_prefix(seq)
            if seq.skip_prefill:
                # The prompt's KV arrived by transfer: hold all of it and decode in this pass.
                context = seq.input_tokens + seq.generated
                if not self._grow(seq, context):
                    self.release(seq)
                    break
                seq.num_computed = seq.prompt_tokens
                seq.is_prefilling = False
                self._register_full_blocks(seq)
                batch.append((seq, 0))
                budget -= 1
                num_decoding += 1
                decode_kv_tokens += context
            else:
                remaining = seq.prompt_tokens - seq.num_computed
                num_new = min(remaining, budget)
                if (num_new < remaining and not chunked) or not self._grow(seq, seq.num_computed + num_new):
                    self.release(seq)
                    break
                batch.append((seq, num_new))
                budget -= num_new
                num_prefill_tokens += num_new
            waiting.popleft()
            running.append(seq)
            if seq.scheduled_s < 0:
                seq.scheduled_s = self.env.now
        return num_prefill_tokens, num_decoding, decode_kv_tokens

    def _claim_prefix(self, seq: Sequence) -> None:
        """Take the prefix-cache hits of a sequence being admitted."""
        bs = self.block_size
        # vLLM recomputes at least the last prompt token, so a fully cached prompt reuses one block less.
        cacheable = (seq.prompt_tokens - 1) // bs
        hits = self.pool.match_prefix(seq.block_hashes, min(cacheable, len(seq.block_hashes)))
        self.pool.acquire(seq.block_hashes[:hits])
        seq.held = list(seq.block_hashes[:hits])
        seq.num_blocks = seq.num_registered = hits
        seq.num_private = 0
        seq.num_computed = hits * bs
        seq.reused_tokens = max(seq.reused_tokens, hits * bs)

    def _grow(self, seq: Sequence, context_tokens: int) -> bool:
        """Make sure `seq` holds blocks for `context_tokens` tokens."""
        need = -(-context_tokens // self.block_size) - seq.num_blocks
        if need <= 0:
            return True
        if not self.pool.allocate(need):
            return False
        seq.num_private += need
        seq.num_blocks += need
        return True

    def _preempt_for(self, seq: Sequence) -> bool:
        """Preempt running sequences (last admitted first) until `seq` can grow; False if `seq`
        itself had to go."""
        running = self.running
        victim = running.pop() if self.config.preemption_mode == "lifo" else running.pop(0)
        self._preempt(victim)
        return victim is not seq

    def _preempt(self, seq: Sequence) -> None:
        self.release(seq)
        seq.num_preemptions += 1
        seq.num_computed = 0
        seq.num_registered = 0
        seq.is_prefilling = True
        seq.skip_prefill = False  # a preempted decode-side sequence recomputes its context
        seq.prompt_tokens = seq.input_tokens + seq.generated  # recompute prompt and outputs so far
        self.waiting.appendleft(seq)

    # -- completing a pass --------------------------------------------------------------------

    def _complete_pass(self, batch: list[tuple[Sequence, int]], start_s: float) -> None:
        now = self.env.now
        num_regular = 0
        finished: list[Sequence] = []
        for seq, num_new in batch:
            if num_new:
                seq.num_computed += num_new
                if seq.num_computed < seq.prompt_tokens:
                    self._register_full_blocks(seq)
                    continue
                seq.is_prefilling = False
            else:
                seq.num_computed += 1
            seq.generated += 1
            seq.num_emitted += 1
            if seq.num_emitted == 1:
                self._on_first_token(seq, now)
            elif seq.last_token_s == start_s:
                num_regular += 1
            else:
                self.stats.other_gaps_s.append(now - seq.last_token_s)
            seq.last_token_s = now
            if seq.num_computed % self.block_size == 0 or num_new:
                self._register_full_blocks(seq)
            if seq.generated >= seq.output_target:
                finished.append(seq)
        if num_regular:
            self.stats.pass_gaps_s.append(now - start_s)
            self.stats.pass_gap_counts.append(num_regular)
        if finished:
            self._finish(finished, now)

    def _register_full_blocks(self, seq: Sequence) -> None:
        full = min(seq.num_computed // self.block_size, len(seq.block_hashes))
        pool = self.pool
        while seq.num_registered < full:
            block_hash = seq.block_hashes[seq.num_registered]
            seq.num_registered += 1
            if pool.register(block_hash):
                seq.held.append(block_hash)
                seq.num_private -= 1

    def _finish(self, finished: list[Sequence], now: float) -> None:
        done = set(map(id, finished))
        self.running = [seq for seq in self.running if id(seq) not in done]
        for seq in finished:
            if not self._hold_after_done:
                self.release(seq)
            self._on_done(seq, now)
