"""The testbed answers the daemon's calls as the real backend did: same status codes, JSON shapes and headers.

``recorded/backend-answers.json`` holds the real backend's answers, recorded by
``scripts/record-backend-answers.py`` (status, keys and value types, contract headers). This test makes the
same calls, in the same order, against the testbed and compares. A ``null`` on either side matches any type
(the value depends on the data, not on the contract); a list is compared by the shape of its first item.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from testbed.harness import TestbedFactory

ROOT = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).resolve().parent / "recorded" / "backend-answers.json"


def _recorder() -> ModuleType:
    """scripts/record-backend-answers.py as a module (its name has dashes)."""
    spec = importlib.util.spec_from_file_location(
        "record_backend_answers", ROOT / "scripts" / "record-backend-answers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def shape_differences(real: Any, ours: Any, where: str = "$") -> list[str]:
    """Where two recorded shapes disagree (empty when they agree)."""
    if real == "null" or ours == "null":
        return []
    if isinstance(real, dict) and isinstance(ours, dict):
        problems = [f"{where}.{key}: missing" for key in sorted(real.keys() - ours.keys())]
        problems += [f"{where}.{key}: not in the real answer" for key in sorted(ours.keys() - real.keys())]
        for key in sorted(real.keys() & ours.keys()):
            problems += shape_differences(real[key], ours[key], f"{where}.{key}")
        return problems
    if isinstance(real, list) and isinstance(ours, list):
        if real and ours:
            return shape_differences(real[0], ours[0], f"{where}[0]")
        return [] if bool(real) == bool(ours) else [f"{where}: one list is empty, the other is not"]
    return [] if real == ours else [f"{where}: {ours!r} where the real backend has {real!r}"]


def compare(section: str, recorded: dict[str, Any], answers: dict[str, Any]) -> list[str]:
    """Every disagreement between the recorded section and the testbed's answers."""
    problems: list[str] = []
    for name, real in recorded.items():
        ours = answers.get(name)
        if ours is None:
            problems.append(f"{section}/{name}: not called")
            continue
        if ours["status"] != real["status"]:
            problems.append(f"{section}/{name}: status {ours['status']}, real {real['status']}")
        if ours["headers"] != real["headers"]:
            problems.append(f"{section}/{name}: headers {ours['headers']}, real {real['headers']}")
        problems += [f"{section}/{name}: {p}" for p in shape_differences(real["shape"], ours["shape"])]
    return problems


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    """The recording."""
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


def test_comparison_notices_a_drift() -> None:
    """The comparison itself catches a changed status, a missing key, a type change and an extra header."""
    real = {"a": {"status": 200, "headers": {}, "shape": {"data": {"hits": "number", "hitRate": "string"}}}}
    ours = {"a": {"status": 401, "headers": {"retry-after": "present"}, "shape": {"data": {"hits": "string"}}}}
    problems = compare("s", real, ours)
    assert len(problems) == 4
    assert shape_differences({"x": "null", "y": ["number"]}, {"x": "string", "y": []}) == [
        "$.y: one list is empty, the other is not"
    ]


def test_testbed_answers_like_the_recorded_backend(make_testbed: TestbedFactory, recorded: dict[str, Any]) -> None:
    """Without an API key: public, auth, cache and error answers match the real backend's."""
    recorder = _recorder()
    tb = make_testbed("--login-delay-scale", "0")
    client = recorder.Client(base=tb.url)
    answers = recorder.run_section(client, "without_api_key", "admin", tb.admin_password)
    assert compare("without_api_key", recorded["without_api_key"], answers) == []


def test_testbed_api_key_answers_like_the_recorded_backend(
    make_testbed: TestbedFactory, recorded: dict[str, Any]
) -> None:
    """With an API key: what needs it, what does not, and the 403 for a missing or wrong key."""
    recorder = _recorder()
    key = secrets.token_hex(32)
    tb = make_testbed("--login-delay-scale", "0", "--api-key", key)
    client = recorder.Client(base=tb.url, api_key=key)
    answers = recorder.run_section(client, "with_api_key", "admin", tb.admin_password)
    assert compare("with_api_key", recorded["with_api_key"], answers) == []
