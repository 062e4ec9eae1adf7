"""The sweep's result files: one validated row per run, written as CSV and JSON, and read back.

The schema is documented in `eval/METRICS.md` ("Sweep results"). Files hold no wall-clock time,
so the same sweep command writes byte-identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from envs.errors import UserError

SCHEMA_VERSION = 1
CSV_NAME = "results.csv"
JSON_NAME = "results.json"
_STRICT = ConfigDict(extra="forbid", frozen=True)

NonNegative = Annotated[float, Field(ge=0)]
# None where a run had nothing to measure (NaN in the summary: no requests, no PoA-hat window).
Measured = NonNegative | None
Count = Annotated[int, Field(ge=0)]


@dataclass(config=_STRICT)
class SweepRow:
    """One run: scenario x policy x concurrency x seed, measured over its steady-state window."""

    scenario: Annotated[str, Field(min_length=1)]
    policy: Annotated[str, Field(min_length=1)]
    seed: Count
    concurrency: Annotated[int, Field(gt=0)]
    poa_hat: Measured
    poa_window_median: Measured
    poa_window_p90: Measured
    poa_num_windows: Count
    poa_num_decisions: Count
    poa_stage: Annotated[str, Field(min_length=1)]
    ttft_mean_s: Measured
    ttft_p50_s: Measured
    ttft_p99_s: Measured
    itl_mean_s: Measured
    itl_p50_s: Measured
    itl_p99_s: Measured
    e2e_mean_s: Measured
    e2e_p99_s: Measured
    throughput_rps: NonNegative
    output_tok_s: NonNegative
    prefix_reuse_ratio: Annotated[float, Field(ge=0, le=1)] | None
    num_requests: Count
    num_completed: Count
    num_preemptions: Count
    warmup_s: NonNegative
    duration_s: Annotated[float, Field(gt=0)]
    sim_time_s: NonNegative


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SweepRow))


@dataclass(config=_STRICT)
class SweepFile:
    """`results.json`: what was swept and how, then the rows in run order."""

    schema_version: int
    generator: str
    command: str
    scenario: str
    scenario_source: str
    grid: dict[str, Any]
    window: dict[str, float]
    poa_params: dict[str, Any]
    rows: tuple[SweepRow, ...]


_FILE = TypeAdapter(SweepFile)
_ROW = TypeAdapter(SweepRow)


class SweepResultsError(UserError, ValueError):
    """A results file that does not match the schema; the message names the file and the row."""


def nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def write_results(out_dir: Path, meta: dict[str, Any], rows: Sequence[SweepRow]) -> tuple[Path, Path]:
    """Write `results.csv` and `results.json` into `out_dir` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, **meta, "rows": [dataclasses.asdict(row) for row in rows]}
    _FILE.validate_python(doc)  # never write a file our own loader would reject
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    csv_path = out_dir / CSV_NAME
    csv_path.write_text(_csv_text(rows))
    return csv_path, json_path


def _csv_text(rows: Sequence[SweepRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(row).items()})
    return buffer.getvalue()


def load_results(path: str | Path) -> list[SweepRow]:
    """Rows of a sweep's `results.json` or `results.csv` (or of a sweep folder), validated.

    Raises:
        SweepResultsError: unreadable file, wrong columns, or a row that breaks the schema.
    """
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        text = path.read_text()
    except OSError as error:
        raise SweepResultsError(f"{path}: cannot read ({error.strerror})") from None
    if path.suffix == ".csv":
        return _rows_from_csv(text, path)
    try:
        return list(_FILE.validate_json(text).rows)
    except ValidationError as error:
        raise SweepResultsError(f"{path}: not a sweep results file\n{error}") from None


def _rows_from_csv(text: str, path: Path) -> list[SweepRow]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != FIELDS:
        raise SweepResultsError(
            f"{path}: columns {reader.fieldnames} are not the sweep schema {list(FIELDS)}"
        )
    rows = []
    for number, raw in enumerate(reader, start=2):
        try:
            rows.append(_ROW.validate_python({k: (None if v == "" else v) for k, v in raw.items()}))
        except ValidationError as error:
            raise SweepResultsError(f"{path}: line {number}: {error}") from None
    return rows
