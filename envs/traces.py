"""Mooncake-format JSONL traces: read them into sessions, and write sessions out as traces.

One JSON object per line: `timestamp` (ms), `input_length` (optional: the hash blocks' capacity
by default), `output_length`, `hash_ids` (one id per `block_tokens`-token block, prefix-chained),
and optionally `session_id`, `delay` (ms) and `policy_class` (the router policy the request
names, as Dynamo's replay reads it). Rows sharing a `session_id` are the turns of one
session, as in Dynamo's replay: a later turn is sent `delay` ms (default: the timestamp gap) after
the previous one completes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envs.errors import ScenarioError
from envs.sim.workload import Session, Turn

_KNOWN = {"timestamp", "input_length", "output_length", "hash_ids", "session_id", "delay", "request_id"}
_KNOWN |= {"policy_class"}


def load_mooncake(path: str | Path, block_tokens: int = 512, time_scale: float = 1.0) -> tuple[Session, ...]:
    """Sessions of a Mooncake trace; timestamps are rebased to 0 and divided by `time_scale`."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read trace ({error.strerror})") from None
    rows = [(n, _parse_row(path, n, line, block_tokens)) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise ScenarioError(f"{path}: the trace has no requests")
    return _group_sessions(rows, time_scale)


def _parse_row(path: Path, line_no: int, line: str, block_tokens: int) -> dict[str, Any]:
    where = f"{path}:{line_no}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ScenarioError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise ScenarioError(f"{where}: each line must be a JSON object")
    unknown = set(row) - _KNOWN
    if unknown:
        raise ScenarioError(f"{where}: field '{sorted(unknown)[0]}': unknown field")
    hash_ids = row.get("hash_ids")
    if not isinstance(hash_ids, list) or not hash_ids or not all(_is_int(h) for h in hash_ids):
        raise ScenarioError(f"{where}: field 'hash_ids': must be a non-empty list of integers")
    capacity = len(hash_ids) * block_tokens
    row.setdefault("input_length", capacity)
    for field in ("input_length", "output_length"):
        if not _is_int(row.get(field)) or row[field] <= 0:
            raise ScenarioError(f"{where}: field '{field}': must be a positive integer")
    if row["input_length"] > capacity:
        raise ScenarioError(
            f"{where}: field 'input_length': {row['input_length']} exceeds the hash_ids capacity "
            f"{capacity} ({len(hash_ids)} blocks of {block_tokens} tokens)"
        )
    if not isinstance(row.get("policy_class", ""), str):
        raise ScenarioError(f"{where}: field 'policy_class': must be a string")
    for field in ("timestamp", "delay"):
        value = row.get(field, 0.0)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ScenarioError(f"{where}: field '{field}': must be a finite number >= 0 (milliseconds)")
    return row


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _group_sessions(rows: list[tuple[int, dict[str, Any]]], time_scale: float) -> tuple[Session, ...]:
    t0 = min(row.get("timestamp", 0.0) for _, row in rows)
    grouped: dict[object, list[dict[str, Any]]] = {}
    order: list[object] = []
    for line_no, row in rows:
        key = ("session", row["session_id"]) if "session_id" in row else ("line", line_no)
        if key not in grouped:
            grouped[key] = []
            order.append(key)
        grouped[key].append(row)
    sessions = []
    for session_id, key in enumerate(order):
        turns_rows = grouped[key]
        first = turns_rows[0]
        turns = []
        for k, row in enumerate(turns_rows):
            gap_ms = (
                row.get("delay", row.get("timestamp", 0.0) - turns_rows[k - 1].get("timestamp", 0.0))
                if k
                else 0
            )
            hash_ids = tuple(int(h) for h in row["hash_ids"])
            delay_s = max(0.0, gap_ms) / 1000.0 / time_scale
            turn = Turn(row["input_length"], row["output_length"], hash_ids, delay_s, row.get("policy_class"))
            turns.append(turn)
        start_s = (first.get("timestamp", 0.0) - t0) / 1000.0 / time_scale
        sessions.append(Session(session_id, start_s, tuple(turns)))
    sessions.sort(key=lambda s: s.start_s)
    return tuple(sessions)


def mooncake_rows(sessions: Iterable[Session], block_tokens: int) -> list[dict[str, Any]]:
    """Sessions as Mooncake rows (the inverse of `load_mooncake`, for single-turn sessions
    exactly; multi-turn sessions carry `session_id` and `delay`)."""
    rows = []
    for session in sessions:
        multi = len(session.turns) > 1
        for k, turn in enumerate(session.turns):
            needed = math.ceil(turn.input_tokens / block_tokens)
            row: dict[str, Any] = {
                "timestamp": round(session.start_s * 1000.0, 6),
                "input_length": turn.input_tokens,
                "output_length": turn.output_tokens,
                "hash_ids": list(turn.hash_ids[:needed]),
            }
            if turn.policy_class is not None:
                row["policy_class"] = turn.policy_class
            if multi:
                row["session_id"] = f"s{session.session_id}"
                if k:
                    row["delay"] = round(turn.delay_s * 1000.0, 6)
            rows.append(row)
    return rows


def write_mooncake(rows: Iterable[dict[str, Any]], path: str | Path) -> None:
    with Path(path).open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
