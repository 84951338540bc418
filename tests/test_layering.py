"""The import graph of src/qwen3_api keeps its layers: read from the source with `ast`, nothing is imported.

    server, cli, terminal -> runtime -> engine <- executors -> models
    runtime -> executors, models, demo_models (the `test:` models) -> models

Every import counts, also those inside functions and under TYPE_CHECKING: each is a dependency of the module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "qwen3_api"

# Modules of models/ that build or load weights; engine/ reads GGUF metadata and vocabularies, nothing more.
MODEL_WEIGHTS = tuple(f"{ROOT}.models.{m}" for m in ("qwen3", "weights", "quantization", "gguf_convert", "gguf_export"))
# What executors may use of the engine: the protocols it owns and the data types they exchange.
ENGINE_INTERFACES = tuple(f"{ROOT}.engine.{m}" for m in ("protocols", "core", "outputs", "sampling", "structured"))
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "engine": (
        f"{ROOT}.executors", f"{ROOT}.runtime", f"{ROOT}.demo_models", f"{ROOT}.server", f"{ROOT}.testing",
        *MODEL_WEIGHTS, "fastapi", "starlette", "uvicorn",
    ),
    "executors": (f"{ROOT}.runtime", f"{ROOT}.demo_models", f"{ROOT}.server", "fastapi", "starlette"),
    "models": (f"{ROOT}.engine", f"{ROOT}.executors", f"{ROOT}.runtime", f"{ROOT}.demo_models", f"{ROOT}.server"),
    "server": ("torch", f"{ROOT}.executors", *MODEL_WEIGHTS),
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Every module of the package -> the modules it imports (absolute names; `from a import b` counts as `a`)."""
    graph = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                imported.add(base)
        graph[name] = frozenset(imported)
    return graph


def layer_of(module: str) -> str | None:
    """The first name under qwen3_api: `engine` for qwen3_api.engine.scheduler, `config` for qwen3_api.config."""
    parts = module.split(".")
    return parts[1] if parts[0] == ROOT and len(parts) > 1 else None


def matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert f"{ROOT}.engine.llm_engine" in graph and f"{ROOT}.server.app" in graph
    assert f"{ROOT}.engine.scheduler" in graph[f"{ROOT}.engine.llm_engine"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_forbidden(layer: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if layer_of(module) == layer
        for target in targets
        for prefix in FORBIDDEN[layer]
        if matches(target, prefix)
    )
    assert not wrong, "\n".join(wrong)


def test_executors_use_only_the_engine_interfaces() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if layer_of(module) == "executors"
        for target in targets
        if layer_of(target) == "engine" and not any(matches(target, p) for p in ENGINE_INTERFACES)
    )
    assert not wrong, "\n".join(wrong)


def package_graph() -> dict[str, set[str]]:
    """Top-level packages and modules of qwen3_api -> those they import (itself left out)."""
    edges: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        source = layer_of(module)
        if source is None:
            continue
        edges.setdefault(source, set()).update(
            t for t in (layer_of(target) for target in targets) if t is not None and t != source
        )
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `edges` as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None


def test_no_cycle_between_packages() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, " -> ".join(cycle or [])
