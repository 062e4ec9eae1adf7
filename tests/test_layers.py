"""The house's floors: every import points down the layer map, and no modules import each other.

    eval         the command line, sweeps, reports, benchmarks, cross-checks      (the top floor)
    training     PPO (SB3, RLlib), validation, export, Ray, Tune
    agents       policies, the knee controller, the ONNX loader, episodes, the sidecar
    envs         the environment, observation, reward, PoA-hat, scenario files, the live backend
    envs.sim     the simulator core: pure, imports nothing of ours outside itself
    envs.errors  the one error type, which every floor may raise

Every import counts, module-level or inside a function (a late import is still an arrow). The
oracle for the checker itself is a hand-built graph with one upward arrow and one cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "agents", "training", "eval")
# Bottom to top; a module belongs to the first (most specific) floor whose prefix it carries.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("envs.errors",),
    ("envs.sim",),
    ("envs",),
    ("agents",),
    ("training",),
    ("eval",),
)


def module_names(root: Path = ROOT) -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """Our modules `path` imports (an imported name that is a module counts as that module)."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {module for module in found if module.split(".")[0] in PACKAGES}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    names = module_names(root)
    return {name: imports_of(path, name, names) - {name} for name, path in names.items()}


def floor_of(module: str) -> int:
    best = -1, 0
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = level, len(prefix)
    if best[0] < 0:
        raise ValueError(f"{module}: on no floor of the layer map")
    return best[0]


def upward_imports(graph: Mapping[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} (floor {floor_of(source)}) imports {target} (floor {floor_of(target)})"
        for source, targets in graph.items()
        for target in targets
        if floor_of(target) > floor_of(source)
    )


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_points_up_the_layer_map():
    assert upward_imports(import_graph()) == []


def test_no_modules_import_each_other():
    assert cycles(import_graph()) == []


def test_the_simulator_core_imports_only_itself_and_the_error_type():
    graph = import_graph()
    outside = {
        (source, target)
        for source, targets in graph.items()
        if floor_of(source) == 1
        for target in targets
        if floor_of(target) != 1 and target != "envs.errors"
    }
    assert outside == set()


def test_every_module_is_on_a_floor():
    for name in module_names():
        floor_of(name)


def test_the_checker_sees_an_upward_arrow_a_late_import_and_a_cycle(tmp_path):
    (tmp_path / "envs" / "sim").mkdir(parents=True)
    (tmp_path / "eval").mkdir()
    for package in ("envs", "envs/sim", "eval", "agents", "training"):
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "envs" / "sim" / "core.py").write_text("def f():\n    from envs import env\n")
    (tmp_path / "envs" / "env.py").write_text("from eval.report import write\nfrom envs.sim import core\n")
    (tmp_path / "eval" / "report.py").write_text("from . import cli\n")
    (tmp_path / "eval" / "cli.py").write_text("from eval.report import write\n")
    graph = import_graph(tmp_path)
    assert graph["envs.sim.core"] == {"envs.env"}  # the late import counts
    assert upward_imports(graph) == [
        "envs.env (floor 2) imports eval.report (floor 5)",
        "envs.sim.core (floor 1) imports envs.env (floor 2)",
    ]
    assert cycles(graph) == [["envs.env", "envs.sim.core"], ["eval.cli", "eval.report"]]
