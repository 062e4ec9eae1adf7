"""One worker's scheduler state, after the mocker's vLLM-v1-style scheduler (aisimulate): the
waiting queue, the running batch, the block pool, the implicit decode set, preemption and the
lower KV tiers. `envs.sim.engine.Engine` runs it on the simulation clock.

Each pass schedules one token for every decoding sequence, then the next chunk of each
prefilling sequence in admission order, then admits waiting sequences in arrival order while
the `max_num_seqs` and `max_num_batched_tokens` budgets allow. When a sequence needs a block and
none can be freed, the most recently admitted running sequence is preempted (its blocks go back
to the pool and it recomputes later).

Decoding is implicit: a decoding sequence's context at pass tick T is `decode_base + T`, and the
sum over the batch is kept as a running total, so a pass only touches the sequences that need a
block or finish in it.

A sequence that can never be admitted (its prompt is over the pass budget with chunked prefill
off, or its blocks are over the pool) stops the run with a `ScenarioError` instead of spinning
the engine forever at one instant: vLLM refuses such a configuration at start-up.
"""

from __future__ import annotations

from collections import deque

import simpy

from envs.errors import ScenarioError
from envs.sim.config import EngineConfig
from envs.sim.kv_cache import BlockPool
from envs.sim.kv_tiers import KvTiers
from envs.sim.sequence import Sequence

_Events = dict[int, list[tuple[Sequence, int]]]  # pass tick -> [(sequence, epoch)]


class Scheduler:
    """The scheduling half of a worker: which sequences run in the next pass, with which blocks."""

    def __init__(
        self,
        env: simpy.Environment,
        worker_id: int,
        kind: str,
        config: EngineConfig,
        kv_bytes_per_token: float,
    ) -> None:
        self.env = env
        self.worker_id = worker_id
        self.kind = kind
        self.config = config
        self.block_size = config.block_size
        self.pool = BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # admission order, for LIFO preemption
        self._prefilling: list[Sequence] = []
        self._num_decoding = 0
        self._decode_base_sum = 0
        self._tick = 0
        self._grow_due: _Events = {}
        self._done_due: _Events = {}
        self._first_emitters: list[Sequence] = []
        self._wakeup: simpy.Event | None = None
        self._blocked = False  # asleep until a release: the queue's head waits for held blocks
        # Lower KV tiers (G2/G3), off unless configured; `_stored` gathers the blocks cached in G1
        # during a pass, written through to G2 when the pass ends (None keeps the hot path bare).
        tiers = config.kv_tiers
        self.tiers = KvTiers(tiers, config.block_size * kv_bytes_per_token) if tiers.enabled else None
        self._stored: list[int] | None = [] if self.tiers is not None else None
        self._num_loading = 0
        self._loaded: deque[Sequence] = deque()  # loads landed, in landing order

    def release(self, seq: Sequence) -> None:
        """Give back a sequence's blocks (cached ones stay reusable until evicted)."""
        self.pool.release(seq.held, seq.num_private)
        seq.held = []
        seq.num_private = seq.num_blocks = 0
        if self._blocked and self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    # -- scheduling ---------------------------------------------------------------------------

    def _schedule(self) -> tuple[list[tuple[Sequence, int]], int]:
        """Build one pass: the prefill chunks as (sequence, new tokens) pairs, and their total.
        Decoding sequences are in the pass implicitly."""
        preempted = self._grow_decoders()
        budget = self.config.max_num_batched_tokens - self._num_decoding
        batch: list[tuple[Sequence, int]] = []
        num_prefill_tokens = 0
        for seq in list(self._prefilling):
            if budget <= 0 or seq not in self.running:
                continue
            num_new = min(seq.prompt_tokens - seq.num_computed, budget)
            if not self._grow_or_preempt(seq, seq.num_computed + num_new):
                preempted = True
                continue
            self._register_full_blocks(seq, seq.num_computed + num_new)
            batch.append((seq, num_new))
            budget -= num_new
            num_prefill_tokens += num_new
        if not preempted:
            num_prefill_tokens += self._admit(batch, budget)
        return batch, num_prefill_tokens

    def _grow_decoders(self) -> bool:
        """Give a block to every decoding sequence whose context crosses a block boundary in
        this pass; returns whether that forced a preemption."""
        due = self._grow_due.pop(self._tick, None)
        if not due:
            return False
        preempted = False
        for seq, epoch in due:
            if seq.epoch != epoch:
                continue  # preempted or finished since the event was filed
            if not self._grow_or_preempt(seq, seq.decode_base + self._tick):
                preempted = True
                continue
            if seq.in_decode:
                self._file_grow(seq)
        return preempted

    def _grow_or_preempt(self, seq: Sequence, context_tokens: int) -> bool:
        """Blocks for `context_tokens`, preempting the last-admitted sequences as needed.
        False when `seq` itself had to be preempted."""
        while not self._grow(seq, context_tokens):
            victim = (
                next(reversed(self.running))
                if self.config.preemption_mode == "lifo"
                else next(iter(self.running))
            )
            self._preempt(victim)
            if victim is seq:
                return False
        return True

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

    def _admit(self, batch: list[tuple[Sequence, int]], budget: int) -> int:
        """Admit waiting sequences FCFS while the budgets allow; returns new prefill tokens."""
        num_prefill_tokens = 0
        waiting, running, max_seqs = self.waiting, self.running, self.config.max_num_seqs
        chunked = self.config.enable_chunked_prefill
        while budget > 0 and len(running) < max_seqs:
            # Sequences whose KV load landed go first: they hold G1 blocks, so letting a
            # sequence that needs those blocks go ahead of them could deadlock the worker.
            queue = self._loaded or waiting
            if not queue:
                break
            seq = queue[0]
            if queue is waiting:
                best_reused = seq.reused_tokens
                self._claim_prefix(seq)
                if self.tiers is not None and not seq.skip_prefill:
                    loading = self._claim_lower_tiers(seq, best_reused)
                    if loading is None:
                        self._defer(seq, queue)
                        self._check_admissible(seq)
                        break
                    if loading:
                        waiting.popleft()
                        continue
            if seq.skip_prefill:
                # The prompt's KV arrived by transfer: hold all of it and decode in this pass.
                if not self._grow(seq, seq.input_tokens + seq.generated):
                    self._defer(seq, queue)
                    self._check_admissible(seq)
                    break
                seq.num_computed = seq.prompt_tokens
                self._register_full_blocks(seq, seq.num_computed)
                self._enter_decode(seq, self._tick)
                self._first_emitters.append(seq)
                budget -= 1
            else:
                remaining = seq.prompt_tokens - seq.num_computed
                num_new = min(remaining, budget)
                if (num_new < remaining and not chunked) or not self._grow(seq, seq.num_computed + num_new):
                    self._defer(seq, queue)
                    self._check_admissible(seq, remaining)
                    break
                # vLLM v1 caches a block as soon as it is scheduled: a later request in the
                # same pass already hits it.
                self._register_full_blocks(seq, seq.num_computed + num_new)
                batch.append((seq, num_new))
                self._prefilling.append(seq)
                budget -= num_new
                num_prefill_tokens += num_new
            queue.popleft()
            running[seq] = None
            if seq.scheduled_s < 0:
                seq.scheduled_s = self.env.now
        return num_prefill_tokens

    def _check_admissible(self, seq: Sequence, remaining_tokens: int = 0) -> None:
        """The queue's head was just deferred. With nothing running, loading or holding blocks
        here, nothing can change before the next pass, so it never starts: stop with the rule.

        Raises:
            ScenarioError: the prompt is over the pass budget with chunked prefill off, or its
                blocks are over the pool.
        """
        if self.running or self._num_loading or self._loaded or self.pool.num_active:
            return
        engine = "engine" if self.kind == "agg" else f"engine (or topology.{self.kind}_engine)"
        where = f"{self.kind} worker {self.worker_id}"
        budget = self.config.max_num_batched_tokens
        if not self.config.enable_chunked_prefill and remaining_tokens > budget:
            raise ScenarioError(
                f"{where}: a {remaining_tokens}-token prompt can never be scheduled: "
                f"{engine}.enable_chunked_prefill is false and max_num_batched_tokens is {budget}; "
                "without chunked prefill a prompt must fit one pass (vLLM requires "
                "max_num_batched_tokens >= max_model_len): raise it or enable chunked prefill"
            )
        context_tokens = seq.input_tokens + seq.generated
        raise ScenarioError(
            f"{where}: a {context_tokens}-token sequence needs "
            f"{-(-context_tokens // self.block_size)} KV blocks of {self.block_size} tokens, over "
            f"{engine}.num_gpu_blocks ({self.config.num_gpu_blocks}): raise num_gpu_blocks or "
            "shorten the prompts (vLLM refuses a max_model_len its KV cache cannot hold)"
        )

    def _claim_prefix(self, seq: Sequence) -> None:
        """Take the prefix-cache hits of a sequence being admitted."""
        bs = self.block_size
        # vLLM recomputes at least the last prompt token, so a fully cached prompt reuses one block less.
        cacheable = min((seq.prompt_tokens - 1) // bs, len(seq.block_hashes))
        hits = self.pool.match_prefix(seq.block_hashes, cacheable) if cacheable > 0 else 0
        self.pool.acquire(seq.block_hashes[:hits])
        seq.held = list(seq.block_hashes[:hits])
        seq.num_blocks = seq.num_registered = hits
        seq.num_private = 0
        seq.num_computed = hits * bs
        seq.reused_tokens = max(seq.reused_tokens, hits * bs)

    def _defer(self, seq: Sequence, queue: deque[Sequence]) -> None:
        """`seq` cannot start in this pass: it gives its blocks back and waits at the head of the
        waiting queue (a loaded sequence then claims its prefix again, from G1 this time)."""
        self.release(seq)
        if queue is not self.waiting:
            self.waiting.appendleft(queue.popleft())

    # -- the decode set -----------------------------------------------------------------------

    def _enter_decode(self, seq: Sequence, first_tick: int) -> None:
        """`seq` decodes from pass `first_tick` on, with `seq.generated` tokens sampled so far."""
        seq.in_decode = True
        seq.decode_base = seq.input_tokens + seq.generated - first_tick
        self._num_decoding += 1
        self._decode_base_sum += seq.decode_base
        done_tick = first_tick + seq.output_target - seq.generated - 1
        self._done_due.setdefault(done_tick, []).append((seq, seq.epoch))
        self._file_grow(seq)

    def _file_grow(self, seq: Sequence) -> None:
        """File the pass at which `seq`'s context first exceeds the blocks it holds."""
        grow_tick = seq.num_blocks * self.block_size + 1 - seq.decode_base
        last_tick = seq.input_tokens + seq.output_target - 1 - seq.decode_base
        if grow_tick <= last_tick:
            self._grow_due.setdefault(max(grow_tick, self._tick), []).append((seq, seq.epoch))

    def _leave_decode(self, seq: Sequence) -> None:
        seq.in_decode = False
        seq.epoch += 1
        self._num_decoding -= 1
        self._decode_base_sum -= seq.decode_base

    def _preempt(self, seq: Sequence) -> None:
        del self.running[seq]
        if seq.in_decode:
            seq.generated = seq.decode_base + self._tick - seq.input_tokens
            self._leave_decode(seq)
            seq.last_token_s = self.env.now
        else:
            self._prefilling.remove(seq)
        self.release(seq)
        seq.num_preemptions += 1
        seq.num_computed = seq.num_registered = 0
        seq.skip_prefill = False  # a preempted decode-side sequence recomputes its context
        seq.prompt_tokens = seq.input_tokens + seq.generated  # the prompt and the outputs so far
        self.waiting.appendleft(seq)

    def _register_full_blocks(self, seq: Sequence, computed_tokens: int) -> None:
        full = min(computed_tokens // self.block_size, len(seq.block_hashes), seq.num_blocks)
        pool, stored = self.pool, self._stored
        while seq.num_registered < full:
            block_hash = seq.block_hashes[seq.num_registered]
            seq.num_registered += 1
            if pool.register(block_hash):
                seq.held.append(block_hash)
                seq.num_private -= 1
                if stored is not None:
                    stored.append(block_hash)

    # -- lower KV tiers (envs.sim.kv_tiers) -----------------------------------------------------

    def _offload_stored(self) -> None:
        assert self.tiers is not None and self._stored is not None
        self.tiers.offload(self._stored, self.env.now)
        self._stored.clear()

    def _claim_lower_tiers(self, seq: Sequence, best_reused: int) -> bool | None:
        """After the G1 prefix hits, find the prompt's continuation in G2 then G3 and onboard it.

        Returns True when a load is in flight (the sequence leaves the waiting queue until it
        lands), False when there is nothing to wait for, None when G1 has no room for the blocks.
        """
        assert self.tiers is not None
        bs, now_s = self.block_size, self.env.now
        hits = seq.num_blocks
        cacheable = min((seq.prompt_tokens - 1) // bs, len(seq.block_hashes))
        num_host = num_disk = 0
        if self.pool.caching and hits < cacheable:
            num_host, num_disk = self.tiers.match(seq.block_hashes, hits, cacheable, now_s)
        total_tokens = (hits + num_host + num_disk) * bs
        if total_tokens > best_reused:
            seq.host_hit_tokens, seq.disk_hit_tokens = num_host * bs, num_disk * bs
            seq.reused_tokens = total_tokens
        if not num_host and not num_disk:
            return False
        if not self._grow(seq, total_tokens):
            return None
        seq.num_computed = total_tokens
        ready_s = self.tiers.onboard(seq.block_hashes, hits, num_host, num_disk, now_s)
        if ready_s <= now_s:
            self._register_full_blocks(seq, total_tokens)
            return False
        self._num_loading += 1
        timer = self.env.timeout(ready_s - now_s)
        timer.callbacks.append(lambda _event: self._finish_onboard(seq))
        return True

    def _finish_onboard(self, seq: Sequence) -> None:
        """The load landed: the blocks join G1's cache and the sequence is schedulable again,
        ahead of the waiting queue (it was at its head when the load started)."""
        self._num_loading -= 1
        self._register_full_blocks(seq, seq.num_computed)
        self._loaded.append(seq)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()
