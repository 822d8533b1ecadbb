"""The backend's SQLite file under faults: a long writer, the file gone, the WAL unwritable."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from testbed.harness import TestbedProcess
from tests.chaos.faults import lost_rows, recover, report, row_ids, served, tracebacks
from tests.harness import daemon_env, running_daemon, sample_times

SIDE_FILES = ("", "-wal", "-shm")


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A bind mount of a directory that can be flipped read-only and back (needs root, else skipped)."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        yield source, view
    finally:
        if subprocess.run(["umount", str(view)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(view)], capture_output=True, check=False)


def move_files(base: Path, target: Path, suffixes: tuple[str, ...], *, rename: str = "db") -> tuple[str, ...]:
    """Move ``base`` and its side files that exist into ``target`` as ``rename`` + suffix; the suffixes moved."""
    target.mkdir(exist_ok=True)
    moved = tuple(s for s in suffixes if os.path.exists(f"{base}{s}"))
    for suffix in moved:
        os.replace(f"{base}{suffix}", target / f"{rename}{suffix}")
    return moved


def remount(view: Path, mode: str) -> None:
    """Make a bind mount read-only or writable again."""
    subprocess.run(["mount", "-o", f"remount,{mode},bind", str(view)], capture_output=True, check=True)


async def test_a_long_writer_transaction_does_not_stall_sampling(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A writer holding its transaction open leaves WAL readers alone: the database source stays up and not busy."""
    writer = sqlite3.connect(testbed.database, isolation_level=None, timeout=10)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(daemon_env(testbed, tmp_path / "state")) as daemon:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute(
                "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time)"
                " VALUES ('chaos', 'ip', 0, '2026-01-01T00:00:00.000Z')"
            )
            try:
                started = time.monotonic()
                snaps = [await daemon.sample_now() for _ in range(3)]
                held = time.monotonic() - started
                during = await served(daemon)
            finally:
                writer.execute("ROLLBACK")
                writer.close()
    assert all(s.sources["database"].up and s.database is not None and not s.database.busy for s in snaps)
    assert during.health_status == 200 and during.source_up["database"] == 1.0
    assert tracebacks(logs) == []
    report("database long writer", samples=3, seconds_for_3_samples=held, health=during.health_status)


async def test_a_missing_database_file_is_reported_and_found_again(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The database file moved away marks the source down with the path; putting it back brings it up."""
    db = testbed.database
    aside = tmp_path / "aside"
    aside.mkdir()
    state_db = tmp_path / "state" / "state.db"
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(daemon_env(testbed, tmp_path / "state")) as daemon:
            await daemon.engine.request_round(trigger="manual", manual=True)
            before = row_ids(state_db)
            moved = move_files(db, aside, SIDE_FILES)
            try:
                snap = await daemon.sample_now()
                await daemon.engine.request_round(trigger="scheduled")
                during = await served(daemon)
                created = move_files(db, tmp_path / "created", ("",))  # the read-only open must create nothing
            finally:
                move_files(aside / "db", db.parent, moved, rename=db.name)
            back = await recover(daemon, "database")
            after = row_ids(state_db)
    assert snap.sources["database"].up is False
    assert snap.sources["database"].error == f"database {db} does not exist"
    assert during.health_status == 200 and during.source_up["database"] == 0.0
    assert during.sources["database"]["error"].endswith("does not exist")
    assert created == ()
    lost = lost_rows(before, after)
    assert lost == 0
    assert tracebacks(logs) == []
    report(
        "database file missing",
        rows_lost=lost,
        recovery_samples=back.samples,
        recovery_seconds=back.seconds,
        health=during.health_status,
    )


async def test_an_unwritable_wal_fails_the_checkpoint_softly_and_recovers(
    tmp_path: Path, read_only_view: tuple[Path, Path]
) -> None:
    """Through a read-only mount the WAL cannot be written: sampling goes on, the checkpoint fails with its reason,
    and once writable again the checkpoint succeeds."""
    source, view = read_only_view
    with TestbedProcess(source) as tb:
        tb.scenario("wal_growth", mb=4)
        env = daemon_env(
            tb,
            tmp_path / "state",
            CCTV_OPTIMIZER_BACKEND__DATABASE=str(view / tb.database.relative_to(source)),
            CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(2 * 1024 * 1024),
            CCTV_OPTIMIZER_STRATEGIES__DATABASE__SETTLE_SECONDS="0",
        )
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(env) as daemon:
                remount(view, "ro")
                try:
                    await sample_times(daemon, 2)
                    snap = daemon.engine.latest
                    failed = await daemon.engine.request_round(trigger="manual", strategy="database", manual=True)
                    during = await served(daemon)
                finally:
                    remount(view, "rw")
                assert snap is not None and snap.sources["database"].up is True  # reading needs no write
                assert len(failed.decision_ids) == 1
                row = daemon.store.decision(failed.decision_ids[0])
                assert row is not None and row.outcome == "failed"
                assert row.error is not None and "readonly" in row.error.replace("-", "").replace(" ", "")
                assert during.health_status == 200
                started = time.monotonic()
                await daemon.sample_now()
                daemon.engine.runtimes["database"].pace("checkpoint").last_attempt = None  # past the cooldown
                done = await daemon.engine.request_round(trigger="manual", strategy="database", manual=True)
                fixed = daemon.store.decision(done.decision_ids[0]) if done.decision_ids else None
                took = time.monotonic() - started
    assert fixed is not None and fixed.outcome == "applied", fixed
    assert tracebacks(logs) == []
    report("database WAL unwritable", failed_error=row.error, recovery_rounds=1, recovery_seconds=took)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("junk", "is not a SQLite database (its header is wrong)"), ("directory", "is a directory, not a SQLite file")],
)
async def test_a_bad_database_in_place_is_a_source_down_and_opens_no_breaker(
    testbed: TestbedProcess, tmp_path: Path, kind: str, reason: str
) -> None:
    """A junk file or a directory where the database was: the source is down saying what it is, the strategies that
    need it plan nothing (a manual round records a deferral with the reason), and no breaker opens however often
    they are asked; with the file back everything comes up again."""
    db = testbed.database
    aside = tmp_path / "aside"
    env = daemon_env(testbed, tmp_path / "state")
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(env) as daemon:
            moved = move_files(db, aside, SIDE_FILES)
            try:
                if kind == "junk":
                    db.write_bytes(os.urandom(64 * 1024))
                else:
                    db.mkdir()
                snap = await daemon.sample_now()
                rows = []
                for _ in range(daemon.settings.engine.breaker_failures + 2):
                    for name in ("connection", "database"):
                        result = await daemon.engine.request_round(trigger="manual", strategy=name, manual=True)
                        rows += [daemon.store.decision(i) for i in result.decision_ids]
                breakers = {name: rt.breaker_open for name, rt in daemon.engine.runtimes.items()}
            finally:
                if db.is_dir():
                    db.rmdir()
                else:
                    db.unlink()
                move_files(aside / "db", db.parent, moved, rename=db.name)
            back = await recover(daemon, "database")
    assert snap.sources["database"].up is False
    assert snap.sources["database"].error == f"database {db} {reason}"
    assert breakers == dict.fromkeys(breakers, False)
    assert {(r.strategy, r.outcome) for r in rows if r is not None} == {
        ("database", "deferred"),
        ("connection", "deferred"),
    }
    assert all(reason in r.reason for r in rows if r is not None)
    assert back.samples >= 1
    assert [e for e in logs if e["event"] in ("plan_crashed", "apply_crashed", "breaker_opened")] == []
    assert tracebacks(logs) == []
