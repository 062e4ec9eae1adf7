"""The paper's three-regime reading of a PoA-hat sweep: plateau, knee, explosive growth.

Input: sweep rows of one scenario over several static knob settings ("policies") and a
concurrency grid. Per grid point, PoA-hat is averaged over seeds for each setting; the level is
the median across settings and the spread their standard deviation.

- Plateau: the grid points up to `plateau_max_c` (64, the last point the paper puts below its
  knee in (96, 128]) from `artifact_max_c` up; its level is the median of their levels.
- Knee: the first grid point whose level exceeds `knee_factor` x the plateau level (our rule:
  the paper's knee is "not resolvable at the grid spacing", so any rule is a reconstruction).
- The plateau's CV and spread are taken over every grid point between the artifact regime and
  the knee. Growth: the deepest grid point's level over the plateau level; the spread ratio
  compares the largest post-knee spread with the largest pre-knee spread.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from eval.sweep_results import SweepRow


@dataclass(frozen=True, slots=True)
class GridPoint:
    concurrency: int
    level: float  # median over settings of the seed-mean PoA-hat
    spread: float  # standard deviation across settings
    cv: float  # spread / mean across settings
    num_settings: int


@dataclass(frozen=True, slots=True)
class RegimeReport:
    points: tuple[GridPoint, ...]
    plateau_level: float
    plateau_max_cv: float
    knee_c: int | None
    last_pre_knee_c: int | None
    growth: float
    spread_ratio: float


def grid_points(rows: Sequence[SweepRow]) -> list[GridPoint]:
    by_point: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.poa_hat is not None and math.isfinite(row.poa_hat):
            by_point[row.concurrency][row.policy].append(row.poa_hat)
    points = []
    for concurrency in sorted(by_point):
        means = [statistics.fmean(v) for v in by_point[concurrency].values()]
        spread = statistics.pstdev(means) if len(means) > 1 else 0.0
        mean = statistics.fmean(means)
        points.append(GridPoint(concurrency, statistics.median(means), spread, spread / mean, len(means)))
    return points


def analyse(
    rows: Sequence[SweepRow],
    *,
    artifact_max_c: int = 16,
    plateau_max_c: int = 64,
    knee_factor: float = 1.25,
) -> RegimeReport:
    points = grid_points(rows)
    plateau = [p for p in points if artifact_max_c < p.concurrency <= plateau_max_c]
    if not plateau:
        raise ValueError(f"no grid point in ({artifact_max_c}, {plateau_max_c}] to form the plateau")
    level = statistics.median(p.level for p in plateau)
    above = [p for p in points if p.concurrency > plateau_max_c]
    knee = next((p for p in above if p.level > knee_factor * level), None)
    before = [p for p in points if knee is not None and p.concurrency < knee.concurrency]
    post = [p for p in points if knee is not None and p.concurrency >= knee.concurrency]
    pre_knee = [p for p in before if p.concurrency > artifact_max_c] or plateau
    plateau_spread = max(p.spread for p in pre_knee)
    post_spread = max((p.spread for p in post), default=math.nan)
    return RegimeReport(
        points=tuple(points),
        plateau_level=level,
        plateau_max_cv=max(p.cv for p in pre_knee),
        knee_c=knee.concurrency if knee else None,
        last_pre_knee_c=before[-1].concurrency if before else None,
        growth=points[-1].level / level,
        spread_ratio=post_spread / plateau_spread if plateau_spread > 0 else math.inf,
    )
