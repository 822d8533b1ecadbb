"""What ``status``, ``history`` and ``strategies`` print: readable figures, one row per signal, reasons shown.

The API answers are canned (the shapes GET /performance-metrics, /optimizations and /strategies give), so the
figures are known: the issue's examples (an HLS prune of 28118560 bytes, a 1.2 ms response time, the 64 MiB WAL
limit, counts) must read as a person reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from optimizer.cli import Client, cmd_history, cmd_status, cmd_strategies

MIB = 1024 * 1024


class CannedClient(Client):
    """A client whose answers are fixed per path."""

    def __init__(self, answers: Mapping[str, Any]) -> None:
        super().__init__("http://127.0.0.1:9")
        self.answers = answers

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """The canned answer for the path without its query."""
        return 200, self.answers[path.split("?", maxsplit=1)[0]]


def trigger(
    signal: str, enter: float, exit_: float, value: float | None, *, above: bool = True, role: str = "arm"
) -> dict[str, Any]:
    """A trigger as the API shows it."""
    return {
        "signal": signal,
        "enter": enter,
        "exit": exit_,
        "value": value,
        "above": above,
        "role": role,
        "label": signal,
        "unit": "count",
    }


def strategy(
    name: str, triggers: list[dict[str, Any]], *, armed: bool = False, armed_by: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A strategy view as the API shows it."""
    return {
        "name": name,
        "enabled": True,
        "mode": "enforce",
        "modeOverride": None,
        "armed": armed,
        "armedBy": list(armed_by),
        "cooldownSeconds": 300.0,
        "cooldownLeftSeconds": 0.0,
        "budgetLeft": 6,
        "breakerOpen": False,
        "breakerReason": None,
        "consecutiveFailures": 0,
        "score": 0.0,
        "lastOutcome": None,
        "lastVerdict": None,
        "triggers": triggers,
        "findings": [],
    }


METRICS = {
    "mode": "enforce",
    "performance": {"optimizationCount": 2, "successRate": 1.0, "lastOptimization": 1_800_000_000_000},
    "currentMetrics": {
        "memoryUsage": 0.4521,
        "cpuUsage": 0.97,
        "systemLoad": [2.0, 1.5, 1.25],
        "activeConnections": 2,
        "responseTime": 1.234,
    },
    "sources": {
        "probe": {"up": True, "error": None},
        "mediamtx": {"up": False, "error": "connection refused"},
    },
    "strategies": {
        "database": strategy(
            "database", [trigger("wal_bytes", 64 * MIB, 57.6 * MIB, 70_364_160.0)], armed=True, armed_by=("wal_bytes",)
        ),
        # holding lowered recorders: the restore line comes first, as the cpu strategy lists it
        "cpu": strategy(
            "cpu",
            [
                trigger("cpu_ratio", 0.81, 0.81, 0.5, above=False, role="restore"),
                trigger("cpu_ratio", 0.9, 0.81, 0.5),
                trigger("load_per_core", 1.5, 1.35, 0.4),
                trigger("psi_cpu_some", 40.0, 36.0, 2.5),
            ],
            armed=True,
            armed_by=("cpu_ratio",),
        ),
        "connection": strategy("connection", [trigger("tcp_established", 500.0, 450.0, 2.0)]),
    },
    "findings": [],
}


def test_status_shows_reasons_units_and_one_row_per_signal(capsys: pytest.CaptureFixture[str]) -> None:
    """A down source shows its reason; figures carry units; the cpu restore line is a note, not an ARMED row."""
    assert cmd_status(CannedClient({"/performance-metrics": METRICS}), as_json=False) == 0
    out = capsys.readouterr().out
    assert "mediamtx=DOWN (connection refused)" in out and "probe=up" in out
    assert "memory 45.2 %" in out and "cpu 97 %" in out and "connections 2 " in out and "response 1.2 ms" in out
    rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"^[a-z_]+ +\S", line) and "  " in line}
    wal = rows["wal_bytes"]
    assert "67.1 MiB" in wal and ">= 64 MiB" in wal and "57.6 MiB" in wal and "ARMED" in wal
    assert "67.1M" not in out and "2.000" not in out
    cpu_lines = [line for line in out.splitlines() if line.startswith("cpu_ratio")]
    assert len(cpu_lines) == 1, cpu_lines
    assert "cpu (restores at <= 81 %)" in cpu_lines[0] and "restoring" in cpu_lines[0]
    assert "ARMED" not in rows["load_per_core"] and "ARMED" not in rows["psi_cpu_some"]
    assert "2.5 %" in rows["psi_cpu_some"] and ">= 40 %" in rows["psi_cpu_some"]
    assert re.search(r"tcp_established +2 +>= 500 +450", rows["tcp_established"])


HISTORY = {
    "items": [
        {
            "id": 7,
            "timestamp": 1_800_000_000_000,
            "strategy": "memory",
            "mode": "enforce",
            "outcome": "applied",
            "reason": "HLS directory holds 26.8 MiB",
            "changes": [{"target": "hls", "before": "3 files", "after": "0 files"}],
            "verdict": "improved",
            "verdictDetail": {"signal": "hls_bytes", "before": 28118560.0, "after": 2494200.0},
            "error": None,
        },
        {
            "id": 8,
            "timestamp": 1_800_000_060_000,
            "strategy": "cache",
            "mode": "enforce",
            "outcome": "applied",
            "reason": "slow",
            "changes": [],
            "verdict": "neutral",
            "error": None,
            "verdictDetail": {"signal": "response_time_seconds", "before": 0.0012, "after": 0.0009},
        },
        {
            "id": 9,
            "timestamp": 1_800_000_120_000,
            "strategy": "connection",
            "mode": "enforce",
            "outcome": "applied",
            "reason": "stuck",
            "changes": [],
            "verdict": "improved",
            "error": None,
            "verdictDetail": {"signal": "sessions_stuck", "before": 2.0, "after": 0.0, "reverted": False},
        },
    ],
    "last": 9,
}


def test_history_figures_are_readable_and_the_clock_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """Verdict figures in IEC bytes, ms and whole counts; each line's time names its zone."""
    assert cmd_history(CannedClient({"/optimizations": HISTORY}), as_json=False, follow=False, after=0, limit=10) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(hls_bytes 26.8 MiB -> 2.4 MiB)" in lines[0]
    assert "(response_time_seconds 1.2 ms -> 0.9 ms)" in lines[1]
    assert "(sessions_stuck 2 -> 0)" in lines[2]
    for line in lines:
        assert re.match(r"^#\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z][A-Za-z0-9+:-]* ", line), line


def test_strategies_describe_names_the_restore_trigger(capsys: pytest.CaptureFixture[str]) -> None:
    """``strategies describe cpu`` lists the restore line as a restore trigger, in the signal's unit."""
    strategies = METRICS["strategies"]
    assert isinstance(strategies, dict)
    body = {"strategies": list(strategies.values()), "baselines": {"response_time_seconds": 0.0042}}
    assert cmd_strategies(CannedClient({"/strategies": body}), False, "describe", "cpu", None) == 0
    out = capsys.readouterr().out
    assert "restore trigger cpu_ratio: enter 81 % exit 81 %" in out
    assert "  trigger cpu_ratio: enter 90 % exit 81 %" in out
    assert cmd_strategies(CannedClient({"/strategies": body}), False, "list", None, None) == 0
    assert "baseline response_time_seconds = 4.2 ms" in capsys.readouterr().out


def test_strategies_describe_shows_each_action_familys_pacing(capsys: pytest.CaptureFixture[str]) -> None:
    """``strategies describe database`` gives one line per action family: cooldown left of its length, budget."""
    view = {
        **strategy("database", []),
        "pacing": {
            "retention": {"cooldownSeconds": 300.0, "cooldownLeftSeconds": 280.0, "budgetLeft": 5},
            "checkpoint": {"cooldownSeconds": 600.0, "cooldownLeftSeconds": 0.0, "budgetLeft": 6},
        },
    }
    assert (
        cmd_strategies(CannedClient({"/strategies": {"strategies": [view]}}), False, "describe", "database", None) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    pacing = [line.strip() for line in lines if line.strip().startswith("actions ")]
    assert pacing[0].startswith("actions checkpoint: cooldown over of ") and pacing[0].endswith("budget 6")
    assert pacing[1].startswith("actions retention: cooldown ") and " left of " in pacing[1]
