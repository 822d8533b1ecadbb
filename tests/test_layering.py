"""Dependencies flow one way: config <- metrics <- strategies <- optimizer (DESIGN.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"config", "metrics", "strategies", "optimizer", "testbed"}
ALLOWED: dict[str, set[str]] = {
    "config": {"yaml"},
    "metrics": {"config", "psutil", "prometheus_client", "aiohttp"},
    "strategies": {"config", "metrics", "aiohttp", "structlog"},
    "optimizer": {
        "config",
        "metrics",
        "strategies",
        "aiohttp",
        "apscheduler",
        "prometheus_client",
        "structlog",
        "psutil",
        "yaml",
    },
    "testbed": {"aiohttp"},
}
SERVER_ONLY = {"aiohttp.web", "apscheduler"}


def imports_of(path: Path) -> set[str]:
    """Every module name a file imports (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def third_party_or_project(name: str) -> str | None:
    """The top-level package of an import when it is not the standard library."""
    import sys

    top = name.split(".", maxsplit=1)[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return None
    return top


def violations() -> list[str]:
    """Each import that goes the wrong way."""
    found: list[str] = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imports_of(path):
                top = third_party_or_project(name)
                if top is None or top == package:
                    continue
                if top not in allowed:
                    found.append(f"{path.relative_to(ROOT)} imports {name}")
                server_side = any(name == s or name.startswith(s + ".") for s in SERVER_ONLY)
                testbed_server = package == "testbed" and name.startswith("aiohttp.web")
                if package != "optimizer" and server_side and not testbed_server:
                    found.append(f"{path.relative_to(ROOT)} imports server-side {name}")
    return found


def test_imports_flow_one_way() -> None:
    """No package imports a layer above it or a library it is not allowed."""
    assert violations() == []


def test_the_checker_catches_a_wrong_way_import(tmp_path: Path) -> None:
    """The scanner sees an import of optimizer from a lower layer."""
    sample = tmp_path / "bad.py"
    sample.write_text("from optimizer.engine import Engine\nimport strategies.base\n")
    tops = {third_party_or_project(n) for n in imports_of(sample)}
    assert "optimizer" in tops and "strategies" in tops
    assert "optimizer" not in ALLOWED["metrics"]
