"""Where requests come from: open-loop arrivals and closed-loop clients, each running sessions
turn by turn (a turn waits for the previous one to finish, then its think time; a turn Dynamo
turns away, all workers busy, is sent again after `workload.retry_after_s`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import simpy

from envs.sim.config import ScenarioConfig
from envs.sim.workload import Session, Turn


class Dispatched(Protocol):
    done: simpy.Event | None
    rejected: bool
    first_sent_s: float


Dispatch = Callable[[int, int, Turn, float | None], Dispatched]


class TrafficSources:
    """The workload's processes on one simulation, and whether any is still live."""

    def __init__(
        self,
        env: simpy.Environment,
        sessions: Iterator[Session],
        scenario: ScenarioConfig,
        dispatch: Dispatch,
        num_dispatched: Callable[[], int],
    ) -> None:
        self.env = env
        self._sessions = sessions
        self._scenario = scenario
        self._dispatch = dispatch
        self._num_dispatched = num_dispatched
        self._num_live = 0  # arrival processes, clients and sessions not yet over

    @property
    def done(self) -> bool:
        """Every source and session is over: no request will be sent any more."""
        return self._num_live == 0

    def start_open_loop(self, starts: Iterator[float]) -> None:
        self._num_live += 1
        self.env.process(self._arrivals(starts))

    def start_closed_loop(self, concurrency: Callable[[float], int], change_times: list[float]) -> None:
        self._concurrency = concurrency
        self._num_clients = 0
        self._spawn_clients()
        for at_s in change_times:
            self._num_live += 1  # a later level may start clients
            self.env.process(self._at(at_s, self._spawn_clients))

    def accepting(self) -> bool:
        limit = self._scenario.workload.num_requests
        duration = self._scenario.duration_s
        if limit is not None and self._num_dispatched() >= limit:
            return False
        return duration is None or self.env.now < duration

    def _arrivals(self, starts: Iterator[float]):
        trace = self._scenario.workload.arrival == "trace"
        for session in self._sessions:
            start_s = session.start_s if trace else next(starts)
            if start_s > self.env.now:
                yield self.env.timeout(start_s - self.env.now)
            if not self.accepting():
                break
            self._num_live += 1
            self.env.process(self._session_process(session))
        self._num_live -= 1

    def _at(self, at_s: float, action: Callable[[], None]):
        yield self.env.timeout(at_s)
        action()
        self._num_live -= 1

    def _spawn_clients(self) -> None:
        while self._num_clients < self._concurrency(self.env.now):
            self._num_clients += 1
            self._num_live += 1
            self.env.process(self._client())

    def _client(self):
        while self.accepting() and self._num_clients <= self._concurrency(self.env.now):
            session = next(self._sessions, None)
            if session is None:
                break
            yield from self._run_session(session)
        self._num_clients -= 1
        self._num_live -= 1

    def _session_process(self, session: Session):
        yield from self._run_session(session)
        self._num_live -= 1

    def _run_session(self, session: Session):
        retry_after_s = self._scenario.workload.retry_after_s
        for turn_index, turn in enumerate(session.turns):
            if turn_index and turn.delay_s > 0:
                yield self.env.timeout(turn.delay_s)
            first_sent_s = None
            while True:  # a turned-away request is sent again after retry_after_s
                if not self.accepting():
                    return
                flight = self._dispatch(session.session_id, turn_index, turn, first_sent_s)
                yield flight.done
                if not flight.rejected:
                    break
                first_sent_s = flight.first_sent_s
                yield self.env.timeout(retry_after_s)
