"""Dependencies flow one way: config <- metrics <- strategies <- optimizer (docs/ARCHITECTURE.md)."""

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
# optional extras (pyproject ``fast``): allowed only behind ``try: ... except ImportError`` so the daemon runs
# without them
OPTIONAL: dict[str, set[str]] = {"optimizer": {"uvloop"}}


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


def unguarded_imports(path: Path) -> set[str]:
    """The module names a file imports outside a ``try`` block that catches ImportError."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Try, ast.With)) and _guards_import_error(node):
            guarded.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _guards_import_error(node: ast.AST) -> bool:
    """A ``try`` that catches ImportError, or a ``with suppress(ImportError)``."""
    if isinstance(node, ast.Try):
        return any(_catches_import_error(h) for h in node.handlers)
    if isinstance(node, ast.With):
        return any(_suppresses_import_error(item) for item in node.items)
    return False


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    kinds = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(isinstance(k, ast.Name) and k.id in IMPORT_ERRORS for k in kinds)


def _suppresses_import_error(item: ast.withitem) -> bool:
    """``with contextlib.suppress(ImportError):`` (or a bare ``suppress``)."""
    call = item.context_expr
    if not isinstance(call, ast.Call):
        return False
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name == "suppress" and any(isinstance(a, ast.Name) and a.id in IMPORT_ERRORS for a in call.args)


def third_party_or_project(name: str) -> str | None:
    """The top-level package of an import when it is not the standard library."""
    import sys

    top = name.split(".", maxsplit=1)[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return None
    return top


def violations(root: Path = ROOT) -> list[str]:
    """Each import that goes the wrong way in the tree at ``root``."""
    found: list[str] = []
    for package, allowed in ALLOWED.items():
        optional = OPTIONAL.get(package, set())
        for path in sorted((root / package).rglob("*.py")):
            unguarded = {third_party_or_project(n) for n in unguarded_imports(path)}
            for name in imports_of(path):
                top = third_party_or_project(name)
                if top is None or top == package:
                    continue
                if top in optional:
                    if top in unguarded:
                        found.append(f"{path.relative_to(root)} imports optional {name} without an ImportError guard")
                elif top not in allowed:
                    found.append(f"{path.relative_to(root)} imports {name}")
                server_side = any(name == s or name.startswith(s + ".") for s in SERVER_ONLY)
                testbed_server = package == "testbed" and name.startswith("aiohttp.web")
                if package != "optimizer" and server_side and not testbed_server:
                    found.append(f"{path.relative_to(root)} imports server-side {name}")
    return found


def test_imports_flow_one_way() -> None:
    """No package imports a layer above it or a library it is not allowed."""
    assert violations() == []


def test_the_checker_finds_every_wrong_way_import_in_a_bad_tree(tmp_path: Path) -> None:
    """Run on a tree with one import of each wrong kind (and one of each right kind), the scanner reports exactly
    the wrong ones: a broken scanner cannot stay green."""
    files = {
        "config/ok.py": "import yaml\nimport json\n",
        "config/up.py": "from metrics.snapshot import Snapshot\n",
        "metrics/ok.py": "from config.settings import Settings\nimport psutil\n",
        "metrics/up.py": "import strategies.base\n",
        "strategies/ok.py": "from metrics.window import Windows\nimport structlog\n",
        "strategies/up.py": "from optimizer.engine import Engine\n",
        "strategies/server.py": "from aiohttp import web\nimport aiohttp.web\n",
        "optimizer/ok.py": "try:\n    import uvloop\nexcept ImportError:\n    uvloop = None\n",
        "optimizer/bare.py": "import uvloop\n",
        "optimizer/lib.py": "import requests\n",
        "testbed/up.py": "from optimizer.app import Daemon\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(violations(tmp_path)) == sorted(
        [
            "config/up.py imports metrics.snapshot",
            "config/up.py imports metrics.snapshot.Snapshot",
            "metrics/up.py imports strategies.base",
            "strategies/up.py imports optimizer.engine",
            "strategies/up.py imports optimizer.engine.Engine",
            "strategies/server.py imports server-side aiohttp.web",
            "optimizer/bare.py imports optional uvloop without an ImportError guard",
            "optimizer/lib.py imports requests",
            "testbed/up.py imports optimizer.app",
            "testbed/up.py imports optimizer.app.Daemon",
        ]
    )


def test_an_optional_extra_must_be_guarded(tmp_path: Path) -> None:
    """uvloop (extra ``fast``) is accepted in optimizer only behind ``except ImportError``; elsewhere it is refused."""
    guarded = tmp_path / "guarded.py"
    guarded.write_text("try:\n    import uvloop\nexcept ImportError:\n    uvloop = None\n")
    bare = tmp_path / "bare.py"
    bare.write_text("import uvloop\n")
    other = tmp_path / "other.py"
    other.write_text("try:\n    import uvloop\nexcept ValueError:\n    pass\n")
    suppressed = tmp_path / "suppressed.py"
    suppressed.write_text("import contextlib\nwith contextlib.suppress(ImportError):\n    import uvloop\n")
    assert unguarded_imports(guarded) == set()
    assert unguarded_imports(suppressed) == {"contextlib"}
    assert unguarded_imports(bare) == {"uvloop"}
    assert unguarded_imports(other) == {"uvloop"}
    assert "uvloop" in OPTIONAL["optimizer"] and "uvloop" not in ALLOWED["optimizer"]
    assert all("uvloop" not in OPTIONAL.get(p, set()) for p in ("config", "metrics", "strategies"))
