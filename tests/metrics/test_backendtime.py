"""The backend's clocks: its zone names, the texts it stores times as, and cutoffs in a column's own base."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from metrics import backendtime as bt

NOON = datetime(2026, 8, 1, 12, 0, 0, tzinfo=UTC)


def test_the_backends_own_zone_names_and_its_default() -> None:
    """WIB/WITA/WIT are the three Indonesian zones; no row is Asia/Jakarta; an unknown name falls back, said so."""
    assert bt.resolve_zone("WIB", 0.0).name == "Asia/Jakarta"
    assert bt.resolve_zone("wita", 0.0).local_text(NOON) == "2026-08-01 20:00:00"
    assert bt.resolve_zone("WIT", 0.0).local_text(NOON) == "2026-08-01 21:00:00"
    default = bt.resolve_zone(None, 3.0)
    assert (default.name, default.source, default.local_text(NOON)) == (
        "Asia/Jakarta",
        "default",
        "2026-08-01 19:00:00",
    )
    unknown = bt.resolve_zone("Mars/Olympus", -5.5)
    assert unknown.source == "fallback" and "Mars/Olympus" in unknown.name
    assert unknown.local_text(NOON) == "2026-08-01 06:30:00"


def test_each_text_form_is_read_in_its_own_base() -> None:
    """Local text in the zone, UTC text as UTC, ISO with Z as UTC whatever the column says; junk is None."""
    wita = bt.resolve_zone("WITA", 7.0)
    assert bt.parse("2026-08-01 20:00:00", bt.TimeBase.LOCAL, wita) == NOON
    assert bt.parse("2026-08-01 12:00:00", bt.TimeBase.UTC, wita) == NOON
    assert bt.parse("2026-08-01T12:00:00.000Z", bt.TimeBase.UTC, wita) == NOON
    assert bt.parse("2026-08-01T12:00:00.000Z", bt.TimeBase.LOCAL, wita) == NOON
    assert bt.parse("2026-08-01T19:00:00+07:00", bt.TimeBase.UTC, wita) == NOON
    for junk in ("", "yesterday", "2026-08-01", None, 1785585600):
        assert bt.parse(junk, bt.TimeBase.UTC, wita) is None


def test_cutoffs_compare_with_sqlites_datetime_for_both_forms() -> None:
    """A UTC cutoff text splits ISO and SQL texts alike once SQLite's datetime() reads them."""
    cutoff = bt.cutoff_text(bt.TimeBase.UTC, bt.resolve_zone(None, 7.0), NOON, 90)
    assert cutoff == "2026-05-03 12:00:00"
    conn = sqlite3.connect(":memory:")
    rows = {
        "iso-older": "2026-05-03T11:59:59.999Z",
        "iso-younger": "2026-05-03T12:00:01.000Z",
        "sql-older": "2026-05-03 11:59:59",
        "sql-younger": "2026-05-03 12:00:01",
    }
    older = {
        name for name, text in rows.items() if conn.execute("SELECT datetime(?) < ?", (text, cutoff)).fetchone()[0]
    }
    assert older == {"iso-older", "sql-older"}


def test_a_zone_change_is_read_at_the_next_look(tmp_path: Path) -> None:
    """BackendZone reads the row at each look: missing table, then WIB, then WITA."""
    conn = sqlite3.connect(tmp_path / "z.db", isolation_level=None)
    zone = bt.BackendZone(7.0)
    assert zone.read(conn).name == "Asia/Jakarta"
    conn.execute("CREATE TABLE system_settings (setting_key TEXT UNIQUE, setting_value TEXT)")
    conn.execute("INSERT INTO system_settings VALUES ('timezone', 'WIB')")
    assert zone.read(conn).name == "Asia/Jakarta"
    conn.execute("UPDATE system_settings SET setting_value = 'Asia/Makassar'")
    assert zone.read(conn).name == "Asia/Makassar"
    conn.close()
