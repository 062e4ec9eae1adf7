"""A request in flight through a simulated deployment, gathering what its record will say."""

from __future__ import annotations

import simpy

from envs.sim.knobs import Knobs
from envs.sim.records import RequestRecord, RouteDecision
from envs.sim.workload import Turn


class Flight:
    """A request in flight, gathering what its record will say."""

    __slots__ = (
        "arrival_s",
        "bypassed",
        "cached_tokens",
        "decisions",
        "decode_worker",
        "disk_cached_tokens",
        "done",
        "first_sent_s",
        "first_token_s",
        "host_cached_tokens",
        "input_tokens",
        "knobs",
        "output_tokens",
        "prefill_end_s",
        "prefill_start_s",
        "prefill_worker",
        "prompt_hashes",
        "rejected",
        "request_id",
        "seq_hashes",
        "session_id",
        "transfer_end_s",
        "transfer_start_s",
        "turn",
    )

    def __init__(
        self, request_id: int, session_id: int, turn: int, arrival_s: float, spec: Turn, knobs: Knobs
    ) -> None:
        self.request_id = request_id
        self.session_id = session_id
        self.turn = turn
        self.arrival_s = arrival_s
        # When the client first sent this turn: earlier than `arrival_s` for a retry of a request
        # Dynamo turned away (busy), so its record's TTFT is what the client waited.
        self.first_sent_s = arrival_s
        self.input_tokens = spec.input_tokens
        self.output_tokens = spec.output_tokens
        self.decisions: list[RouteDecision] = []
        self.knobs = knobs  # in force at arrival; the decode stage is routed with them too
        self.prefill_worker = self.decode_worker = -1
        self.prefill_start_s = self.prefill_end_s = self.first_token_s = -1.0
        self.transfer_start_s = self.transfer_end_s = -1.0
        self.cached_tokens = self.host_cached_tokens = self.disk_cached_tokens = 0
        self.prompt_hashes: tuple[int, ...] = ()
        self.seq_hashes: tuple[int, ...] = ()
        self.done: simpy.Event | None = None
        self.rejected = False  # turned away by a pool whose workers were all busy (HTTP 529)
        self.bypassed = False  # prefilled on its decode worker (conditional disaggregation)

    def record(self, num_preemptions: int, last_token_s: float) -> RequestRecord:
        """The immutable record of the finished request."""
        return RequestRecord(
            request_id=self.request_id,
            session_id=self.session_id,
            turn=self.turn,
            arrival_s=self.first_sent_s,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            prefill_worker=self.prefill_worker,
            decode_worker=self.decode_worker,
            prefill_start_s=self.prefill_start_s,
            prefill_end_s=self.prefill_end_s,
            transfer_start_s=self.transfer_start_s,
            transfer_end_s=self.transfer_end_s,
            first_token_s=self.first_token_s,
            last_token_s=last_token_s,
            num_preemptions=num_preemptions,
            decisions=tuple(self.decisions),
            host_cached_tokens=self.host_cached_tokens,
            disk_cached_tokens=self.disk_cached_tokens,
        )
