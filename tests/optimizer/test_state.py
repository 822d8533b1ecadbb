"""The state store: WAL SQLite, history and journal, retention, and its soft failure modes."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from optimizer.clock import FakeClock
from optimizer.state import HistoryReader, StateStore
from tests.harness import Mount
from tests.optimizer.fakes import add_decision

DAY = 86400.0


@pytest.fixture
def clock() -> FakeClock:
    """A wall clock that moves only when a test advances it."""
    return FakeClock()


@pytest.fixture
def open_store(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., StateStore]]:
    """Opens stores on the fake clock and closes each one at the end of the test."""
    stores: list[StateStore] = []

    def factory(directory: Path | None = None, **kwargs: Any) -> StateStore:
        store = StateStore(directory or tmp_path / "state", wall_clock=clock.wall, **kwargs)
        store.open()
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


def remount(point: Path, options: str) -> None:
    """Change the options of a mounted tmpfs (e.g. make it read-only)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], capture_output=True, check=True)


def count(store: StateStore) -> int:
    """Rows in the decision history."""
    return len(store.decisions(limit=1_000_000))


# the healthy path --------------------------------------------------------------------------------------------------


def test_database_is_in_wal_mode_with_a_schema_version(open_store: Callable[..., StateStore]) -> None:
    """A fresh store is a WAL-mode SQLite file that records its schema version."""
    store = open_store()
    assert store.healthy is True and store.last_error is None
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    conn.close()
    assert store.path.stat().st_size > 0


def test_decisions_insert_update_and_list_after_an_id(open_store: Callable[..., StateStore], clock: FakeClock) -> None:
    """Rows come back oldest first after a given id, filtered by strategy; updates fill in later facts."""
    store = open_store()
    first = add_decision(store)
    clock.advance(1)
    second = add_decision(store, strategy="cache", action="invalidate", outcome="dry_run", mode="dry_run")
    clock.advance(1)
    third = add_decision(store, outcome="skipped_cooldown", expected=None, changes=[])
    assert first is not None and second is not None and third is not None
    assert first < second < third
    assert [r.id for r in store.decisions(after=first)] == [second, third]
    assert [r.id for r in store.decisions(after=0, limit=2)] == [first, second]
    assert [r.id for r in store.decisions(strategy="database")] == [first, third]
    assert store.decisions(after=third) == []
    assert [r.id for r in store.recent_decisions(2)] == [third, second]

    store.update_decision(first, verdict="improved", verdict_detail={"before": 9e7, "after": 1e6, "reverted": False})
    row = store.decision(first)
    assert row is not None
    assert (row.outcome, row.verdict) == ("applied", "improved")  # columns not given stay as they were
    assert row.verdict_detail == {"before": 9e7, "after": 1e6, "reverted": False}
    assert row.signals == {"wal_bytes": 9e7}
    assert row.expected is not None and row.expected["direction"] == "down"
    store.update_decision(first, outcome="failed", error="database is locked", duration_ms=40.0)
    row = store.decision(first)
    assert row is not None
    assert (row.outcome, row.error, row.duration_ms, row.verdict) == ("failed", "database is locked", 40.0, "improved")
    view = row.as_dict()
    assert view["id"] == first and view["runId"] == "run1"
    assert view["timestamp"] == int((clock.wall() - 2) * 1000)
    assert view["verdictDetail"] == {"before": 9e7, "after": 1e6, "reverted": False}
    assert store.decision(9999) is None


def test_decision_stats_count_attempts_only(open_store: Callable[..., StateStore], clock: FakeClock) -> None:
    """Stats cover applied/failed/timeout/error rows, not skips or dry runs."""
    store = open_store()
    assert store.decision_stats() == (0, 0, 0.0, None)
    add_decision(store, duration_ms=10.0)
    add_decision(store, outcome="failed", duration_ms=30.0)
    add_decision(store, outcome="skipped_cooldown", duration_ms=1000.0)
    clock.advance(5)
    add_decision(store, outcome="dry_run", duration_ms=1000.0)
    assert store.decision_stats() == (2, 1, 20.0, clock.wall() - 5)


def test_history_survives_close_and_reopen(
    open_store: Callable[..., StateStore], tmp_path: Path, clock: FakeClock
) -> None:
    """Rows, journal, strategy state and baselines written before close are there after reopening."""
    store = open_store()
    decision = add_decision(store)
    entry = store.journal_intent(decision_id=decision, strategy="database", plan={"reason": "x"})
    store.save_strategy("database", {"breaker_open": True})
    store.save_baseline("response_time_seconds", -1, 0.12, 500)
    store.close()
    again = open_store()
    assert [r.id for r in again.decisions()] == [decision]
    assert [e.id for e in again.journal("intent")] == [entry]
    assert again.load_strategies() == {"database": {"breaker_open": True}}
    assert again.load_baselines() == {("response_time_seconds", -1): (0.12, 500)}
    assert again.moved_aside is None


def test_strategy_state_and_baselines_are_upserted(open_store: Callable[..., StateStore]) -> None:
    """Saving again replaces the previous value instead of adding a row."""
    store = open_store()
    store.save_strategy("cpu", {"cooldown": 300.0})
    store.save_strategy("cpu", {"cooldown": 600.0, "scores": [0, 1]})
    store.save_strategy("memory", {})
    assert store.load_strategies() == {"cpu": {"cooldown": 600.0, "scores": [0, 1]}, "memory": {}}
    store.save_baseline("tcp_established", 20, 40.0, 10)
    store.save_baseline("tcp_established", 20, 55.0, 11)
    store.save_baseline("tcp_established", 21, 70.0, 3)
    assert store.load_baselines() == {("tcp_established", 20): (55.0, 11), ("tcp_established", 21): (70.0, 3)}


def test_journal_lifecycle(open_store: Callable[..., StateStore]) -> None:
    """An intent is listed as such until finished; finishing keeps the last known result when given none."""
    store = open_store()
    plan = {"strategy": "database", "reason": "WAL too big", "changes": []}
    a = store.journal_intent(decision_id=7, strategy="database", plan=plan)
    b = store.journal_intent(decision_id=None, strategy="cache", plan={"reason": "y"})
    assert a is not None and b is not None
    assert [(e.id, e.decision_id, e.plan) for e in store.journal("intent")] == [
        (a, 7, plan),
        (b, None, {"reason": "y"}),
    ]
    store.journal_finish(a, "done", {"detail": "checkpointed"})
    store.journal_finish(b, "failed", {"error": "locked"})
    assert store.journal("intent") == []
    store.journal_finish(a, "reverted")
    entries = {e.id: e for e in store.journal()}
    assert (entries[a].status, entries[a].result) == ("reverted", {"detail": "checkpointed"})
    assert (entries[b].status, entries[b].result) == ("failed", {"error": "locked"})
    assert [e.id for e in store.journal("failed")] == [b]


# retention ---------------------------------------------------------------------------------------------------------


def test_retention_by_age(open_store: Callable[..., StateStore], clock: FakeClock) -> None:
    """trim() drops history and finished journal records older than the retention; open intents stay."""
    store = open_store(retention_days=30)
    old = add_decision(store)
    finished = store.journal_intent(decision_id=old, strategy="database", plan={})
    assert finished is not None
    store.journal_finish(finished, "done")
    open_intent = store.journal_intent(decision_id=old, strategy="database", plan={})
    clock.advance(29 * DAY)
    recent = add_decision(store)
    store.trim()
    assert [r.id for r in store.decisions()] == [old, recent]
    clock.advance(2 * DAY)
    store.trim()
    assert [r.id for r in store.decisions()] == [recent]
    assert [e.id for e in store.journal()] == [open_intent]


def test_retention_by_row_count(open_store: Callable[..., StateStore]) -> None:
    """trim() keeps only the newest max_history_rows rows."""
    store = open_store(max_history_rows=10)
    ids = [add_decision(store, run_id=f"r{i}") for i in range(25)]
    store.trim()
    assert [r.id for r in store.decisions()] == ids[-10:]


def test_retention_runs_by_itself_every_hundred_inserts(open_store: Callable[..., StateStore]) -> None:
    """Without an explicit trim() the history is cut back after every hundredth insert."""
    store = open_store(max_history_rows=10)
    for i in range(99):
        add_decision(store, run_id=f"r{i}")
    assert count(store) == 99
    add_decision(store, run_id="r99")
    assert count(store) == 10
    assert store.decisions()[-1].run_id == "r99"


# corrupt files -----------------------------------------------------------------------------------------------------


def test_a_file_of_random_bytes_is_moved_aside(
    open_store: Callable[..., StateStore], tmp_path: Path, clock: FakeClock
) -> None:
    """A state file that is not a database is moved aside intact and a fresh, healthy one is started."""
    directory = tmp_path / "state"
    directory.mkdir()
    junk = os.urandom(8192)
    (directory / "state.db").write_bytes(junk)
    store = open_store(directory)
    assert store.healthy is True
    assert store.moved_aside is not None
    assert store.moved_aside.name == "state.db.corrupt-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock.wall()))
    assert store.moved_aside.read_bytes() == junk
    assert store.decisions() == []
    assert add_decision(store) == 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.parametrize("keep", [50, 100, 4096, 3 * 4096, 0.5], ids=["50B", "header", "1page", "3pages", "half"])
def test_a_truncated_file_is_moved_aside(open_store: Callable[..., StateStore], tmp_path: Path, keep: float) -> None:
    """A state file cut short is recognised as corrupt, moved aside, and replaced by a fresh one."""
    directory = tmp_path / "state"
    original = open_store(directory)
    for i in range(300):
        add_decision(original, run_id=f"r{i}", reason="x" * 200)
    original.close()
    data = (directory / "state.db").read_bytes()
    assert len(data) > 8 * 4096
    size = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    (directory / "state.db").write_bytes(data[:size])
    store = open_store(directory)
    assert store.moved_aside is not None and store.moved_aside.read_bytes() == data[:size]
    assert store.healthy is True
    assert store.decisions() == []
    assert add_decision(store) == 1


def test_a_corrupt_file_that_cannot_be_moved_aside_falls_back_to_memory(
    open_store: Callable[..., StateStore], tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When moving the corrupt file aside fails, open() still returns and the store runs in memory."""
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "state.db").write_bytes(os.urandom(4096))

    def refuse(src: object, dst: object) -> None:
        # root ignores directory permissions here, so the refusal a read-only directory gives is simulated
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("optimizer.state.os.replace", refuse)
    store = open_store(directory)
    assert store.healthy is False
    assert store.last_error is not None
    assert "file is not a database" in store.last_error and "starting afresh failed" in store.last_error
    assert add_decision(store) == 1
    assert [r.id for r in store.decisions()] == [1]


# unusable directories ----------------------------------------------------------------------------------------------


def test_a_state_directory_under_a_regular_file_runs_in_memory(
    open_store: Callable[..., StateStore], tmp_path: Path
) -> None:
    """The directory cannot be created (its parent is a file): the store keeps working in memory, unhealthy."""
    parent = tmp_path / "not-a-directory"
    parent.write_text("a regular file")
    store = open_store(parent / "state")
    assert store.healthy is False
    assert store.last_error is not None and store.last_error.startswith(f"cannot use {parent / 'state'}:")
    assert os.strerror(errno.ENOTDIR) in store.last_error
    decision = add_decision(store)
    assert decision == 1
    store.update_decision(decision, verdict="neutral")
    assert [(r.id, r.verdict) for r in store.decisions()] == [(1, "neutral")]
    store.save_strategy("cpu", {"breaker_open": True})
    assert store.load_strategies() == {"cpu": {"breaker_open": True}}
    entry = store.journal_intent(decision_id=decision, strategy="cpu", plan={})
    assert entry is not None
    store.journal_finish(entry, "done")
    assert [e.status for e in store.journal()] == ["done"]
    assert store.healthy is False  # writes to memory do not make it healthy again
    assert not store.path.exists()
    assert parent.read_text() == "a regular file"


def test_a_read_only_mount_runs_in_memory(tmpfs: Mount, open_store: Callable[..., StateStore]) -> None:
    """On a read-only file system (a tmpfs mounted ro) the store falls back to memory and says why."""
    point = tmpfs("ro,size=1m")
    for directory in (point, point / "missing"):
        store = open_store(directory)
        assert store.healthy is False
        assert store.last_error is not None and store.path.parent.name in store.last_error
        assert add_decision(store) == 1
        assert count(store) == 1
        store.close()
    assert os.listdir(point) == []


def test_a_directory_turned_read_only_keeps_the_saved_state(
    tmpfs: Mount, open_store: Callable[..., StateStore]
) -> None:
    """An existing state file on a file system remounted read-only is served from memory, breakers included."""
    point = tmpfs("size=1m")
    store = open_store(point)
    decision = add_decision(store)
    store.save_strategy("cpu", {"breaker_open": True, "breaker_reason": "3 regressions"})
    store.close()
    remount(point, "ro")
    fallback = open_store(point)
    assert fallback.healthy is False
    assert fallback.last_error is not None and "copy of the last saved state" in fallback.last_error
    assert fallback.load_strategies() == {"cpu": {"breaker_open": True, "breaker_reason": "3 regressions"}}
    assert [r.id for r in fallback.decisions()] == [decision]
    assert add_decision(fallback) == 2
    fallback.close()
    remount(point, "rw")
    after = open_store(point)
    assert count(after) == 1  # the in-memory row never reached the disk
    assert after.healthy is True


def test_a_full_disk_makes_writes_fail_softly_and_recovers(tmpfs: Mount, open_store: Callable[..., StateStore]) -> None:
    """When the file system fills up, writes return None with healthy False; freeing space makes it healthy."""
    point = tmpfs("size=1m")
    store = open_store(point)
    assert add_decision(store) == 1
    filler = point / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    failed = None
    for i in range(200):
        if add_decision(store, reason="y" * 4000, run_id=f"f{i}") is None:
            failed = i
            break
    assert failed is not None
    assert not store.healthy
    assert "full" in (store.last_error or "")
    assert count(store) == failed + 1
    filler.unlink()
    assert add_decision(store) is not None
    assert (store.healthy, store.last_error) == (True, None)


async def test_history_cache_reads_once_per_version_and_sees_a_new_decision_at_once(
    open_store: Callable[..., StateStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from optimizer.api import HistoryCache

    store = open_store()
    add_decision(store, outcome="applied")
    reads = 0
    real_read = HistoryCache._read

    def counting_read(s: StateStore) -> Any:
        nonlocal reads
        reads += 1
        return real_read(s)

    monkeypatch.setattr(HistoryCache, "_read", staticmethod(counting_read))
    cache = HistoryCache()
    answers = await asyncio.gather(*(cache.get(store) for _ in range(20)))
    assert reads == 1, "concurrent requests share one read"
    assert all(a == answers[0] for a in answers)
    (total, ok, _, _), recent = answers[0]
    assert (total, ok, len(recent)) == (1, 1, 1)

    await cache.get(store)
    assert reads == 1, "nothing written, nothing read again"

    new_id = add_decision(store, outcome="failed")
    (total, ok, _, _), recent = await cache.get(store)
    assert reads == 2
    assert (total, ok) == (2, 1)
    assert recent[0]["id"] == new_id


def test_a_state_file_moved_away_is_recreated_in_place_with_every_row(
    open_store: Callable[..., StateStore], tmp_path: Path
) -> None:
    """Renamed away while open (link count still 1, nothing at the path): verify() recreates it at its path with
    every row, the moved file is left where it was put, and later writes land in the new file."""
    store = open_store()
    first = add_decision(store)
    store.save_strategy("cpu", {"mode_override": "observe"})
    (tmp_path / "state" / "state.db").rename(tmp_path / "state" / "state.db.bak")
    assert store.verify() is True
    second = add_decision(store)
    store.close()
    reopened = open_store()
    assert {r.id for r in reopened.decisions()} == {first, second}
    assert reopened.load_strategies()["cpu"] == {"mode_override": "observe"}
    assert reopened.recreated == 0 and store.recreated == 1
    assert (tmp_path / "state" / "state.db.bak").is_file()


def test_a_state_directory_with_uri_syntax_in_its_name_is_read_back(
    tmp_path: Path, open_store: Callable[..., StateStore]
) -> None:
    """The history reader and the in-memory fallback's copy open the file itself, whatever ``%``, ``#``, ``?`` say."""
    store = open_store(tmp_path / "state %41 #1 ?mode=rw")
    decision = add_decision(store)
    reader = HistoryReader(store)
    try:
        assert [r.id for r in reader.decisions()] == [decision]
    finally:
        reader.close()
    store.close()  # the fallback copies what was saved: the closed file, its WAL checkpointed
    copy = sqlite3.connect(":memory:")
    try:
        assert store._copy_readable_file(copy) is True
        assert copy.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1
    finally:
        copy.close()
