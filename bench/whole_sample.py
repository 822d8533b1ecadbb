"""Benchmark 2: one full ``Sampler.sample()`` with 10,000 connections open to the backend, and the loop's lag.

The testbed runs as the backend and a child process holds 10,000 idle connections to its listening port (the
backend's ends count; psutil lists both). The daemon runs in this process without its timed loops. Timed: one full sample (every source),
against ``psutil.net_connections(kind="tcp")`` alone at the same size. A ticker coroutine measures how late the
event loop wakes while samples are taken and while decision rounds apply every strategy (WAL checkpoint, HLS
prune, cache clear, stuck sessions, recorder renice). Goals: sample < 1/10 of psutil; loop lag never > 20 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench.common import (
    FD_MARGIN,
    LoopLag,
    daemon_env,
    fmt_ms,
    idle_connections,
    median,
    raise_fd_limit,
    ratio,
    row,
    running_testbed,
    scratch_dir,
)

NAME = "whole_sample"
TITLE = "2. Whole sample"
CONNECTIONS = 10_000
GOAL_RATIO = 1 / 10
GOAL_LAG_S = 0.020
# What each round has to act on: one scenario per strategy of the registry.
SCENARIOS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("wal_growth", {"mb": 16}),
    ("stale_segments", {"count": 2000, "age_seconds": 900}),
    ("cache_junk", {"entries": 5000}),
    ("stuck_sessions", {"count": 300, "age_seconds": 900}),
    ("hot_recorder", {"count": 1}),
)


def time_psutil(repeat: int) -> list[float]:
    """Time ``psutil.net_connections(kind="tcp")`` alone (the reference)."""
    psutil.net_connections(kind="tcp")
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        psutil.net_connections(kind="tcp")
        timings.append(time.perf_counter() - started)
    return timings


async def measure(tb: Any, work: Path, samples: int, rounds: int) -> dict[str, Any]:
    """Start the daemon in-process, time samples and rounds under the lag ticker."""
    from config.loader import load_settings
    from optimizer.app import Daemon
    from optimizer.logs import configure_logging

    configure_logging("warning")

    env = daemon_env(
        tb.env,
        work / "state",
        0,
        CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE="90",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_STALE_AGE_SECONDS="300",
    )
    daemon = Daemon(load_settings(env), environ=env, autostart_loops=False)
    await daemon.start()
    try:
        await daemon.sampler.sample()  # warm-up: caches, first connections, rate baselines
        timings: list[float] = []
        statuses: dict[str, list[float]] = {}
        tcp: dict[str, Any] = {}
        async with LoopLag() as sampling_lag:
            for _ in range(samples):
                started = time.perf_counter()
                snap = await daemon.sampler.sample()
                timings.append(time.perf_counter() - started)
                for name, status in snap.sources.items():
                    statuses.setdefault(name, []).append(status.duration_seconds)
                if snap.tcp is not None:
                    tcp = {"total": snap.tcp.total, "method": snap.tcp.method, "ports": list(snap.tcp.ports)}
                down = sorted(name for name, status in snap.sources.items() if not status.up)
        for name, params in SCENARIOS:
            await asyncio.to_thread(tb.scenario, name, **params)
        await daemon.sample_now()
        round_timings: list[float] = []
        decisions: Counter[str] = Counter()
        async with LoopLag() as round_lag:
            for _ in range(rounds):
                started = time.perf_counter()
                result = await daemon.engine.request_round(trigger="manual", manual=True)
                round_timings.append(time.perf_counter() - started)
                for record in await asyncio.to_thread(daemon.store.recent_decisions, len(result.decision_ids) or 1):
                    if record.run_id == result.run_id:
                        decisions[f"{record.strategy}:{record.action}:{record.outcome}"] += 1
                await daemon.sample_now()
        return {
            "sample_s": timings,
            "sample_median_s": median(timings),
            "source_median_s": {name: median(values) for name, values in sorted(statuses.items())},
            "sources_down": down,
            "tcp": tcp,
            "sampling_lag": sampling_lag.summary(),
            "round_s": round_timings,
            "round_median_s": median(round_timings),
            "round_decisions": dict(sorted(decisions.items())),
            "rounds_lag": round_lag.summary(),
        }
    finally:
        await daemon.stop()


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark and return its figures and summary rows."""
    samples = 5 if quick else 9
    repeat = 3 if quick else 7
    rounds = 2 if quick else 3
    raise_fd_limit(CONNECTIONS + FD_MARGIN)  # the testbed inherits it, so it can accept them all
    with scratch_dir(NAME) as work, running_testbed(work / "testbed", "--segment-bytes", "2048") as tb:
        port = urlsplit(tb.url).port
        assert port is not None
        with idle_connections(port, CONNECTIONS):
            reference = time_psutil(repeat)
            measured = asyncio.run(measure(tb, work, samples, rounds))
            sockets_on_host = len(psutil.net_connections(kind="tcp"))
    ref_median = median(reference)
    sample_ratio = ratio(measured["sample_median_s"], ref_median)
    sampling_max = measured["sampling_lag"]["max_s"]
    rounds_max = measured["rounds_lag"]["max_s"]
    decided = ", ".join(f"{key} x{n}" for key, n in measured["round_decisions"].items()) or "none"
    rows = [
        row(
            f"one full sample, {CONNECTIONS:,} connections to the backend",
            fmt_ms(measured["sample_median_s"]),
            reference=f"psutil.net_connections {fmt_ms(ref_median)}",
            ratio_text=f"1/{1 / sample_ratio:.0f}" if sample_ratio > 0 else "-",
            goal="< 1/10 of psutil",
            met=sample_ratio < GOAL_RATIO,
        ),
        row(
            "event-loop lag while sampling (max)",
            fmt_ms(sampling_max),
            reference=f"p99 {fmt_ms(measured['sampling_lag']['p99_s'])}",
            goal="never > 20 ms",
            met=sampling_max <= GOAL_LAG_S,
        ),
        row(
            "event-loop lag while rounds apply (max)",
            fmt_ms(rounds_max),
            reference=f"p99 {fmt_ms(measured['rounds_lag']['p99_s'])}; {decided}",
            goal="never > 20 ms",
            met=rounds_max <= GOAL_LAG_S,
        ),
    ]
    return {
        "goal": "sample median < psutil.net_connections median / 10; loop lag max <= 20 ms while sampling and acting",
        "goal_met": all(r["met"] for r in rows),
        "connections": CONNECTIONS,
        "tcp_sockets_on_host": sockets_on_host,
        "psutil_net_connections_s": reference,
        "psutil_net_connections_median_s": ref_median,
        "ratio_sample_vs_psutil": sample_ratio,
        **measured,
        "rows": rows,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
