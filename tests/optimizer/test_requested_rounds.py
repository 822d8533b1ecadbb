"""A requested round (POST /performance-optimize, Alertmanager) samples first and plans from that sample."""

from __future__ import annotations

import os
from pathlib import Path

from metrics.snapshot import Snapshot
from optimizer.clock import FakeClock
from optimizer.state import StateStore
from testbed.harness import TestbedProcess
from tests.harness import api_client, auth, daemon_env, running_daemon, sample_times
from tests.optimizer.fakes import RecordingLog, ScriptedStrategy, SnapshotBuilder, make_engine

LIMIT = 2 * 1024 * 1024


async def test_a_manual_round_plans_from_a_sample_taken_for_it(clock: FakeClock, store: StateStore) -> None:
    """The stale sample said calm; the round's own sample says hot, and the plan sees that one."""
    samples = SnapshotBuilder(clock)
    strat = ScriptedStrategy("cpu")
    engine = make_engine([strat], store=store, clock=clock)
    engine.on_snapshot(samples.build(cpu=0.1))
    clock.advance(30.0)  # a stretched interval: the latest sample is 30 s old

    async def fresh() -> Snapshot:
        snapshot = samples.build(cpu=0.99)
        engine.on_snapshot(snapshot)
        return snapshot

    engine.refresh = fresh
    await engine.request_round(trigger="manual", manual=True)
    [ctx] = strat.plan_calls
    assert ctx.snapshot.host is not None and ctx.snapshot.host.cpu_ratio == 0.99
    assert ctx.snapshot.monotonic == clock.monotonic()
    [row] = store.decisions(limit=10)
    assert row.signals == {"cpu_ratio": 0.99}
    await engine.stop(1.0)


async def test_a_scheduled_round_uses_the_loops_sample(clock: FakeClock, store: StateStore) -> None:
    """Only requested rounds take a sample of their own: the scheduled one follows the sample loop."""
    samples = SnapshotBuilder(clock)
    engine = make_engine([ScriptedStrategy("cpu")], store=store, clock=clock)
    engine.on_snapshot(samples.build(cpu=0.1))
    taken: list[Snapshot] = []

    async def fresh() -> Snapshot:
        taken.append(samples.build())
        return taken[-1]

    engine.refresh = fresh
    await engine.request_round(trigger="scheduled")
    assert taken == []
    await engine.stop(1.0)


async def test_a_failed_sample_leaves_the_round_on_the_latest_one(clock: FakeClock, store: StateStore) -> None:
    """A sample that cannot be taken is logged; the round still runs, on the latest sample."""
    samples = SnapshotBuilder(clock)
    log = RecordingLog()
    strat = ScriptedStrategy("cpu")
    engine = make_engine([strat], store=store, clock=clock, log=log)
    latest = samples.build(cpu=0.5)
    engine.on_snapshot(latest)

    async def broken() -> Snapshot:
        raise OSError("no such file")

    engine.refresh = broken
    await engine.request_round(trigger="manual", manual=True)
    assert strat.plan_calls[0].snapshot is latest
    [event] = log.events("requested_sample_failed")
    assert event.level == "warning" and "no such file" in event.fields["error"]
    await engine.stop(1.0)


def wal_size(tb: TestbedProcess) -> int:
    """Bytes of the testbed database's WAL file."""
    try:
        return os.stat(f"{tb.database}-wal").st_size
    except FileNotFoundError:
        return 0


async def test_a_wal_grown_since_the_last_sample_is_planned_and_truncated_as_over_its_limit(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """POST /performance-optimize {"strategy": "database"} after the WAL grew: planned from a fresh sample."""
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(LIMIT),
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS="0",
    )
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 1)
        latest = daemon.engine.latest
        assert latest is not None and latest.database is not None and latest.database.wal_bytes < LIMIT
        testbed.scenario("wal_growth", mb=4)
        assert wal_size(testbed) > LIMIT
        async with http.post("/performance-optimize", json={"strategy": "database"}, headers=auth(daemon)) as resp:
            assert resp.status == 200
            run_id = (await resp.json())["runId"]
        assert daemon.engine.latest is not None and daemon.engine.latest.seq > latest.seq
        [row] = [r for r in daemon.store.decisions(strategy="database") if r.run_id == run_id]
        assert row.outcome == "applied"
        assert row.reason.startswith("WAL is") and "over its limit" in row.reason
        assert row.signals["wal_bytes"] > LIMIT
        assert wal_size(testbed) < LIMIT


async def test_an_alertmanager_round_plans_from_a_fresh_sample(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A CctvSqliteWalGrowing alert for the database strategy after the WAL grew: planned as over its limit."""
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(LIMIT),
        CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS="0",
    )
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="CctvSqliteWalGrowing"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "cctv-optimizer",
        "groupLabels": {"alertname": "CctvSqliteWalGrowing"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "CctvSqliteWalGrowing", "optimize_strategy": "database"},
                "annotations": {},
                "startsAt": "2026-01-15T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example/graph",
                "fingerprint": "wal-1",
            }
        ],
    }
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 1)
        testbed.scenario("wal_growth", mb=4)
        async with http.post("/alertmanager", json=body, headers=auth(daemon)) as resp:
            assert resp.status == 200
            [ran] = (await resp.json())["rounds"]
        [row] = [r for r in daemon.store.decisions(strategy="database") if r.run_id == ran["runId"]]
        assert row.trigger == "alertmanager:CctvSqliteWalGrowing"
        assert row.reason.startswith("WAL is") and "over its limit" in row.reason
        assert row.outcome == "applied" and wal_size(testbed) < LIMIT
