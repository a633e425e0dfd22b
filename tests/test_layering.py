"""Packages import only downward: no cycle between edgetune's subpackages and modules, deferred
(function-level) imports included, since a deferred import hides a circle without removing it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "edgetune"


def _unit(module: str) -> str | None:
    """``edgetune.quantize.calibrate`` -> ``quantize``; ``edgetune.pipeline`` -> ``pipeline``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "edgetune" else None


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        source = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                target = _unit(name)
                if target and target != source and ((PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").is_file()):
                    edges[source].add(target)
    return edges


def test_there_is_no_import_cycle() -> None:
    edges = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for target in sorted(edges.get(unit, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[unit] = 2

    for unit in sorted(edges):
        if unit not in state:
            visit(unit, [unit])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_stage_imports_the_pipeline_and_export_does_not_import_quantize() -> None:
    edges = import_graph()
    assert "quantize" not in edges["export"], "quantization numerics live in edgetune.ir.quant, below both"
    for stage in ("capture", "ir", "prune", "quantize", "finetune", "export", "evaluate", "profile", "data", "targets"):
        assert "pipeline" not in edges.get(stage, set()), f"{stage} imports the pipeline"
        assert "recipe" not in edges.get(stage, set()) and "cli" not in edges.get(stage, set()), stage
