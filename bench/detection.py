"""Benchmark 5: detection latency, from the moment the testbed enters a condition to the action's history row.

One testbed and one daemon subprocess (``python -m optimizer.cli run``) at short but realistic intervals: a
sample every second (pinned: the adaptive interval may not stretch), a decision round every 2 s, detection
N of M as configured. For each strategy the testbed is put into its condition through its scenario switch;
the latency is the history row's timestamp minus the moment the scenario call returned (the condition is
complete then). The goal per strategy is ``N x sample interval + one round interval``.

    python -m bench.detection [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench._effect_util import (
    DaemonProcess,
    machine_note,
    median,
    pause,
    poll,
    standalone_main,
    testbed_and_daemon,
)
from bench.common import scratch_dir
from testbed.harness import TestbedProcess

NAME = "detection"
TITLE = "Detection latency per strategy (condition -> action row)"

MIB = 1024 * 1024
SAMPLE_MS = 1000
ROUND_MS = 2000
SAMPLES_REQUIRED = 3
WINDOW_SAMPLES = 5
WAL_LIMIT = 4 * MIB
# above the live streams' own files (4 cameras x 10 segments x 64 KiB), below live plus the stale ones
HLS_BUDGET = 4 * MIB
STALE_FILES = 64
CPU_THRESHOLD = 0.9
CALM_TIMEOUT_S = 30.0
# Far past the bound: a strategy that has not acted by then is reported as missed, not waited for.
ACTION_TIMEOUT_S = 25.0

SETTINGS = {
    "OPTIMIZATION_INTERVAL": str(ROUND_MS),
    "CCTV_OPTIMIZER_SAMPLE_INTERVAL": str(SAMPLE_MS),
    "CCTV_OPTIMIZER_SAMPLER__MIN_INTERVAL_MS": str(SAMPLE_MS),
    "CCTV_OPTIMIZER_SAMPLER__MAX_INTERVAL_MS": str(SAMPLE_MS),
    "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": str(SAMPLES_REQUIRED),
    "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": str(WINDOW_SAMPLES),
    # repetitions come seconds apart: cooldowns and budgets would hide the second and third
    "CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS": "0",
    "CCTV_OPTIMIZER_ENGINE__BUDGET_ACTIONS": "1000",
    "CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE": "90",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": str(WAL_LIMIT),
    "CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_BUDGET_BYTES": str(HLS_BUDGET),
    "CPU_THRESHOLD": str(CPU_THRESHOLD),
    # the stand-in's sweep is off while its sessions are stuck: shown within the same N samples that arm
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__SWEEP_INTERVAL_SECONDS": str(SAMPLE_MS / 1000),
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__STUCK_SWEEP_PERIODS": str(max(1, SAMPLES_REQUIRED - 1)),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One strategy's condition: how to provoke it, which action answers it, how to calm down afterwards."""

    strategy: str
    condition: str
    actions: frozenset[str]
    provoke: Callable[[TestbedProcess], Any]
    settle: Callable[[TestbedProcess], Any]


def _nothing(_tb: TestbedProcess) -> None:
    """No clean-up needed: the daemon's action removed the condition."""


CASES = (
    Case(
        strategy="database",
        condition="wal_growth (4.5 MiB, limit 4 MiB)",
        actions=frozenset({"wal_checkpoint"}),
        provoke=lambda tb: tb.scenario("wal_growth", mb=4.5),
        settle=_nothing,
    ),
    Case(
        strategy="memory",
        condition=f"stale_segments ({STALE_FILES} x 64 KiB, HLS budget 4 MiB)",
        actions=frozenset({"hls_prune"}),
        provoke=lambda tb: tb.scenario("stale_segments", count=STALE_FILES, age_seconds=600),
        settle=_nothing,
    ),
    Case(
        strategy="cache",
        condition="cache_junk (300 junk entries: hit rate collapses)",
        actions=frozenset({"cache_invalidate", "cache_clear"}),
        provoke=lambda tb: tb.scenario("cache_junk", entries=300),
        settle=_nothing,
    ),
    Case(
        strategy="connection",
        condition="stuck_sessions (20, heartbeat 600 s old, sweep off)",
        actions=frozenset({"end_stuck_sessions"}),
        provoke=lambda tb: tb.scenario("stuck_sessions", count=20, age_seconds=600),
        settle=_nothing,
    ),
    Case(
        strategy="cpu",
        condition="hot_recorder (2 busy fake recorders on the host)",
        actions=frozenset({"renice"}),
        provoke=lambda tb: tb.scenario("hot_recorder", count=2),
        settle=lambda tb: tb.scenario("recorders_stop"),
    ),
)


def bound_seconds() -> float:
    """The goal: N samples at the sample interval, then at most one round interval."""
    return SAMPLES_REQUIRED * SAMPLE_MS / 1000 + ROUND_MS / 1000


def _calm(daemon: DaemonProcess, strategy: str) -> bool:
    view = daemon.strategy(strategy)
    return bool(view) and not view.get("armed")


def _action_row(daemon: DaemonProcess, case: Case, after: int) -> dict[str, Any] | None:
    for row in daemon.decisions(after=after, strategy=case.strategy):
        if row.get("action") in case.actions or any(c.get("action") in case.actions for c in row.get("changes", [])):
            return row
    return None


def measure(tb: TestbedProcess, daemon: DaemonProcess, case: Case) -> dict[str, Any]:
    """One repetition: wait until the strategy is disarmed, provoke, wait for its action row."""
    waited = time.monotonic()
    # calm: this strategy disarmed, and cpu too (a hot host stretches the sample interval for every strategy)
    calm = poll(lambda: _calm(daemon, case.strategy) and _calm(daemon, "cpu"), timeout=CALM_TIMEOUT_S, interval=0.2)
    waited = time.monotonic() - waited
    view = daemon.strategy(case.strategy)
    before = {t["signal"]: t["value"] for t in view.get("triggers", [])}
    mark = daemon.last_id()
    started = time.time()
    case.provoke(tb)
    entered = time.time()
    row = poll(lambda: _action_row(daemon, case, mark), timeout=ACTION_TIMEOUT_S, interval=0.05)
    seen = time.time()
    result: dict[str, Any] = {
        "calm_before": bool(calm),
        "signals_before": before,
        "scenario_seconds": round(entered - started, 3),
        "calm_wait_s": round(waited, 2),
    }
    if row is None:
        lines = [line for line in daemon.log_tail(400).splitlines() if f'"{case.strategy}"' in line]
        return {**result, "latency_s": None, "outcome": "no action within the timeout", "log": lines[-6:]}
    latency = row["timestamp"] / 1000 - entered
    return {
        **result,
        # the row is stamped when the round starts; never report less than zero for a round already running
        "latency_s": round(max(0.0, latency), 3),
        "seen_by_poll_s": round(seen - entered, 3),
        "outcome": row.get("outcome"),
        "error": row.get("error"),
        "action": row.get("action"),
        "row_id": row.get("id"),
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure every strategy (3 repetitions, 1 with --quick) and return rows for the summary."""
    repetitions = 1 if quick else 3
    bound = bound_seconds()
    per_strategy: dict[str, Any] = {}
    with scratch_dir(NAME) as work:
        env = {
            **SETTINGS,
            "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(work / "testbed" / "recordings"),
        }
        with testbed_and_daemon(work, env) as (tb, daemon):
            assert daemon is not None
            # one full window of samples first, so detection starts from a filled, calm window
            pause(WINDOW_SAMPLES * SAMPLE_MS / 1000)
            # round-robin over the strategies: each one has disarmed by the time its next repetition comes
            for case in CASES:
                per_strategy[case.strategy] = {"condition": case.condition, "repetitions": []}
            for _ in range(repetitions):
                for case in CASES:
                    per_strategy[case.strategy]["repetitions"].append(measure(tb, daemon, case))
                    case.settle(tb)
            log_tail = daemon.log_tail(5)
    rows = []
    for case in CASES:
        reps = per_strategy[case.strategy]["repetitions"]
        latencies = [r["latency_s"] for r in reps if r["latency_s"] is not None and r["outcome"] == "applied"]
        missed = len(reps) - len(latencies)
        value = median(latencies)
        per_strategy[case.strategy]["median_latency_s"] = value
        met = value is not None and missed == 0 and max(latencies) <= bound
        shown = "no action" if value is None else f"{value:.2f} s"
        if value is not None and len(reps) > 1:
            shown += f" (max {max(latencies):.2f} s, n={len(latencies)})"
        if missed:
            shown += f", {missed} of {len(reps)} missed"
        hot_before = sum(1 for r in reps if not r["calm_before"])
        if hot_before:
            # the strategy was armed before the condition began (a shared, already busy host): not a detection time
            shown += f"; {hot_before} of {len(reps)} started already armed"
        rows.append(
            {
                "figure": f"detection latency, {case.strategy}: {case.condition}",
                "value": shown,
                "reference": f"bound {bound:.1f} s",
                "ratio": f"{value / bound:.2f}" if value is not None else "-",
                "goal": f"<= {SAMPLES_REQUIRED} x {SAMPLE_MS / 1000:g} s + {ROUND_MS / 1000:g} s",
                "met": met,
            }
        )
    return {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "settings": {
            **SETTINGS,
            "note": "sample interval pinned (min = max); cooldown 0 and a large budget so repetitions are not gated",
        },
        "bound_seconds": bound,
        "strategies": per_strategy,
        "machine": machine_note(),
        "daemon_log_tail": log_tail,
        "rows": rows,
    }


def main() -> int:
    """Run and print the JSON (the runner writes it to bench/results)."""
    return standalone_main("python -m bench.detection", run)


if __name__ == "__main__":
    raise SystemExit(main())
