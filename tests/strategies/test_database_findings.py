"""Tests for the database strategy's findings, retention pruning and VACUUM, on real SQLite files."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from config.settings import BackendSettings, DatabaseOptions, Settings
from metrics import backendtime as bt
from metrics.snapshot import DatabaseSample, Snapshot
from metrics.source import SourceDeps
from metrics.sources import DatabaseSource
from metrics.sqlite import DatabaseReader
from metrics.tables import TABLES
from metrics.window import Windows
from strategies.actions import retention as ret
from strategies.base import Action, Direction, Plan, Risk, StrategyContext, StrategyError
from strategies.database import CheckpointWal, DatabaseStrategy, OptimizeStatistics, PruneTables, QuickCheck, Vacuum
from testbed.database import Database
from testbed.localtime import LocalClock
from testbed.maintenance import archive_history
from tests.optimizer.fakes import snapshot_of

OFFSET = 7.0
ZONE = bt.resolve_zone(None, OFFSET)  # no system_settings row: the backend's Asia/Jakarta
DAY = 86400.0
# 03:30 in the backend's local time (UTC+7)
IN_WINDOW = datetime(2026, 1, 15, 20, 30, tzinfo=UTC).timestamp()
OUT_OF_WINDOW = datetime(2026, 1, 15, 8, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def backend_db(tmp_path: Path) -> Iterator[Path]:
    """The stand-in backend's schema and seed rows (ages 0.1, 2, 45, 120 and 200 days) in a real WAL file.

    The backend keeps it open, as it does while it runs: the daemon writes only to a database the backend has open.
    """
    db = Database(tmp_path / "cctv.db", LocalClock(OFFSET))
    db.open(cameras=2, admin_password="secret")
    yield db.path
    db.close()


@pytest.fixture
def db_without_archive(tmp_path: Path) -> Iterator[Path]:
    """The same database created with the migration-order bug: no viewer_session_history_archive (kept open)."""
    db = Database(tmp_path / "cctv.db", LocalClock(OFFSET), create_archive_table=False)
    db.open(cameras=2, admin_password="secret")
    yield db.path
    db.close()


def sample(path: Path) -> DatabaseSample:
    """A real reading of the file by the sampler's reader, table statistics included."""
    return DatabaseReader(path, timezone_offset_hours=OFFSET, tables=TABLES).read(0.0)


def snapshot(database: DatabaseSample | None, wall: float | None = None) -> Snapshot:
    """A snapshot with only the database part."""
    return snapshot_of(database=database, wall=wall)


def ctx(snap: Snapshot, *armed: str, manual: bool = False) -> StrategyContext:
    """A planning context."""
    return StrategyContext(snapshot=snap, windows=Windows(10), armed=armed, manual=manual, now=100.0)


def strategy(path: Path, wall: float | None = None, **options: Any) -> DatabaseStrategy:
    """A database strategy over a test file."""
    return DatabaseStrategy(
        path,
        DatabaseOptions(**options),
        exit_ratio=0.9,
        timezone_offset_hours=OFFSET,
        wall=(lambda: wall) if wall is not None else time.time,
    )


def count(path: Path, sql: str, *args: Any) -> int:
    """One integer from a query."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def local(days_ago: float) -> str:
    """The backend's local-time text for a moment in the past."""
    return LocalClock(OFFSET).local(days_ago * DAY)


def utc(days_ago: float) -> str:
    """CURRENT_TIMESTAMP-style UTC text for a moment in the past."""
    return LocalClock(OFFSET).utc(days_ago * DAY)


def iso(days_ago: float) -> str:
    """A JavaScript ``toISOString()`` text (UTC, milliseconds, ``Z``), as login_attempts and token_blacklist hold."""
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def insert(path: Path, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows directly, as the backend would."""
    with sqlite3.connect(path) as conn:
        conn.executemany(sql, rows)


# ----- findings --------------------------------------------------------------------------------------------------


def test_a_missing_archive_table_is_reported_with_the_history_it_leaves(db_without_archive: Path) -> None:
    """Without viewer_session_history_archive the finding archive-table-missing names the history's size."""
    findings = {f.id: f for f in strategy(db_without_archive).findings(ctx(snapshot(sample(db_without_archive))))}
    finding = findings["archive-table-missing"]
    assert finding.severity == "warning"
    assert finding.evidence["history_rows"] == 5
    assert finding.evidence["oldest_days"] == pytest.approx(200.0, abs=0.01)
    assert "history-archive-behind" not in findings


def test_history_past_90_days_means_the_archive_job_is_behind(backend_db: Path) -> None:
    """Rows older than 91 days in viewer_session_history raise history-archive-behind until the job runs."""
    s = strategy(backend_db)
    ids = {f.id for f in s.findings(ctx(snapshot(sample(backend_db))))}
    assert "history-archive-behind" in ids and "archive-table-missing" not in ids
    with sqlite3.connect(backend_db) as conn:
        archive_history(conn, LocalClock(OFFSET))
    assert "history-archive-behind" not in {f.id for f in s.findings(ctx(snapshot(sample(backend_db))))}


def test_every_table_retention_prunes_is_one_the_daemon_samples() -> None:
    """Retention's rules and the daemon's sampled tables come from one list, so no rule's trigger is left unfed."""
    source = DatabaseSource.from_config(
        Settings(backend=BackendSettings(database=Path("/nonexistent/cctv.db"))), SourceDeps()
    )
    assert source is not None
    sampled = {t.table for t in source.reader.tables}
    assert {rule.table for rule in ret.RULES} <= sampled
    assert "playback_viewer_session_history_archive" in sampled & set(ret.RULES_BY_TABLE)


def test_uncleaned_tables_are_reported_by_age_and_by_size(backend_db: Path) -> None:
    """Each table nobody cleans with rows past retention gets its own stable id; a row count alone also counts."""
    findings = {f.id: f for f in strategy(backend_db).findings(ctx(snapshot(sample(backend_db))))}
    expected = {f"uncleaned-{t.table}" for t in TABLES if t.table in ret.RULES_BY_TABLE}
    # empty: nothing archived yet
    expected -= {"uncleaned-viewer_session_history_archive", "uncleaned-playback_viewer_session_history_archive"}
    assert expected <= set(findings)
    login = findings["uncleaned-login_attempts"]
    assert login.evidence["time_base"] == "utc"
    # the seed's 200 days, within the hours its clock may differ from the column's
    assert login.evidence["oldest_days"] == pytest.approx(200.0, abs=0.5)
    assert "enable retention pruning" in login.summary
    audit = findings["uncleaned-playback_token_audit_logs"]
    assert audit.evidence["time_base"] == "utc"
    assert audit.evidence["oldest_days"] == pytest.approx(200.0, abs=0.01)
    with sqlite3.connect(backend_db) as conn:
        conn.execute("DELETE FROM login_attempts WHERE attempt_time < ?", (local(91),))
    calm = {f.id for f in strategy(backend_db).findings(ctx(snapshot(sample(backend_db))))}
    assert "uncleaned-login_attempts" not in calm
    crowded = {f.id for f in strategy(backend_db, table_rows_warning=3).findings(ctx(snapshot(sample(backend_db))))}
    assert "uncleaned-login_attempts" in crowded


def test_the_table_age_signal_reads_the_oldest_row(backend_db: Path) -> None:
    """Snapshot.signals() carries table_oldest_days:<table>, each read in its column's time base."""
    signals = snapshot(sample(backend_db)).signals()
    assert signals["table_oldest_days:playback_token_audit_logs"] == pytest.approx(200.0, abs=0.01)
    assert signals["table_oldest_days:login_attempts"] == pytest.approx(200.0, abs=0.5)


# ----- cutoffs, windows and the rules ----------------------------------------------------------------------------


MARCH_NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MARCH_FIRST = datetime(2026, 3, 1, 0, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("time_base", "now", "days", "zone", "expected"),
    [
        pytest.param(bt.TimeBase.UTC, MARCH_NOON, 90, ZONE, "2025-12-01 12:00:00", id="utc"),
        pytest.param(bt.TimeBase.LOCAL, MARCH_NOON, 90, ZONE, "2025-12-01 19:00:00", id="local-wib-plus-7"),
        pytest.param(
            bt.TimeBase.LOCAL,
            MARCH_NOON,
            90,
            bt.resolve_zone("WITA", OFFSET),
            "2025-12-01 20:00:00",
            id="local-wita-plus-8",
        ),
        pytest.param(
            bt.TimeBase.UTC,
            MARCH_FIRST,
            365,
            ZONE,
            (MARCH_FIRST - timedelta(days=365)).strftime("%Y-%m-%d %H:%M:%S"),
            id="days-back-exact-to-the-second",
        ),
    ],
)
def test_cutoffs_follow_the_column_time_base(
    time_base: bt.TimeBase, now: datetime, days: int, zone: bt.Zone, expected: str
) -> None:
    """The cutoff text is exactly N days before now, to the second; a local-time cutoff is the UTC one in the
    backend's zone: +7 for WIB, +8 for WITA."""
    assert ret.cutoff_text(time_base, now, days, zone) == expected


@pytest.mark.parametrize(
    ("window", "hour", "minute", "inside"),
    [
        pytest.param("03:00-05:00", 3, 0, True, id="start-is-inside"),
        pytest.param("03:00-05:00", 5, 0, False, id="end-is-outside"),
        pytest.param("23:00-02:00", 23, 30, True, id="wrapping-before-midnight"),
        pytest.param("23:00-02:00", 1, 59, True, id="wrapping-after-midnight"),
        pytest.param("23:00-02:00", 12, 0, False, id="wrapping-midday-is-outside"),
    ],
)
def test_quiet_windows_may_wrap_midnight(window: str, hour: int, minute: int, inside: bool) -> None:
    """03:00-05:00 holds 03:00 but not 05:00; 23:00-02:00 holds 23:30 and 01:59 but not noon."""
    assert ret.in_window(window, datetime(2026, 1, 1, hour, minute)) is inside


def test_a_malformed_quiet_window_is_an_error() -> None:
    """A window not written HH:MM-HH:MM is refused with the expected shape."""
    with pytest.raises(ValueError, match="HH:MM"):
        ret.parse_window("3-5")


def test_the_footage_index_is_never_a_retention_target() -> None:
    """telegram_archive_uploads is in no rule, and pruning it by hand is refused."""
    assert "telegram_archive_uploads" not in ret.RULES_BY_TABLE
    rule = ret.RetentionRule(table="telegram_archive_uploads", column="created_at", time_base=bt.TimeBase.UTC)
    with pytest.raises(StrategyError, match="never pruned"):
        ret.prune_table(
            Path("/nonexistent"),
            rule,
            "2020-01-01 00:00:00",
            batch_rows=10,
            max_rows=10,
            deadline=1e18,
            busy_timeout_ms=10,
        )


# ----- pruning ---------------------------------------------------------------------------------------------------


def prune(path: Path, table: str, days: float = 90, **kwargs: Any) -> ret.PruneResult:
    """Prune one table with its rule and a cutoff computed now."""
    rule = ret.RULES_BY_TABLE[table]
    cutoff = ret.cutoff_text(rule.time_base, datetime.now(UTC), days, ZONE)
    options: dict[str, Any] = {
        "batch_rows": 500,
        "max_rows": 100_000,
        "deadline": time.monotonic() + 30,
        "busy_timeout_ms": 200,
    }
    options.update(kwargs)
    return ret.prune_table(path, rule, cutoff, **options)


@pytest.mark.parametrize(
    ("table", "insert_sql", "text_of", "names_sql"),
    [
        pytest.param(
            "viewer_sessions",
            "INSERT INTO viewer_sessions (session_id, camera_id, ip_address, started_at, last_heartbeat, is_active)"
            " VALUES (:name, 1, '10.0.0.5', :at, :at, 0)",
            local,
            "SELECT session_id FROM viewer_sessions",
            id="local-text",
        ),
        pytest.param(
            "login_attempts",
            "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time)"
            " VALUES (:name, 'username', 0, :at)",
            iso,
            "SELECT identifier FROM login_attempts",
            id="iso-utc-text",
        ),
        pytest.param(
            "playback_token_audit_logs",
            "INSERT INTO playback_token_audit_logs (event_type, ip_address, created_at) VALUES (:name, '10.0.0.1', :at)",
            utc,
            "SELECT event_type FROM playback_token_audit_logs",
            id="utc-sql-text",
        ),
    ],
)
def test_local_and_utc_columns_are_cut_at_their_own_time(
    backend_db: Path, table: str, insert_sql: str, text_of: Callable[[float], str], names_sql: str
) -> None:
    """Three hours either side of 90 days decides, in the column's own time base (local vs UTC, ISO UTC)."""
    with sqlite3.connect(backend_db) as conn:
        conn.executemany(
            insert_sql,
            [{"name": name, "at": text_of(days)} for name, days in (("older", 90 + 3 / 24), ("younger", 90 - 3 / 24))],
        )
    conn.close()
    prune(backend_db, table)
    with sqlite3.connect(backend_db) as conn:
        names = {r[0] for r in conn.execute(names_sql)}
    conn.close()
    assert "younger" in names and "older" not in names


def test_live_sessions_are_never_pruned(backend_db: Path) -> None:
    """An active viewer session that started 200 days ago stays; the ended old ones go."""
    insert(
        backend_db,
        "INSERT INTO viewer_sessions (session_id, camera_id, ip_address, started_at, last_heartbeat, is_active)"
        " VALUES ('live-one', 1, '10.0.0.4', ?, ?, 1)",
        [(local(200), local(0))],
    )
    result = prune(backend_db, "viewer_sessions")
    assert result.deleted == 2
    assert count(backend_db, "SELECT count(*) FROM viewer_sessions WHERE session_id = 'live-one'") == 1
    assert count(backend_db, "SELECT count(*) FROM viewer_sessions WHERE started_at < ?", local(90)) == 1


def test_pruning_goes_in_batches_within_the_row_budget(backend_db: Path) -> None:
    """1 200 old rows in batches of 500 take three transactions; a budget of 700 stops at 700."""
    rows = [("bulk", iso(150)) for _ in range(1200)]
    insert(
        backend_db,
        "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time) VALUES (?, 'ip', 0, ?)",
        rows,
    )
    limited = prune(backend_db, "login_attempts", max_rows=700)
    assert (limited.deleted, limited.batches, limited.stopped) == (700, 2, "row budget spent")
    rest = prune(backend_db, "login_attempts")
    assert (rest.deleted, rest.batches, rest.stopped) == (502, 2, None)
    assert count(backend_db, "SELECT count(*) FROM login_attempts") == 3


def test_a_busy_database_fails_the_first_batch_and_deletes_nothing(backend_db: Path) -> None:
    """While another connection holds the write lock, pruning raises 'database busy' and every row stays."""
    before = count(backend_db, "SELECT count(*) FROM login_attempts")
    holder = sqlite3.connect(backend_db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StrategyError, match="database busy"):
            prune(backend_db, "login_attempts", busy_timeout_ms=50)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert count(backend_db, "SELECT count(*) FROM login_attempts") == before


def test_numbers_in_a_date_column_are_left_alone(backend_db: Path) -> None:
    """An epoch number sorts below any text in SQLite; it must not be taken for an old date."""
    insert(
        backend_db,
        "INSERT INTO login_attempts (identifier, identifier_type, success, attempt_time) VALUES ('epoch', 'ip', 0, ?)",
        [(1_700_000_000,)],
    )
    prune(backend_db, "login_attempts")
    assert count(backend_db, "SELECT count(*) FROM login_attempts WHERE identifier = 'epoch'") == 1


def test_a_spent_time_budget_deletes_nothing(backend_db: Path) -> None:
    """A deadline already passed stops before the first batch."""
    result = prune(backend_db, "login_attempts", deadline=time.monotonic() - 1)
    assert (result.deleted, result.stopped) == (0, "time budget spent")


def test_missing_tables_are_skipped(db_without_archive: Path) -> None:
    """A table the backend's schema lacks is neither counted nor pruned."""
    assert prune(db_without_archive, "viewer_session_history_archive", days=1).stopped == "table or column missing"
    cutoffs = {r.table: "2100-01-01 00:00:00" for r in ret.RULES}
    tables = {c.table for c in ret.count_candidates(db_without_archive, ret.RULES, cutoffs, 200)}
    assert "viewer_session_history_archive" not in tables and "login_attempts" in tables


# ----- the strategy: triggers, plans, apply ----------------------------------------------------------------------


def test_triggers_follow_the_opt_ins() -> None:
    """Only the WAL arms by default; retention adds a table-age trigger per table; VACUUM arms only in its window."""
    path = Path("/nonexistent.db")
    assert [t.signal for t in strategy(path).triggers({})] == ["wal_bytes"]
    specs = {t.signal: t for t in strategy(path, retention_enabled=True).triggers({})}
    login = specs["table_oldest_days:login_attempts"]
    assert (login.enter, login.exit) == (91.0, 90.6)
    assert specs["table_oldest_days:viewer_session_history_archive"].enter == 366.0
    assert "table_oldest_days:telegram_archive_uploads" not in specs
    inside = strategy(path, wall=IN_WINDOW, vacuum_enabled=True).triggers({})
    outside = strategy(path, wall=OUT_OF_WINDOW, vacuum_enabled=True).triggers({})
    assert "freelist_ratio" in {t.signal for t in inside}
    assert "freelist_ratio" not in {t.signal for t in outside}


async def test_retention_is_planned_as_disruptive_with_a_measurable_effect(backend_db: Path) -> None:
    """Armed by a table age, the plan lists each table's rows past the cutoff as a disruptive prune."""
    s = strategy(backend_db, retention_enabled=True)
    plan = await s.plan(ctx(snapshot(sample(backend_db)), "table_oldest_days:login_attempts"))
    assert plan is not None
    assert plan.disruptive and not plan.reversible
    by_target = {c.target: c for c in plan.changes}
    assert "table:telegram_archive_uploads" not in by_target
    assert by_target["table:login_attempts"].before == "5 rows"
    assert by_target["table:login_attempts"].after.startswith("3 rows")
    assert all(c.risk is Risk.DISRUPTIVE and c.action == "retention_prune" for c in plan.changes)
    assert plan.expected is not None
    assert (plan.expected.signal, plan.expected.direction) == ("freelist_ratio", Direction.UP)
    assert "rows past their retention" in plan.reason


async def test_retention_is_not_planned_unless_enabled_or_armed(backend_db: Path) -> None:
    """Retention off: no prune plan even by hand; on but not armed by an age: nothing in a scheduled round."""
    snap = snapshot(sample(backend_db))
    manual = await strategy(backend_db).plan(ctx(snap, manual=True))
    assert manual is None or all(c.action != "retention_prune" for c in manual.changes)
    assert await strategy(backend_db, retention_enabled=True, wal_limit_bytes=1 << 30).plan(ctx(snap)) is None


async def test_an_oversized_wal_comes_before_retention(backend_db: Path) -> None:
    """With the WAL over its limit the round does the safe checkpoint, not the disruptive prune."""
    s = strategy(backend_db, retention_enabled=True, wal_limit_bytes=4096)
    grown = dataclasses.replace(sample(backend_db), wal_bytes=1 << 20)
    plan = await s.plan(ctx(snapshot(grown), "wal_bytes", "table_oldest_days:login_attempts"))
    assert plan is not None and not plan.disruptive
    assert plan.changes[0].action == "wal_checkpoint"


async def test_apply_prunes_every_planned_table_and_nothing_else(backend_db: Path) -> None:
    """Apply deletes the old rows table by table; recent rows, live sessions and footage stay."""
    telegram = count(backend_db, "SELECT count(*) FROM telegram_archive_uploads")
    s = strategy(backend_db, retention_enabled=True)
    plan = await s.plan(ctx(snapshot(sample(backend_db)), manual=True))
    assert plan is not None
    result = await s.apply(plan)
    assert {c.target: c.after for c in result.changes}["table:login_attempts"] == "3 rows"
    assert "login_attempts: deleted 2 rows in 1 batches" in result.detail
    assert count(backend_db, "SELECT count(*) FROM login_attempts") == 3
    assert count(backend_db, "SELECT count(*) FROM camera_source_lifecycle_events") == 3
    assert count(backend_db, "SELECT count(*) FROM telegram_archive_uploads") == telegram
    assert count(backend_db, "SELECT count(*) FROM audit_logs") == 5  # the backend prunes that one itself
    again = await s.apply(plan)
    assert again.changes == ()


async def test_apply_on_a_busy_database_fails_and_changes_nothing(backend_db: Path) -> None:
    """A writer holding the lock fails the prune with the reason; no table lost a row."""
    s = strategy(backend_db, retention_enabled=True, busy_timeout_ms=50)
    plan = await s.plan(ctx(snapshot(sample(backend_db)), manual=True))
    assert plan is not None
    before = count(backend_db, "SELECT count(*) FROM login_attempts")
    holder = sqlite3.connect(backend_db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StrategyError, match="database busy"):
            await s.apply(plan)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert count(backend_db, "SELECT count(*) FROM login_attempts") == before


# ----- VACUUM ----------------------------------------------------------------------------------------------------


@pytest.fixture
def fragmented(tmp_path: Path) -> Iterator[Path]:
    """A WAL-mode file whose pages are mostly free after a big delete, held open by the backend."""
    path = tmp_path / "frag.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (x) VALUES (?)", [("x" * 300,)] * 6000)
        conn.execute("COMMIT")
        conn.execute("DELETE FROM t WHERE id > 1000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    backend = sqlite3.connect(path, isolation_level=None)
    backend.execute("SELECT count(*) FROM t").fetchone()  # the first read creates -wal and -shm
    yield path
    backend.close()


async def test_vacuum_runs_only_inside_its_window_and_empties_the_freelist(fragmented: Path) -> None:
    """Inside the window with enough free pages, VACUUM is planned, shrinks the file and leaves no free page."""
    sample_now = DatabaseReader(fragmented).read(0.0)
    assert sample_now.freelist_ratio > 0.5
    outside = strategy(fragmented, wall=OUT_OF_WINDOW, vacuum_enabled=True)
    manual = await outside.plan(ctx(snapshot(sample_now, OUT_OF_WINDOW), manual=True))
    assert manual is not None and [c.action for c in manual.changes] == ["optimize", "quick_check"]
    assert await outside.plan(ctx(snapshot(sample_now, OUT_OF_WINDOW), "freelist_ratio")) is None
    inside = strategy(fragmented, wall=IN_WINDOW, vacuum_enabled=True)
    plan = await inside.plan(ctx(snapshot(sample_now, IN_WINDOW), "freelist_ratio"))
    assert plan is not None and plan.action == "vacuum" and plan.disruptive
    assert plan.expected is not None and plan.expected.direction is Direction.DOWN
    result = await inside.apply(plan)
    after = DatabaseReader(fragmented).read(0.0)
    assert after.freelist_count == 0
    assert after.file_bytes < sample_now.file_bytes
    assert result.changes[-1].after.endswith("0 free pages")
    assert result.changes[0].action == "backup" and "/backups/frag-" in result.changes[0].after
    assert count(fragmented, "SELECT count(*) FROM t") == 1000


async def test_vacuum_rechecks_the_window_before_running(fragmented: Path) -> None:
    """A plan made in the window but applied after it closed does nothing."""
    s = strategy(fragmented, wall=OUT_OF_WINDOW, vacuum_enabled=True)
    result = await s.apply(Plan(strategy="database", reason="t", changes=(), actions=(Vacuum(),)))
    assert result.changes == ()
    assert "outside the quiet window" in result.detail


def test_a_vacuum_past_its_deadline_is_rolled_back(fragmented: Path) -> None:
    """A clock past the deadline interrupts VACUUM: StrategyError, and the free pages are still there."""
    before = ret.file_figures(fragmented, 200)
    ticks = iter(range(0, 10_000_000, 1000))
    with pytest.raises(StrategyError, match="rolled back"):
        ret.vacuum(fragmented, busy_timeout_ms=200, max_seconds=0.5, clock=lambda: float(next(ticks)))
    assert ret.file_figures(fragmented, 200).freelist_count == before.freelist_count


def test_vacuum_refuses_without_free_space_or_with_a_writer(fragmented: Path) -> None:
    """Too little disk space, or a writer holding the lock, fail VACUUM with the reason and change nothing."""
    before = ret.file_figures(fragmented, 200)
    with pytest.raises(StrategyError, match="not enough free space"):
        ret.vacuum(fragmented, busy_timeout_ms=200, max_seconds=10, free_bytes=lambda _p: 1024)
    holder = sqlite3.connect(fragmented, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StrategyError, match="database busy"):
            ret.vacuum(fragmented, busy_timeout_ms=50, max_seconds=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ret.file_figures(fragmented, 200).freelist_count == before.freelist_count


async def test_reconcile_says_what_sqlite_left(fragmented: Path) -> None:
    """Interrupted prunes and VACUUMs are transactional; reconcile reports the file as it is."""
    s = strategy(fragmented)
    prune_note = await s.reconcile(Plan(strategy="database", reason="t", changes=(), actions=(PruneTables(tables=()),)))
    assert "committed batches stay deleted" in prune_note
    vacuum_note = await s.reconcile(Plan(strategy="database", reason="t", changes=(), actions=(Vacuum(),)))
    free = ret.file_figures(fragmented, 200).freelist_count
    assert f"with {free} free pages" in vacuum_note


@pytest.mark.parametrize(
    ("params", "actions"),
    [
        pytest.param(
            {"retention": True, "tables": ["login_attempts"], "cutoffs": {"login_attempts": "2026-01-01 00:00:00"}},
            (
                PruneTables(
                    tables=("login_attempts",), cutoffs=MappingProxyType({"login_attempts": "2026-01-01 00:00:00"})
                ),
            ),
            id="retention",
        ),
        pytest.param({"vacuum": True}, (Vacuum(),), id="vacuum"),
        pytest.param(
            {
                "database": "/x.db",
                "limit": 1024,
                "checkpoint": True,
                "truncate": True,
                "optimize": True,
                "quick_check": True,
            },
            (CheckpointWal(limit=1024, truncate=True), OptimizeStatistics(), QuickCheck()),
            id="checkpoint-optimize-quick-check",
        ),
        pytest.param(
            {"database": "/x.db", "limit": 1024, "optimize": True}, (OptimizeStatistics(),), id="optimize-only"
        ),
    ],
)
async def test_plans_journaled_before_typed_actions_are_rebuilt_and_reconciled(
    fragmented: Path, params: dict[str, object], actions: tuple[Action, ...]
) -> None:
    """Each older ``params`` shape (retention, vacuum, the checkpoint flags) becomes the same typed actions, in
    order, and an interrupted one is reconciled as before."""
    s = strategy(fragmented)
    old: dict[str, object] = {"strategy": "database", "reason": "t", "changes": [], "params": params}
    plan = Plan.from_dict(old, legacy=s.legacy_actions)
    assert plan.actions == actions
    note = await s.reconcile(plan)
    assert note.startswith(("retention pruning was interrupted", "VACUUM was interrupted", "WAL is"))
    if isinstance(actions[0], CheckpointWal):
        assert "its limit of 1 KiB" in note


async def test_a_manual_round_runs_quick_check_once_per_interval(backend_db: Path) -> None:
    """A manual round plans quick_check; it runs read-only, reports ok, and is not planned again within the interval."""
    s = strategy(backend_db)
    plan = await s.plan(ctx(snapshot(sample(backend_db)), manual=True))
    assert plan is not None and QuickCheck() in plan.actions
    result = await s.apply(plan)
    checked = [c for c in result.changes if c.action == "quick_check"]
    assert [(c.before, c.after) for c in checked] == [("unchecked", "ok")]
    assert "quick_check ok" in result.detail
    assert not any(f.id == "database-integrity" for f in s.findings(ctx(snapshot(sample(backend_db)))))
    again = await s.plan(ctx(snapshot(sample(backend_db)), manual=True))
    assert again is None or QuickCheck() not in again.actions


async def test_a_damaged_file_gives_a_critical_integrity_finding(backend_db: Path) -> None:
    """Overwritten pages make quick_check report problems: the apply says so and the finding is critical."""
    healthy = sample(backend_db)
    conn = sqlite3.connect(backend_db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with backend_db.open("r+b") as f:  # scribble over the second half of the file, past the schema page
        f.seek(page_size * (pages // 2))
        f.write(b"\xa5" * page_size * (pages - pages // 2))
    s = strategy(backend_db)
    result = await s.apply(Plan(strategy="database", reason="check", changes=(), actions=(QuickCheck(),)))
    assert "quick_check found" in result.detail
    findings = {f.id: f for f in s.findings(ctx(snapshot(healthy)))}
    integrity = findings["database-integrity"]
    assert integrity.severity == "critical"
    problems = integrity.evidence["problems"]
    assert isinstance(problems, list) and len(problems) >= 1


async def test_a_locked_database_is_a_failed_quick_check_not_an_integrity_finding(tmp_path: Path) -> None:
    """A lock held past the busy timeout fails the check with the reason; it never reads as damage."""
    # a rollback-journal database (the older notes' setup), where a writer locks readers out
    path = tmp_path / "legacy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE viewer_sessions (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO viewer_sessions DEFAULT VALUES")
    try:
        s = strategy(path)
        with pytest.raises(StrategyError, match="database busy: quick_check"):
            await s.apply(Plan(strategy="database", reason="check", changes=(), actions=(QuickCheck(),)))
        findings = {f.id for f in s.findings(ctx(snapshot(sample(path))))}
        assert "database-integrity" not in findings
    finally:
        holder.execute("ROLLBACK")
        holder.close()
