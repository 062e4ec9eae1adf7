"""Closed-loop clients for a live deployment: the scenario's sessions, sent as OpenAI completions.

Each client runs sessions back to back, as the simulator's closed loop does (`envs.sim.cluster`):
turn k+1 goes out when turn k has completed plus its think time. The number of clients follows
`set_clients`; a client above the new number stops after its current request. The sessions are
the simulator's own (`SyntheticSessions` on the scenario seed's `sessions` stream), so a live run
and a simulated run of the same scenario and seed send the same prompts in the same order.

Prompts are text whose tokens are the session's `hash_ids` blocks: with the deployment's
byte-level tokenizer (`envs.live.tiny_model`) each block of `block_tokens` characters is exactly
`block_tokens` tokens, and two prompts share exactly the blocks their `hash_ids` share. Against a
real model's tokenizer the lengths and prefixes are approximate.

A turn that names a router policy class (`Turn.policy_class`, drawn from the workload's
`policy_class_mix`) carries it in the header Dynamo's router classifies by.

Times are wall-clock; think times are divided by the deployment's speed-up (the mocker runs that
much faster than the hardware it emulates). The clients run on their own asyncio loop in a daemon
thread, so the environment's `step` stays synchronous.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from envs.sim.workload import Session, Turn

OVERLOAD_STATUS = 529  # Dynamo's answer when every worker is busy (DYN_HTTP_OVERLOAD_STATUS_CODE)
# The router policy class a request names (`--router-policy-config`); the simulator reads the
# same name off `Turn.policy_class`, so both classify the same requests.
POLICY_CLASS_HEADER = "x-dynamo-meta-policy-class"


@dataclass(frozen=True, slots=True)
class LiveCompletion:
    """One request as the client saw it (wall-clock Unix seconds) and as Dynamo reported it."""

    request_id: str  # Dynamo's context id: the response's `id` without `cmpl-`
    session_id: int
    turn: int
    sent_unix_s: float
    done_unix_s: float
    ttft_s: float | None  # Dynamo's own measure (`nvext.timing.ttft_ms`)
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    prefill_worker: int | None
    decode_worker: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def rejected(self) -> bool:
        """Dynamo turned it away: every worker was busy (its overload status, 529)."""
        return self.error.startswith(f"HTTP {OVERLOAD_STATUS}")


def block_text(hash_id: int, block_tokens: int) -> str:
    """`block_tokens` ASCII characters standing for one block; distinct ids give distinct text."""
    unit = f"{hash_id & 0xFFFFFFFFFFFF:x};"
    return (unit * (block_tokens // len(unit) + 1))[:block_tokens]


def turn_prompt(turn: Turn, block_tokens: int) -> str:
    text = "".join(block_text(h, block_tokens) for h in turn.hash_ids)
    return text[: turn.input_tokens]


class ClosedLoopClients:
    """A varying number of clients sending the sessions of `sessions` to `frontend_url`."""

    def __init__(
        self,
        frontend_url: str,
        model_name: str,
        sessions: Iterator[Session],
        block_tokens: int,
        speedup: float = 1.0,
        request_timeout_s: float = 60.0,
        retry_after_s: float | None = None,
    ) -> None:
        """`retry_after_s` (scenario seconds): a request Dynamo turns away (529) is sent again
        that long after, as the simulator's clients do (`workload.retry_after_s`); None sends
        the next turn instead."""
        if not speedup > 0 or not request_timeout_s > 0:
            raise ValueError("speedup and request_timeout_s must be > 0")
        if retry_after_s is not None and not retry_after_s > 0:
            raise ValueError(f"retry_after_s must be > 0, got {retry_after_s}")
        self._retry_after_s = retry_after_s
        self._url = frontend_url.rstrip("/") + "/v1/completions"
        self._model = model_name
        self._sessions = sessions
        self._block_tokens = block_tokens
        self._speedup = speedup
        self._timeout_s = request_timeout_s
        self._target = 0
        self._running: dict[int, asyncio.Task[None]] = {}
        self._done: list[LiveCompletion] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="poa-gym-clients", daemon=True)
        self._thread.start()
        self._session_http: Any = self._call(self._open_session())

    # -- control, from the caller's thread ----------------------------------------------------------

    def set_clients(self, num_clients: int) -> None:
        self._call(self._resize(max(0, int(num_clients))))

    def take(self) -> list[LiveCompletion]:
        """The requests completed (or failed) since the last call, in completion order."""
        with self._lock:
            done, self._done = self._done, []
        return done

    @property
    def num_in_flight(self) -> int:
        return self._call(self._count())

    def close(self, grace_s: float = 0.0) -> None:
        """Stop every client: wait up to `grace_s` for requests in flight, then cancel them."""
        if not self._thread.is_alive():
            return
        self._call(self._stop(grace_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # -- on the clients' loop -----------------------------------------------------------------------

    async def _open_session(self) -> Any:
        import aiohttp

        # One connection per client: the default pool of 100 would queue clients in aiohttp.
        connector = aiohttp.TCPConnector(limit=0)
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s)
        )

    async def _count(self) -> int:
        return sum(not task.done() for task in self._running.values())

    async def _resize(self, num_clients: int) -> None:
        self._target = num_clients
        self._running = {i: t for i, t in self._running.items() if not t.done()}
        for index in range(num_clients):
            if index not in self._running:
                self._running[index] = asyncio.get_running_loop().create_task(self._client(index))

    async def _stop(self, grace_s: float) -> None:
        self._target = 0
        tasks = [t for t in self._running.values() if not t.done()]
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session_http.close()

    async def _client(self, index: int) -> None:
        while index < self._target:
            session = next(self._sessions, None)
            if session is None:
                return
            for turn_index, turn in enumerate(session.turns):
                if turn_index and turn.delay_s > 0:
                    await asyncio.sleep(turn.delay_s / self._speedup)
                while True:
                    if index >= self._target:
                        return
                    completion = await self._send(session.session_id, turn_index, turn)
                    with self._lock:
                        self._done.append(completion)
                    if not completion.rejected or self._retry_after_s is None:
                        break
                    await asyncio.sleep(self._retry_after_s / self._speedup)

    async def _send(self, session_id: int, turn_index: int, turn: Turn) -> LiveCompletion:
        request = (self._url, self._model, self._block_tokens)
        return await send_turn(self._session_http, request, session_id, turn_index, turn)


async def send_turn(
    http: Any, request: tuple[str, str, int], session_id: int, turn_index: int, turn: Turn
) -> LiveCompletion:
    """One turn as an OpenAI completion (`request`: URL, model, block tokens), as the client saw it."""
    url, model, block_tokens = request
    body = {
        "model": model,
        "prompt": turn_prompt(turn, block_tokens),
        "max_tokens": turn.output_tokens,
        "nvext": {"extra_fields": ["worker_id", "timing"]},
    }
    headers = {POLICY_CLASS_HEADER: turn.policy_class} if turn.policy_class else None
    sent = time.time()

    def failed(error: str) -> LiveCompletion:
        return LiveCompletion(
            "", session_id, turn_index, sent, time.time(), None, turn.input_tokens, 0, 0, None, None, error
        )

    try:
        async with http.post(url, json=body, headers=headers) as response:
            text = await response.text()
            if response.status != 200:
                return failed(f"HTTP {response.status}: {text[:200]}")
            data = json.loads(text)
    except (TimeoutError, OSError, ValueError) as error:
        return failed(repr(error))
    return _completion(data, session_id, turn_index, sent, time.time())


def _completion(data: dict[str, Any], session_id: int, turn: int, sent: float, done: float) -> LiveCompletion:
    usage = data.get("usage") or {}
    nvext = data.get("nvext") or {}
    workers = nvext.get("worker_id") or {}
    ttft_ms = (nvext.get("timing") or {}).get("ttft_ms")
    return LiveCompletion(
        str(data.get("id", "")).removeprefix("cmpl-"),
        session_id,
        turn,
        sent,
        done,
        None if ttft_ms is None else ttft_ms / 1000.0,
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
        int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        _int_or_none(workers.get("prefill_worker_id")),
        _int_or_none(workers.get("decode_worker_id")),
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def session_stream(make_session: Callable[[int, float], Session]) -> Iterator[Session]:
    """Sessions numbered from 0, as the simulator's closed loop draws them."""
    return (make_session(i, 0.0) for i in itertools.count())
