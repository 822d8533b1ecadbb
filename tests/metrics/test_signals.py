"""The signals table (metrics/signals.py) against what the daemon really measures and exports: every signal a full
sample yields has a row, every row is yielded by a full sample or derived by the strategy it names, and every row's
/metrics series is on /metrics. The table cannot drift from the code without a test failing here."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.units import Unit
from metrics.prometheus import DaemonMetrics, SnapshotCollector
from metrics.signals import BY_NAME, SIGNALS, is_known_signal, signal, signal_label, signal_unit
from metrics.snapshot import TableStat
from metrics.sources import SOURCE_NAMES, SOURCES
from strategies import cache
from tests.metrics.test_prometheus import full_snapshot

DERIVED_BY_CACHE = {cache.RECENT_HIT_RATE, cache.CLEARED, cache.JUNK_SHARE}
# rows a source declares itself (``Source.signals``): its own tests hold them to its part's ``signal_values``
DECLARED = {row.name for source in SOURCES for row in source.signals}


def every_signal_snapshot() -> dict[str, float]:
    """The signals of a sample in which every source answered (the backend's start time known too)."""
    snap = full_snapshot()
    assert snap.backend is not None and snap.database is not None
    tables = {"login_attempts": TableStat(rows=321, oldest="2025-01-01 00:00:00", oldest_epoch=snap.wall_time - 86400)}
    snap = dataclasses.replace(
        snap,
        backend=dataclasses.replace(snap.backend, started_wall=snap.wall_time - 60),
        database=dataclasses.replace(snap.database, tables=MappingProxyType(tables)),
    )
    return dict(snap.signals())


def test_every_measured_signal_has_a_row_and_every_row_is_measured() -> None:
    """A full sample's signals and the table's rows are the same set, but for the cache strategy's derived ones and
    those a source declares with its part."""
    measured = every_signal_snapshot()
    per_table = {n for n in measured if n.startswith("table_oldest_days:")}
    assert per_table and all(is_known_signal(n) for n in per_table)
    assert set(measured) - per_table == set(BY_NAME) - DERIVED_BY_CACHE - DECLARED
    assert {BY_NAME[n].source for n in DERIVED_BY_CACHE} == {"cache strategy"}


def test_every_row_names_a_known_source() -> None:
    """A row's source is one of the sampler's sources (as /health names them), the daemon itself, or a strategy."""
    assert {s.source for s in SIGNALS} <= {*SOURCE_NAMES, "own", "cache strategy"}


def test_every_rows_series_is_on_metrics() -> None:
    """Each row's /metrics series (name and labels) is exported for a full sample."""
    registry = CollectorRegistry()
    snap = full_snapshot()
    registry.register(SnapshotCollector(lambda: snap, "test"))
    DaemonMetrics(registry).observe_snapshot(snap)
    exported: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        exported.add(family.name)
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if k != "le")
            exported.add(f"{family.name}{{{labels}}}" if labels else family.name)
    missing = [s.prometheus for s in SIGNALS if s.prometheus is not None and s.prometheus not in exported]
    assert missing == []


def test_labels_and_units_come_from_the_table() -> None:
    """The table decides a signal's label and unit, per-table signals included; a name it does not hold shows its
    identifier and the unit its name implies."""
    assert signal_label("wal_bytes") == "Database WAL size"
    assert signal_unit("wal_bytes") is Unit.BYTES
    # a share, though its name does not say so
    assert signal_unit(cache.JUNK_SHARE) is Unit.RATIO
    per_table = signal("table_oldest_days:login_attempts")
    assert per_table is not None and (per_table.label, per_table.unit) == ("Oldest row in login_attempts", Unit.DAYS)
    assert signal("table_oldest_days:") is None
    assert (signal_label("made_up_seconds"), signal_unit("made_up_seconds")) == ("made_up_seconds", Unit.SECONDS)
    assert not is_known_signal("made_up_seconds")
