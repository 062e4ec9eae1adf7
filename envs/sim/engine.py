"""One worker's engine loop on the simulation clock, after the mocker's engine (aisimulate).

What runs in each pass is the scheduler's (`envs.sim.scheduler`). A pass lasts

    prefill_ms(new prefill tokens) + (decode_ms(u) if any sequence decodes in it),

with u the KV tokens of the decoding sequences over the pool's capacity, and emits one token for
every sequence that decoded or finished its prompt. Requests that arrive during a pass wait for
its end; a prefill worker's hand-offs reserve their decode worker at its next pass boundary.

The engine is iteration-level: one simpy timeout per pass.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from envs.sim.config import EngineConfig
from envs.sim.scheduler import Scheduler
from envs.sim.sequence import EngineStats, Sequence
from envs.sim.timing import TimingModel

TokenSink = Callable[[Sequence, float], None]
TransferHook = Callable[[Sequence, bool], None]  # (sequence, transfer finished?)


class Engine(Scheduler):
    """A worker: its scheduler (waiting queue, running batch, block pool) and a timing model.

    `on_first_token(seq, t)` fires when a sequence samples its first token here; `on_done(seq, t)`
    when it has sampled `output_target` tokens (its blocks are released then, unless the worker
    is a prefill worker, whose caller releases them after the KV transfer).
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
        kv_bytes_per_token: float = 0.0,
    ) -> None:
        super().__init__(env, worker_id, kind, config, kv_bytes_per_token)
        self.timing = timing
        self.stats = EngineStats()
        self._on_first_token = on_first_token
        self._on_done = on_done
        self._in_pass = False
        self._incoming: list[tuple[Sequence, float, TransferHook]] = []
        self._pending_release: list[Sequence] = []
        self._capacity_tokens = config.num_gpu_blocks * config.block_size
        self._hold_after_done = kind == "prefill"
        # The last pass as the mocker's ForwardPassMetrics report it (`_pass_metrics`), kept while
        # a scaling policy reads them (off otherwise: it costs a scan of the waiting queue).
        self.publish_passes = False
        self.last_pass: tuple[int, ...] = ()
        self.last_pass_s = 0.0
        self.on_idle: Callable[[Engine], None] | None = None  # a draining worker waits for it
        env.process(self._loop())

    @property
    def num_active_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def _pass_metrics(
        self,
        batch: list[tuple[Sequence, int]],
        num_prefill_tokens: int,
        num_decoding: int,
        kv_tokens: int,
        wall_s: float,
    ) -> tuple[int, ...]:
        """(prefill requests, their new tokens, their prefix tokens, decoding requests, their KV
        tokens, queued prompts, their tokens, queued preempted requests, their KV tokens) at the
        scheduling of a pass, as the mocker's `build_fpm_snapshot` counts them; hand-offs waiting
        for blocks count as neither queue."""
        queued = [seq for seq in self.waiting if not seq.skip_prefill]
        fresh = [seq.prompt_tokens for seq in queued if not seq.num_preemptions]
        resumed = [seq.input_tokens + seq.generated for seq in queued if seq.num_preemptions]
        self.last_pass_s = wall_s
        prefix_tokens = sum(seq.num_computed for seq, _ in batch)
        return (
            len(batch),
            num_prefill_tokens,
            prefix_tokens,
            num_decoding,
            kv_tokens,
            len(fresh),
            sum(fresh),
            len(resumed),
            sum(resumed),
        )

    @property
    def is_idle(self) -> bool:
        """Nothing runs, waits, arrives or holds a block here: a draining worker may leave."""
        return not (
            self.running
            or self.waiting
            or self._loaded
            or self._num_loading
            or self._incoming
            or self._pending_release
            or self.pool.num_active
        )

    # -- requests in and out ------------------------------------------------------------------

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

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self):  # simpy process
        env = self.env
        stalled = False
        while True:
            if self._incoming or self._pending_release:
                self._at_boundary()
            if not self.running and not self.waiting and not self._loaded:
                if self.on_idle is not None:
                    self.on_idle(self)
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
            batch, num_prefill_tokens = self._schedule()
            num_decoding = self._num_decoding
            idle_pass = not (batch or num_decoding or self._first_emitters)
            if self._num_loading and idle_pass:
                # All the work waits on KV loads: after one empty pass (which lets a preempted
                # sequence be readmitted), sleep until a load lands or a request arrives.
                if stalled:
                    stalled = False
                    self._wakeup = env.event()
                    yield self._wakeup
                    self._wakeup = None
                    continue
                stalled = True
            elif idle_pass and self.waiting:
                # The head waits for blocks that handed-over sequences hold until their KV
                # transfer ends (`_check_admissible` stops a head that could never start):
                # sleep until a release, not spin through empty passes at one instant.
                self._blocked = True
                self._wakeup = env.event()
                yield self._wakeup
                self._blocked = False
                self._wakeup = None
                continue
            else:
                stalled = False
            duration_ms = self.timing.prefill_ms(num_prefill_tokens) if num_prefill_tokens else 0.0
            kv_tokens = 0
            if num_decoding:
                kv_tokens = self._decode_base_sum + num_decoding * self._tick
                duration_ms += self.timing.decode_ms(
                    kv_tokens, self._capacity_tokens, kv_tokens / num_decoding
                )
            duration_s = duration_ms / 1000.0
            if self.publish_passes:
                self.last_pass = self._pass_metrics(
                    batch, num_prefill_tokens, num_decoding, kv_tokens, duration_s
                )
            start_s = env.now
            self._in_pass = True
            yield env.timeout(duration_s)
            self._in_pass = False
            self.stats.num_passes += 1
            self.stats.busy_s += duration_s
            self.stats.num_decode_tokens += num_decoding
            notified = self._complete_pass(batch, num_decoding, start_s)
            if self._stored:
                self._offload_stored()
            self._tick += 1
            if notified:
                # Let what the callbacks started at this instant (a closed-loop client's next
                # request, a hand-off) reach the queue before the next pass is scheduled.
                yield env.timeout(0)

    # -- completing a pass --------------------------------------------------------------------

    def _complete_pass(self, batch: list[tuple[Sequence, int]], num_decoding: int, start_s: float) -> bool:
        """Emit the pass's tokens; returns whether any first-token or done callback fired."""
        now = self.env.now
        notified = bool(self._first_emitters)
        tick = self._tick
        num_regular = num_decoding
        for seq in self._first_emitters:
            seq.num_emitted = 1
            seq.last_token_s = now
            self._on_first_token(seq, now)
            num_regular -= 1
        self._first_emitters.clear()
        finished: list[Sequence] = []
        for seq, num_new in batch:
            seq.num_computed += num_new
            if seq.num_computed < seq.prompt_tokens:
                self._register_full_blocks(seq, seq.num_computed)
                continue
            self._prefilling.remove(seq)
            self._register_full_blocks(seq, seq.num_computed)
            seq.generated += 1
            seq.num_emitted += 1
            if seq.num_emitted == 1:
                self._on_first_token(seq, now)
                notified = True
            else:
                self.stats.other_gaps_s.append(now - seq.last_token_s)
            seq.last_token_s = now
            if seq.generated >= seq.output_target:
                finished.append(seq)
            else:
                self._enter_decode(seq, tick + 1)
        if num_regular > 0:
            self.stats.pass_gaps_s.append(now - start_s)
            self.stats.pass_gap_counts.append(num_regular)
        for seq, epoch in self._done_due.pop(tick, ()):
            if seq.epoch == epoch:
                self._leave_decode(seq)
                seq.generated = seq.output_target
                self._register_full_blocks(seq, seq.decode_base + tick)
                finished.append(seq)
        for seq in finished:
            del self.running[seq]
            if not self._hold_after_done:
                self.release(seq)
            self._on_done(seq, now)
        return notified or bool(finished)
