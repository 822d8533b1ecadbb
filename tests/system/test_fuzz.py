"""Property-based fuzzing of the running daemon's HTTP API from contrib/openapi.yaml (schemathesis).

The daemon runs as ``cctv-optimizer run`` in a subprocess against a testbed, in observe mode, so rounds are
cheap and change nothing. Every operation gets valid (positive) and schema-violating (negative) inputs;
writes are fuzzed with the bearer token and without it. Each response must not be a 5xx, must use a
documented status code and content type, and must match the documented JSON schema.

``FUZZ_EXAMPLES`` sets the examples per operation and mode (default 120, a quarter of it for the runs without
a token; ``make chaos`` can raise it). Generation is derandomized, so a run is reproducible. The summary is printed and written to
``tests/artifacts/fuzz-summary.txt``.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testbed.harness import TestbedProcess
from tests.harness import daemon_env, daemon_process

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extras")
hypothesis = pytest.importorskip("hypothesis")
requests = pytest.importorskip("requests")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "contrib" / "openapi.yaml"
ARTIFACTS = REPO / "tests" / "artifacts"
TOKEN = "fuzz-token-" + "7" * 40
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
API_URL = re.compile(r"^http://127\.0\.0\.1:(\d+)$")


@dataclass(slots=True)
class Tally:
    """What one (operation, mode, auth) run sent and what failed."""

    cases: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    failure: str | None = None


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """The base URL of a running daemon process (observe mode, known token), and its raw log lines."""
    root = tmp_path_factory.mktemp("fuzz")
    token_file = root / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with TestbedProcess(root / "testbed") as tb:
        env = daemon_env(
            tb,
            root / "state",
            ENABLE_PERFORMANCE_OPTIMIZATION="false",
            CCTV_OPTIMIZER_API__TOKEN_FILE=str(token_file),
        )
        with daemon_process(env) as proc:
            yield _base_url(proc), proc.raw
            assert proc.stop() == 0


def _base_url(proc: Any) -> str:
    """The API URL the daemon logged at start-up."""
    event = proc.wait_event("daemon_started", timeout=30)
    match = API_URL.match(event["api"])
    assert match is not None, event
    return str(event["api"])


def run_operation(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str], examples: int) -> Tally:
    """Fuzz one operation in one generation mode; return the tally (the first failure, if any, included)."""
    tally = Tally()
    session = requests.Session()

    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        # The spec's examples (a real strategy name) mix in, so the 200 paths of {name} routes are reached too.
        strategy = st.one_of(strategy, *operation.get_strategies_from_examples())

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    def fuzz(case: Any) -> None:
        tally.cases += 1
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        tally.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    started = time.perf_counter()
    try:
        fuzz()
    except (Exception, BaseExceptionGroup) as exc:
        tally.failure = f"{exc.__class__.__name__}: {str(exc)[:2000]}"
    finally:
        session.close()
        tally.seconds = time.perf_counter() - started
    return tally


def has_inputs(operation: Any) -> bool:
    """Whether schemathesis has anything to negate: parameters or a body."""
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


def test_fuzz_every_operation(api: tuple[str, list[str]]) -> None:
    """No generated request makes the API answer 5xx, an undocumented status, or a body off its schema."""
    base_url, raw_log = api
    schema = schemathesis.openapi.from_path(str(SPEC))
    rows: list[tuple[str, str, str, Tally]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        writes = operation.method.upper() == "POST"
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs(operation) else [])
        auths = {"token": {"Authorization": f"Bearer {TOKEN}"}, "no token": {}} if writes else {"open": {}}
        for mode in modes:
            for auth_name, headers in auths.items():
                # without a token only the refusal is checked: the body is never read, so fewer cases do
                examples = max(10, EXAMPLES // 4) if auth_name == "no token" else EXAMPLES
                tally = run_operation(operation, mode, base_url, headers, examples)
                rows.append((label, str(mode), auth_name, tally))
    lines = [f"{'operation':32} {'mode':9} {'auth':9} {'cases':>6} {'seconds':>7}  statuses  result"]
    for label, shown_mode, auth_name, tally in rows:
        statuses = ",".join(f"{code}x{n}" for code, n in sorted(tally.statuses.items()))
        lines.append(
            f"{label:32} {shown_mode:9} {auth_name:9} {tally.cases:>6} {tally.seconds:7.1f}  {statuses}  {'FAIL' if tally.failure else 'ok'}"
        )
    total = sum(t.cases for *_, t in rows)
    failed = [(label, mode, auth_name, t.failure) for label, mode, auth_name, t in rows if t.failure]
    lines.append(
        f"total cases: {total}; failed runs: {len(failed)}; examples per run: {EXAMPLES} ({max(10, EXAMPLES // 4)} without a token)"
    )
    summary = "\n".join(lines)
    print(summary)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fuzz-summary.txt").write_text(summary + "\n")
    assert failed == [], "\n".join(f"{a} {b} {c}: {d}" for a, b, c, d in failed) + "\n" + "".join(raw_log[-20:])
    # Every write without a token was refused, and each operation was exercised.
    for label, _, auth_name, tally in rows:
        assert tally.cases > 0, label
        if auth_name == "no token":
            assert set(tally.statuses) == {401}, (label, tally.statuses)
    assert total >= 1000
