"""Isolation: API reads cannot hold up rounds, and a plan that waited for a thread is not the strategy's failure."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from optimizer.api import HistoryPages
from optimizer.clock import FakeClock
from optimizer.decisions import Outcome
from optimizer.executors import Executors, watch_queueing
from optimizer.state import HistoryReader, StateStore
from strategies.base import Plan, StrategyContext
from testbed.harness import TestbedProcess
from tests.harness import api_client, daemon_env, running_daemon
from tests.optimizer.fakes import ScriptedStrategy, SnapshotBuilder, add_decision, make_engine

# generous bounds: they only tell "it finished" from "it hung behind the reads"
FINISHED_WITHIN = 30.0
READS = 12
PATHS = (
    "/optimizations?after=0&limit=1000",
    "/health",
    "/metrics",
    "/performance-metrics",
    "/strategies",
    "/samples",
    "/",
)


@pytest.fixture
def blocked_history(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Semaphore]]:
    """Every history page read blocks (in its worker thread) until the test sets the event; each one that
    started releases the semaphore once."""
    release = threading.Event()
    entered = threading.Semaphore(0)
    original = StateStore.decision_rows

    def slow(self: Any, **kwargs: Any) -> Any:
        entered.release()
        release.wait(FINISHED_WITHIN * 2)
        return original(self, **kwargs)

    monkeypatch.setattr(StateStore, "decision_rows", slow)
    yield release, entered
    release.set()


async def test_rounds_complete_while_history_reads_are_stuck(
    testbed: TestbedProcess, tmp_path: Path, blocked_history: tuple[threading.Event, threading.Semaphore]
) -> None:
    """Many slow GET /optimizations at once (each a different page: requests for the same page share one read):
    a round still runs and records; the excess reads get 503."""
    release, entered = blocked_history
    env = daemon_env(
        testbed,
        tmp_path / "s",
        CCTV_OPTIMIZER_API__MAX_CONCURRENT_READS="2",
        CCTV_OPTIMIZER_API__READ_QUEUE_SECONDS="0.5",
    )
    async with running_daemon(env) as daemon, api_client(daemon) as http:

        async def read(after: int) -> ClientResponse:
            resp = await http.get("/optimizations", params={"after": str(after), "limit": "1000"})
            await resp.read()
            return resp

        readers = [asyncio.create_task(read(after)) for after in range(READS)]
        for _ in range(2):
            assert await asyncio.to_thread(entered.acquire, timeout=FINISHED_WITHIN), "no history read started"
        result = await asyncio.wait_for(daemon.engine.request_round(trigger="manual", manual=True), FINISHED_WITHIN)
        assert not result.joined
        rows = [r for r in daemon.store.recent_decisions(50) if r.run_id == result.run_id]
        assert rows, "the round recorded nothing"
        assert all(r.outcome != Outcome.TIMEOUT for r in rows), [(r.strategy, r.error) for r in rows]
        # the reads past the cap were told to come back, not queued without end
        done, _ = await asyncio.wait(readers, timeout=FINISHED_WITHIN, return_when=asyncio.FIRST_COMPLETED)
        assert done
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*readers), FINISHED_WITHIN)
    statuses = sorted(r.status for r in answers)
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    assert all(r.headers.get("Retry-After") == "1" for r in answers if r.status == 503)


class ThreadedStrategy(ScriptedStrategy):
    """A strategy whose plan does its blocking work on a worker thread (as the real ones do)."""

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """Record the call, hop to a thread, then return the scripted plan."""
        self.plan_calls.append(ctx)
        await asyncio.to_thread(lambda: None)
        return self.next_plan


async def test_a_plan_queued_behind_busy_threads_does_not_count_toward_the_breaker(tmp_path: Path) -> None:
    """Every strategy thread is taken: the plan times out waiting for one; no failure is counted."""
    executors = Executors(strategy_threads=2)
    executors.install(asyncio.get_running_loop())
    store = StateStore(tmp_path / "state")
    store.open()
    clock = FakeClock()
    builder = SnapshotBuilder(clock)
    strategy = ThreadedStrategy("database")
    # the state pool as the daemon wires it: records do not wait for strategy threads
    engine = make_engine([strategy], store=store, clock=clock, plan_timeout_seconds=0.5, store_executor=executors.state)
    engine.on_snapshot(builder.build())
    release = threading.Event()
    stuck = [asyncio.to_thread(release.wait, FINISHED_WITHIN) for _ in range(2)]
    stuck_tasks = [asyncio.ensure_future(s) for s in stuck]
    try:
        for _ in range(3):
            result = await asyncio.wait_for(engine.request_round(trigger="manual", manual=True), FINISHED_WITHIN)
            rows = [r for r in store.recent_decisions(10) if r.run_id == result.run_id]
            assert [r.outcome for r in rows] == [Outcome.DEFERRED]
            assert "worker thread" in rows[0].reason
        rt = engine.runtimes["database"]
        assert rt.consecutive_failures == 0 and not rt.breaker_open
    finally:
        release.set()
        await asyncio.gather(*stuck_tasks)
        await engine.stop(1.0)
        store.close()
        executors.shutdown()


async def test_a_plan_that_is_slow_by_itself_still_counts(tmp_path: Path) -> None:
    """The exemption is for queueing only: a plan that runs past its timeout is a failure as before."""
    store = StateStore(tmp_path / "state")
    store.open()
    clock = FakeClock()
    builder = SnapshotBuilder(clock)
    strategy = ScriptedStrategy("database")
    strategy.plan_gate = asyncio.Event()
    engine = make_engine([strategy], store=store, clock=clock, plan_timeout_seconds=0.2)
    engine.on_snapshot(builder.build())
    try:
        await asyncio.wait_for(engine.request_round(trigger="manual", manual=True), FINISHED_WITHIN)
        assert engine.runtimes["database"].consecutive_failures == 1
    finally:
        strategy.plan_gate.set()
        await engine.stop(1.0)
        store.close()


def test_history_reads_do_not_take_the_store_lock(tmp_path: Path) -> None:
    """A history read is served over its own connection while the store's lock is held by a writer."""
    store = StateStore(tmp_path / "state")
    store.open()
    reader = HistoryReader(store)
    try:
        add_decision(store, trigger="manual")
        got: list[int] = []
        with store._lock:
            worker = threading.Thread(target=lambda: got.extend(r.id for r in reader.decisions(limit=10)))
            worker.start()
            worker.join(FINISHED_WITHIN)
            assert not worker.is_alive(), "the history read waited for the store's lock"
        assert len(got) == 1
    finally:
        reader.close()
        store.close()


async def test_queue_watch_sees_only_its_own_work() -> None:
    """Work submitted outside a watch is not measured by it."""
    executors = Executors(strategy_threads=1)
    executors.install(asyncio.get_running_loop())
    try:
        await asyncio.to_thread(lambda: None)
        with watch_queueing() as watch:
            pass
        assert watch.queued() == 0.0
    finally:
        executors.shutdown()


async def test_every_read_answers_while_the_engines_loop_is_busy(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The API serves on a loop of its own and reads the engine's state from there: with the engine's loop
    blocked, every read route answers."""
    env = daemon_env(testbed, tmp_path / "s", ENABLE_PERFORMANCE_OPTIMIZATION="false")
    async with running_daemon(env) as daemon:
        await daemon.engine.request_round(trigger="manual", manual=True)
        base = f"http://127.0.0.1:{daemon.api_port}"
        answered: dict[str, int] = {}
        done = threading.Event()

        def client() -> None:
            try:
                for path in PATHS:
                    with urllib.request.urlopen(base + path, timeout=FINISHED_WITHIN) as resp:
                        answered[path] = resp.status
            finally:
                done.set()

        worker = threading.Thread(target=client)
        worker.start()
        # the engine's loop (this one) is blocked until the client is done, or for the whole bound
        assert done.wait(FINISHED_WITHIN), "the API waited for the engine's loop"
        worker.join()
    assert answered == dict.fromkeys(PATHS, 200)


def test_history_pages_stay_within_their_byte_budget_and_version() -> None:
    """Encoded pages are kept within a byte budget, the least recently used dropped past it; a page that may have
    changed since it was read is forgotten at its next look-up."""
    pages = HistoryPages(budget=10_000)
    assert pages.get(1, (0, 100, None)) is None
    for after in range(50):
        pages.put(1, (after, 1000, None), b"x" * 900)
        assert pages.size <= 10_000
    assert pages.get(1, (49, 1000, None)) == b"x" * 900
    assert pages.get(1, (0, 1000, None)) is None  # dropped: the oldest
    pages.put(1, (0, 1000, None), b"y" * 20_000)  # larger than the whole budget: not kept
    assert pages.get(1, (0, 1000, None)) is None
    size = pages.size
    assert pages.get(2, (49, 1000, None)) is None  # a write since (any row, by default): forgotten
    assert pages.size == size - 900
    pages.put(1, (1, 1000, None), b"stale")  # read before that write: not kept for the new version
    assert pages.get(2, (1, 1000, None)) is None
