"""The engine's seams: outside the engine, code reads a strategy through its view and changes it by command.

The runtimes (and their strategies, pacing, detector) are the engine's own; a module that reached into them
would bypass the pacing rules, the records and the factor taken on the event loop. Checked on the source, so
a new reach-in fails here, and the checker itself is shown to catch one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# the engine and the modules it hands a runtime to
OWNERS = {"engine.py", "recorder.py", "runtime.py", "view.py"}
PACKAGES = ("config", "metrics", "strategies", "optimizer")


def reach_ins(source: str) -> list[int]:
    """Lines that use an attribute named ``runtimes`` (engine.runtimes, self._engine.runtimes, ...)."""
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr == "runtimes"
    )


def test_the_checker_finds_a_reach_in() -> None:
    """A module that reads or writes engine.runtimes is found, on the right lines; a view is not."""
    bad = "def f(engine):\n    engine.view('cpu')\n    rt = engine.runtimes['cpu']\n    engine.runtimes.clear()\n"
    assert reach_ins(bad) == [3, 4]
    assert reach_ins("def f(engine):\n    return engine.view('cpu').enabled\n") == []


def test_no_module_outside_the_engine_reaches_into_its_runtimes() -> None:
    """The API, the Alertmanager receiver, the daemon and the CLI use views and commands only."""
    found = {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not (package == "optimizer" and path.name in OWNERS)
        if (lines := reach_ins(path.read_text(encoding="utf-8")))
    }
    assert found == {}
