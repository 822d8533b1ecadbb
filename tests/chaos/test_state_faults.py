"""The daemon's own state under faults: a corrupt or truncated file, a read-only directory, a full disk.

A read-only or full state directory is a real tmpfs (mounted by the test as root; skipped where mounting is
not allowed), because as root permission bits would not stop a single write. A tmpfs cannot be remounted
read-only while the daemon holds its database open for writing (the kernel answers EBUSY), so the read-only
case starts the daemon on a read-only mount, and the full case fills the mount while the daemon runs.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
from pathlib import Path

import pytest
import structlog

from optimizer.app import Daemon
from testbed.harness import TestbedProcess
from tests.chaos.faults import lost_rows, report, row_ids, served, tracebacks
from tests.harness import Mount, api_client, auth, daemon_env, running_daemon, unwritable


def corrupt(state_db: Path, kind: str) -> int:
    """Damage a state file that holds history; the number of decision rows it held."""
    conn = sqlite3.connect(state_db)
    rows = int(conn.execute("SELECT count(*) FROM decisions").fetchone()[0])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = state_db.read_bytes()
    if kind == "truncated":
        state_db.write_bytes(data[: len(data) // 3])
    else:
        state_db.write_bytes(data[:100] + os.urandom(len(data) - 100))
    return rows


def fill(point: Path) -> Path:
    """Fill a file system to the last byte with one file; the file."""
    filler = point / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("kind", ["corrupt", "truncated"])
async def test_a_damaged_state_file_is_moved_aside_and_the_daemon_starts_afresh(
    testbed: TestbedProcess, tmp_path: Path, kind: str
) -> None:
    """A corrupt or truncated state file is moved aside with a warning; the daemon serves and records afresh."""
    state = tmp_path / "state"
    env = daemon_env(testbed, state)
    async with running_daemon(env) as daemon:
        for _ in range(3):
            await daemon.engine.request_round(trigger="manual", manual=True)
    held = corrupt(state / "state.db", kind)
    assert held >= 1
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        async with running_daemon(env) as daemon:
            took = time.monotonic() - started
            assert daemon.store.moved_aside is not None and daemon.store.moved_aside.is_file()
            assert daemon.store.healthy is True
            result = await daemon.engine.request_round(trigger="manual", manual=True)
            during = await served(daemon)
    moved = [e for e in logs if e["event"] == "state_corrupt_moved_aside"]
    assert len(moved) == 1 and moved[0]["log_level"] == "warning"
    assert during.health_status == 200 and during.health_reason == "ok"
    assert result.decision_ids and row_ids(state / "state.db")["decisions"] >= set(result.decision_ids)
    assert tracebacks(logs) == []
    report(f"state {kind}", rows_moved_aside=held, start_seconds=took, health=during.health_status)


async def test_a_read_only_state_directory_runs_in_memory_and_says_so(
    testbed: TestbedProcess, tmp_path: Path, tmpfs: Mount
) -> None:
    """On a read-only state mount the daemon starts, keeps its history in memory, and /health says degraded."""
    point = tmpfs("ro,size=1m")
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(daemon_env(testbed, point)) as daemon:
            result = await daemon.engine.request_round(trigger="manual", manual=True)
            during = await served(daemon)
            kept = [r.id for r in daemon.store.decisions()]
    assert during.health_status == 200
    assert during.health_reason.startswith("degraded: cannot open ") and "is not writable" in during.health_reason
    assert result.decision_ids and set(result.decision_ids) <= set(kept)
    assert any(e["event"] == "state_unavailable" for e in logs)
    assert any(e["event"] == "api_token_not_persisted" for e in logs)
    assert os.listdir(point) == []
    assert tracebacks(logs) == []
    report("state read-only", health=during.health_status, reason=during.health_reason.split(":")[0])


async def test_a_full_state_directory_degrades_then_recovers(
    testbed: TestbedProcess, tmp_path: Path, tmpfs: Mount
) -> None:
    """Writes fail softly on a full disk (/health says degraded, the API answers every call), earlier rows stay,
    and the first write after space is freed makes the store healthy again."""
    point = tmpfs("size=1m")
    state_db = point / "state.db"
    statuses: list[int] = []
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(daemon_env(testbed, point)) as daemon, api_client(daemon) as http:

            async def flip(n: int) -> None:
                # an operator switching a strategy's mode: each call writes the strategy's state
                mode = "observe" if n % 2 else "enforce"
                async with http.post("/strategies/cpu/mode", json={"mode": mode}, headers=auth(daemon)) as resp:
                    statuses.append(resp.status)

            await daemon.engine.request_round(trigger="manual", manual=True)
            before = row_ids(state_db)
            filler = fill(point)
            writes = 0
            while daemon.store.healthy and writes < 2000:
                writes += 1
                await flip(writes)
            during = await served(daemon)
            filler.unlink()
            started = time.monotonic()
            recovery_writes = 0
            while not daemon.store.healthy and recovery_writes < 20:
                recovery_writes += 1
                await flip(writes + recovery_writes)
            took = time.monotonic() - started
            after = await served(daemon)
        lost = lost_rows(before, row_ids(state_db))
    assert writes < 2000, "the disk never filled"
    assert during.health_status == 200 and during.metrics_status == 200
    assert during.health_reason.startswith("degraded: state write failed") and "full" in during.health_reason
    assert after.health_reason == "ok" and recovery_writes <= 1
    assert set(statuses) == {200}
    assert lost == 0
    assert tracebacks(logs) == []
    report(
        "state disk full",
        writes_until_full=writes,
        rows_lost=lost,
        api_5xx=sum(1 for s in statuses if s >= 500),
        health=during.health_status,
        recovery_writes=recovery_writes,
        recovery_seconds=took,
    )


def remove_state_files(state: Path) -> None:
    """``rm state.db*`` as a careless operator would, while the daemon runs."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state / 'state.db'}{suffix}").unlink(missing_ok=True)


async def overrides_and_rounds(daemon: Daemon, rounds: int) -> list[int]:
    """Two mode overrides over the API and ``rounds`` manual rounds; the decision ids written."""
    async with api_client(daemon) as http:
        for name, mode in (("cpu", "observe"), ("connection", "dry_run")):
            async with http.post(f"/strategies/{name}/mode", json={"mode": mode}, headers=auth(daemon)) as resp:
                assert resp.status == 200
    ids: list[int] = []
    for _ in range(rounds):
        ids += (await daemon.engine.request_round(trigger="manual", manual=True)).decision_ids
    return ids


async def restarted_state(env: dict[str, str]) -> tuple[dict[str, str | None], set[int]]:
    """After a restart: each strategy's mode override and every decision id the daemon has."""
    async with running_daemon(env) as daemon:
        modes = {
            name: str(rt.mode_override) if rt.mode_override else None for name, rt in daemon.engine.runtimes.items()
        }
        ids = {r.id for r in await asyncio.to_thread(daemon.store.decisions, limit=100_000)}
    return modes, ids


async def test_a_deleted_state_database_is_recreated_and_nothing_is_lost(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """``rm state.db*`` while running: the next write notices (link count 0) and recreates the file from the open
    connection; overrides and decisions made after the deletion, and those before, survive a restart."""
    state = tmp_path / "state"
    env = daemon_env(testbed, state)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(env) as daemon:
            before = list((await daemon.engine.request_round(trigger="manual", manual=True)).decision_ids)
            remove_state_files(state)
            after = await overrides_and_rounds(daemon, 11)
            recreated = (state / "state.db").is_file()
            during = await served(daemon)
        modes, ids = await restarted_state(env)
    assert recreated and len(after) >= 22
    assert during.health_status == 200 and during.health_reason == "ok"
    assert (modes["cpu"], modes["connection"]) == ("observe", "dry_run")  # before the fix: None, None
    assert set(before + after) <= ids
    assert [e["event"] for e in logs if e["event"].startswith("state_database_")] == [
        "state_database_lost",
        "state_database_recreated",
    ]
    assert tracebacks(logs) == []


async def test_a_replaced_state_database_is_kept_aside_and_the_daemons_state_wins(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Another file moved over state.db (another inode at the path): it is kept as state.db.replaced-*, the file is
    recreated from the daemon's own state, and the overrides made after survive a restart."""
    state = tmp_path / "state"
    env = daemon_env(testbed, state)
    async with running_daemon(env) as daemon:
        await daemon.engine.request_round(trigger="manual", manual=True)
        other = tmp_path / "other.db"
        conn = sqlite3.connect(other)
        conn.execute("CREATE TABLE foreign_rows (x)")
        conn.commit()
        conn.close()
        os.replace(other, state / "state.db")
        ids = await overrides_and_rounds(daemon, 2)
        health = await served(daemon)
    modes, kept_ids = await restarted_state(env)
    aside = sorted(state.glob("state.db.replaced-*"))
    assert health.health_reason == "ok"
    assert (modes["cpu"], modes["connection"]) == ("observe", "dry_run")
    assert set(ids) <= kept_ids
    assert len(aside) == 1
    check = sqlite3.connect(aside[0])
    try:
        assert check.execute("SELECT name FROM sqlite_master").fetchall() == [("foreign_rows",)]
    finally:
        check.close()


async def test_until_the_state_database_can_be_recreated_health_says_degraded(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Deleted while the directory refuses new files: /health is degraded naming the problem, writes go on into the
    open file; once the directory accepts files again the next sample recreates it, and every override made while
    degraded survives a restart."""
    state = tmp_path / "state"
    env = daemon_env(testbed, state)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(env) as daemon:
            remove_state_files(state)
            with unwritable(state):
                ids = await overrides_and_rounds(daemon, 2)
                await daemon.sample_now()
                during = await served(daemon)
                still_missing = not (state / "state.db").exists()
            await daemon.sample_now()
            after = await served(daemon)
        modes, kept_ids = await restarted_state(env)
    assert still_missing
    assert during.health_status == 200
    assert during.health_reason.startswith(f"degraded: state database {state / 'state.db'} was deleted")
    assert "cannot recreate it yet" in during.health_reason
    assert after.health_reason == "ok" and (state / "state.db").is_file()
    assert (modes["cpu"], modes["connection"]) == ("observe", "dry_run")
    assert set(ids) <= kept_ids
    assert sum(1 for e in logs if e["event"] == "state_database_lost") == 1
    assert tracebacks(logs) == []
