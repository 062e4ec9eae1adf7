"""The environment's live backend: one episode's traffic, knobs and measurements on a running
Dynamo deployment (`poa-gym dynamo up`, or any Dynamo 1.6.1 with the knob router in front of the
tier the knobs act on).

Per control interval the environment sets the knobs (`PUT /knobs` on the knob router, the path the
sidecar uses too), sets the number of clients, waits out the interval on the wall clock, and reads:

- a `MetricsSnapshot` from the frontend's `/metrics`, with the per-worker load gauges and the
  prompt and cached token counts taken from the knob router (the frontend sees only the knob
  router in place of the real workers of its tier, and a disaggregated frontend counts the decode
  workers' cached tokens), so the observation builder reads a live deployment through the
  simulator's own code;
- the requests completed in the interval, as `RequestRecord`s: the client's wall-clock times,
  Dynamo's TTFT, and the knob router's decision for each (`GET /decisions`), joined by Dynamo's
  request id, so PoA-hat and the reward are the simulator's own functions.

Time: the deployment's mocker runs `speedup` times faster than the hardware it emulates, so a
wall-clock second is `speedup` scenario seconds. Records, snapshots and intervals are in
scenario seconds; an interval of `interval_s` takes `interval_s / speedup` on the wall clock.

Failures end the episode, never hang it: every HTTP call has a timeout, and `Unreachable` names
the endpoint and what to do.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.errors import UserError
from envs.live.decisions import LiveDecision
from envs.live.deploy import Deployment, DeploymentError
from envs.live.loadgen import ClosedLoopClients, LiveCompletion, session_stream
from envs.live.snapshot import live_snapshot
from envs.metrics_snapshot import MetricsSnapshot
from envs.sim.config import ScenarioConfig
from envs.sim.records import RequestRecord, RouteDecision, Stage
from envs.sim.run import policy_class_rng
from envs.sim.workload import SyntheticSessions


class Unreachable(UserError, RuntimeError):
    """The deployment did not answer; the message names the endpoint and what to do."""


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """Where the deployment is: a `poa-gym dynamo up` workdir, or explicit endpoints (a GPU
    deployment). Validated on construction."""

    workdir: str | None = ".dynamo-live"
    frontend_url: str | None = None
    control_url: str | None = None
    model_name: str | None = None
    token_file: str | None = None
    speedup: float | None = None  # None: the workdir's recorded speed-up, or 1
    request_timeout_s: float = 60.0
    http_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        explicit = (self.frontend_url, self.control_url, self.model_name)
        if any(explicit) and not all(explicit):
            raise ValueError("live: frontend_url, control_url and model_name go together")
        if not any(explicit) and not self.workdir:
            raise ValueError(
                "live: needs a workdir (from `poa-gym dynamo up`) or frontend_url/control_url/model_name"
            )
        if self.speedup is not None and not self.speedup > 0:
            raise ValueError(f"live.speedup: must be > 0, got {self.speedup}")
        if not self.request_timeout_s > 0 or not self.http_timeout_s > 0:
            raise ValueError("live.request_timeout_s and live.http_timeout_s must be > 0")


@dataclass(frozen=True, slots=True)
class Endpoints:
    frontend_url: str
    control_url: str
    model_name: str
    token: str
    speedup: float
    scenario: str | None  # what the workdir says it runs, if it says


def resolve(config: LiveConfig) -> Endpoints:
    """The endpoints to use (raises `DeploymentError` for a missing workdir record)."""
    if config.frontend_url:
        token = Path(config.token_file).read_text().strip() if config.token_file else ""
        return Endpoints(
            config.frontend_url.rstrip("/"),
            str(config.control_url).rstrip("/"),
            str(config.model_name),
            token,
            config.speedup or 1.0,
            None,
        )
    deployment = Deployment.load(Path(str(config.workdir)).resolve())
    speedup = config.speedup or deployment.speedup
    return Endpoints(
        deployment.frontend_url,
        deployment.control_url,
        deployment.model_name,
        deployment.token(),
        speedup,
        deployment.scenario,
    )


class LiveBackend:
    """One deployment, driven one episode at a time."""

    def __init__(self, config: LiveConfig) -> None:
        self.config = config
        self.endpoints = resolve(config)
        self._clients: ClosedLoopClients | None = None
        self._decisions: dict[str, LiveDecision] = {}
        self._last_seq = 0
        self._t0_unix_s = time.time()
        self._next_id = 0
        self.check()

    @property
    def speedup(self) -> float:
        return self.endpoints.speedup

    def check(self) -> None:
        """The frontend serves the model and the knob router answers (else `Unreachable`)."""
        ends = self.endpoints
        models = self._get_json(ends.frontend_url + "/v1/models", "the Dynamo frontend")
        served = [m.get("id") for m in models.get("data", [])]
        if ends.model_name not in served:
            raise Unreachable(
                f"{ends.frontend_url}: does not serve model {ends.model_name!r} "
                f"(it serves {served or 'none yet'}); set live.model_name to one of those"
            )
        self._get_json(ends.control_url + "/health", "the knob router")

    # -- an episode -----------------------------------------------------------------------------

    def start(self, scenario: ScenarioConfig, sessions_rng: Any, num_clients: int) -> None:
        """New clients on the scenario's workload; the previous episode's are stopped first."""
        self.stop()
        block_tokens = scenario.engine_for(
            "prefill" if scenario.topology.mode == "disagg" else "agg"
        ).block_size
        # The simulator's class stream too, so a session names the policy class it names there.
        generator = SyntheticSessions(
            scenario.workload, block_tokens, sessions_rng, policy_class_rng(scenario.seed)
        )
        self._stage = Stage.PREFILL if scenario.topology.mode == "disagg" else Stage.AGG
        self._t0_unix_s = time.time()
        self._last_seq = self._latest_seq()
        self._clients = ClosedLoopClients(
            self.endpoints.frontend_url,
            self.endpoints.model_name,
            session_stream(generator.session),
            block_tokens,
            self.speedup,
            self.config.request_timeout_s,
        )
        self._clients.set_clients(num_clients)

    def set_clients(self, num_clients: int) -> None:
        if self._clients is not None:
            self._clients.set_clients(num_clients)

    def set_knobs(self, knobs: Mapping[str, float]) -> None:
        ends = self.endpoints
        body = json.dumps(dict(knobs)).encode()
        headers = {"Authorization": f"Bearer {ends.token}", "Content-Type": "application/json"}
        request = urllib.request.Request(ends.control_url + "/knobs", body, headers, method="PUT")
        self._open(request, "the knob router")

    def now_s(self) -> float:
        """Scenario seconds since the episode's clients started."""
        return (time.time() - self._t0_unix_s) * self.speedup

    def wait_until(self, time_s: float) -> None:
        remaining = time_s / self.speedup - (time.time() - self._t0_unix_s)
        if remaining > 0:
            time.sleep(remaining)

    def snapshot(self) -> MetricsSnapshot:
        ends = self.endpoints
        frontend_text = self._get_text(ends.frontend_url + "/metrics", "the Dynamo frontend")
        router_text = self._get_text(ends.control_url + "/metrics", "the knob router")
        return live_snapshot(frontend_text, router_text, ends.model_name, self.now_s(), self.speedup)

    def finished(self) -> list[RequestRecord]:
        """The requests completed since the last call, as simulator records (failed ones are
        left out: `failures` counts them)."""
        done = self._clients.take() if self._clients is not None else []
        self._fetch_decisions()
        self.failures = [c for c in done if not c.ok]
        records = [self._record(c) for c in done if c.ok and c.request_id in self._decisions]
        for completion in done:
            self._decisions.pop(completion.request_id, None)
        return records

    def stop(self) -> None:
        if self._clients is not None:
            self._clients.close()
            self._clients = None

    close = stop

    # -- records --------------------------------------------------------------------------------

    def _record(self, completion: LiveCompletion) -> RequestRecord:
        decision = self._decisions[completion.request_id]
        arrival_s = self._scenario_s(completion.sent_unix_s)
        first_token_s = arrival_s + (completion.ttft_s or 0.0) * self.speedup
        last_s = max(first_token_s, self._scenario_s(completion.done_unix_s))
        route = RouteDecision(
            self._stage,
            self._scenario_s(decision.time_unix_s),
            decision.chosen,
            decision.candidates,
            decision.costs,
            decision.overlap_blocks,
            decision.overlap_score_credit,
            decision.prefill_load_scale,
            decision.router_temperature,
        )
        self._next_id += 1
        return RequestRecord(
            request_id=self._next_id,
            session_id=completion.session_id,
            turn=completion.turn,
            arrival_s=arrival_s,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_tokens=completion.cached_tokens,
            prefill_worker=decision.chosen,
            decode_worker=completion.decode_worker
            if completion.decode_worker is not None
            else decision.chosen,
            prefill_start_s=arrival_s,
            prefill_end_s=first_token_s,
            transfer_start_s=first_token_s,
            transfer_end_s=first_token_s,
            first_token_s=first_token_s,
            last_token_s=last_s,
            num_preemptions=0,
            decisions=(route,),
        )

    def _scenario_s(self, unix_s: float) -> float:
        return (unix_s - self._t0_unix_s) * self.speedup

    def _fetch_decisions(self) -> None:
        url = f"{self.endpoints.control_url}/decisions?after={self._last_seq}"
        for data in self._get_json(url, "the knob router"):
            decision = LiveDecision.from_json(data)
            self._last_seq = max(self._last_seq, decision.seq)
            self._decisions[decision.request_id] = decision

    def _latest_seq(self) -> int:
        decisions: Sequence[Any] = self._get_json(
            f"{self.endpoints.control_url}/decisions?after={self._last_seq}", "the knob router"
        )
        return max([self._last_seq, *(int(d["seq"]) for d in decisions)])

    # -- HTTP -----------------------------------------------------------------------------------

    def _get_text(self, url: str, what: str) -> str:
        return self._open(urllib.request.Request(url), what)

    def _get_json(self, url: str, what: str) -> Any:
        return json.loads(self._get_text(url, what))

    def _open(self, request: urllib.request.Request, what: str) -> str:
        try:
            with urllib.request.urlopen(request, timeout=self.config.http_timeout_s) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            raise Unreachable(
                f"{request.full_url}: {what} answered HTTP {error.code}: {error.read()[:200]!r}"
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise Unreachable(
                f"{request.full_url}: cannot reach {what} ({reason}); start a deployment with "
                "`poa-gym dynamo up SCENARIO` or point live.workdir / live.*_url at a running one"
            ) from None


__all__ = ["DeploymentError", "LiveBackend", "LiveConfig", "Unreachable"]
