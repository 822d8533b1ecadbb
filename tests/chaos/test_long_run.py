"""The daemon's own memory over a long run: windows, history, journal and in-memory lists stay bounded.

Slow (``make chaos``): over a thousand samples and hundreds of applied rounds against the testbed, with a scripted
strategy that acts every round so the history and journal fill as fast as they can.
"""

from __future__ import annotations

import gc
import os
import sqlite3
from pathlib import Path

import psutil
import pytest

from testbed.harness import TestbedProcess
from tests.chaos.faults import report, served
from tests.harness import daemon_env, running_daemon
from tests.optimizer.fakes import ScriptedStrategy

WINDOW = 50
MAX_ROWS = 100
SAMPLES = 1200
ROUNDS = 600
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def table_rows(state_db: Path, table: str) -> int:
    """Rows in one table of the state database, read-only."""
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
async def test_a_long_run_keeps_every_buffer_bounded(testbed: TestbedProcess, tmp_path: Path) -> None:
    """After over a thousand samples and hundreds of applies: windows hold at most their size, history is trimmed to
    its row limit, in-memory lists are capped, and the RSS grew by less than a generous bound after warm-up."""
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_SAMPLER__WINDOW_SIZE=str(WINDOW),
        CCTV_OPTIMIZER_STATE__MAX_HISTORY_ROWS=str(MAX_ROWS),
        CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS="0",
        CCTV_OPTIMIZER_ENGINE__BUDGET_ACTIONS="1000",
        CCTV_OPTIMIZER_ENGINE__BUDGET_WINDOW_SECONDS="1",
        # the real strategies stay out of the way: only the scripted one (in the cache slot) applies
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED="false",
        CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED="false",
    )
    own = psutil.Process(os.getpid())
    state_db = tmp_path / "state" / "state.db"
    async with running_daemon(env) as daemon:
        scripted = ScriptedStrategy("cache", use_default_plan=True)
        daemon.engine.runtimes["cache"].strategy = scripted
        for _ in range(100):  # warm-up: caches, imports, connection pools
            await daemon.sample_now()
        gc.collect()
        rss_start = own.memory_info().rss
        per_round = SAMPLES // ROUNDS
        for _ in range(ROUNDS):
            for _ in range(per_round):
                await daemon.sample_now()
            await daemon.engine.request_round(trigger="manual", strategy="cache", manual=True)
        gc.collect()
        rss_end = own.memory_info().rss
        during = await served(daemon)
        windows = daemon.windows
        longest = max(len(windows.values(name)) for name in windows.names())
        rt = daemon.engine.runtimes["cache"]
        attempts, scores, pending = (
            sum(len(p.attempts) for p in rt.pacing.values()),
            len(rt.scores),
            len(daemon.engine._pending),
        )
        history = table_rows(state_db, "decisions")
        journal = table_rows(state_db, "journal")
        applied = len(scripted.applied)
    assert applied >= ROUNDS * 0.9, "the scripted strategy did not act every round"
    assert longest == WINDOW
    assert history <= MAX_ROWS + 100  # trimmed every hundred inserts
    assert journal <= MAX_ROWS + 100
    assert attempts <= 1000 and scores <= 50 and pending == 0
    assert during.health_status == 200 and during.metrics_status == 200
    growth = rss_end - rss_start
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
    report(
        "long run",
        samples=SAMPLES,
        applies=applied,
        window_max=longest,
        history_rows=history,
        journal_rows=journal,
        rss_start_mib=rss_start / 2**20,
        rss_growth_mib=growth / 2**20,
    )
