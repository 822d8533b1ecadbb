"""Tests for metrics.prometheus: the snapshot collector and the daemon's own metrics, on fresh registries."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from metrics.prometheus import PREFIX, DaemonMetrics, Exposition, SnapshotCollector
from metrics.snapshot import (
    CacheStatsSample,
    DatabaseSample,
    HlsSample,
    HostSample,
    MediaMtxSample,
    OwnSample,
    ProbeSample,
    ProcessSample,
    PsiSample,
    SessionSample,
    Snapshot,
    SourceStatus,
    TableStat,
    TcpSample,
)
from metrics.sources import SOURCE_NAMES

VERSION = "9.8.7"


def full_snapshot() -> Snapshot:
    """A snapshot in which every source answered, with distinct values."""
    return Snapshot(
        seq=4,
        monotonic=100.0,
        wall_time=1_750_000_000.5,
        duration_seconds=0.042,
        host=HostSample(
            cpu_ratio=0.37,
            cpu_count=4,
            memory_total_bytes=8_000,
            memory_available_bytes=2_000,
            memory_used_ratio=0.75,
            swap_used_ratio=0.1,
            load=(2.0, 1.5, 1.0),
            uptime_seconds=1234.0,
            psi=PsiSample(cpu_some=12.5, memory_some=3.0, memory_full=1.0, io_some=40.0, io_full=20.0),
            net_rx_bytes_per_second=1000.0,
            net_tx_bytes_per_second=500.0,
            disk_read_bytes_per_second=0.0,
            disk_write_bytes_per_second=0.0,
            shm_total_bytes=1000,
            shm_used_bytes=250,
        ),
        backend=ProcessSample(
            pid=4242,
            rss_bytes=120_000_000,
            tree_rss_bytes=150_000_000,
            cpu_ratio=0.25,
            children=3,
            open_files=57,
            listen_ports=(3000,),
        ),
        tcp=TcpSample(
            ports=(3000,),
            by_state=MappingProxyType({"established": 12, "close_wait": 3, "time_wait": 7}),
            total=22,
            method="netlink",
        ),
        probe=ProbeSample(
            available=True,
            response_time_seconds=0.031,
            endpoint_seconds=MappingProxyType({"/health": 0.002, "/api/cameras/active": 0.031}),
            requests=2,
            errors=0,
            bytes_received=900,
        ),
        cache=CacheStatsSample(hits=8, misses=2, sets=2, evictions=0, size=11, max_size=None, hit_rate=0.8),
        database=DatabaseSample(
            file_bytes=4_096_000,
            wal_bytes=1_024_000,
            page_size=4096,
            page_count=1000,
            freelist_count=50,
            journal_mode="wal",
            probe_seconds=0.0015,
            busy=False,
            tables=MappingProxyType(
                {
                    "login_attempts": TableStat(rows=321, oldest="2025-01-01 00:00:00"),
                    "audit_logs": TableStat(rows=9, oldest=None),
                }
            ),
        ),
        hls=HlsSample(
            bytes=6_400_000, files=44, streams=4, oldest_segment_age_seconds=20.0, stale_files=5, stale_bytes=320_000
        ),
        mediamtx=MediaMtxSample(paths=4, ready_paths=3, readers=6),
        sessions=SessionSample(active=5, stuck=2, oldest_heartbeat_age_seconds=700.0),
        own=OwnSample(rss_bytes=40_000_000, cpu_seconds=1.5),
        sources=MappingProxyType(
            {
                name: SourceStatus(name=name, up=name != "mediamtx", error=None, duration_seconds=0.01)
                for name in SOURCE_NAMES
            }
        ),
    )


def registry_for(snapshot: Snapshot | None) -> CollectorRegistry:
    """A fresh registry holding only a collector over ``snapshot``."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshot, VERSION))
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """One sample's value by metric name (with the prefix added) and labels."""
    return registry.get_sample_value(PREFIX + name, labels)


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("last_sample_timestamp_seconds", {}, 1_750_000_000.5),
        ("cpu_used_ratio", {}, 0.37),
        ("memory_used_ratio", {}, 0.75),
        ("swap_used_ratio", {}, 0.1),
        ("load_per_core_ratio", {}, 0.5),
        ("load_average", {"window": "1m"}, 2.0),
        ("load_average", {"window": "15m"}, 1.0),
        ("shm_used_bytes", {}, 250.0),
        ("shm_used_ratio", {}, 0.25),
        ("pressure_some_ratio", {"resource": "cpu"}, 0.125),
        ("pressure_some_ratio", {"resource": "io"}, 0.4),
        ("network_bytes_per_second", {"direction": "receive"}, 1000.0),
        ("network_bytes_per_second", {"direction": "transmit"}, 500.0),
        ("backend_resident_memory_bytes", {}, 120_000_000.0),
        ("backend_tree_resident_memory_bytes", {}, 150_000_000.0),
        ("backend_cpu_ratio", {}, 0.25),
        ("backend_children", {}, 3.0),
        ("backend_open_fds", {}, 57.0),
        ("tcp_connections", {"state": "established"}, 12.0),
        ("tcp_connections", {"state": "close_wait"}, 3.0),
        ("backend_up", {}, 1.0),
        ("backend_cache_entries", {}, 11.0),
        ("backend_cache_hit_ratio", {}, 0.8),
        ("sqlite_file_bytes", {}, 4_096_000.0),
        ("sqlite_wal_bytes", {}, 1_024_000.0),
        ("sqlite_freelist_ratio", {}, 0.05),
        ("sqlite_probe_seconds", {}, 0.0015),
        ("sqlite_table_rows", {"table": "login_attempts"}, 321.0),
        ("hls_directory_bytes", {}, 6_400_000.0),
        ("hls_files", {}, 44.0),
        ("hls_streams", {}, 4.0),
        ("hls_stale_files", {}, 5.0),
        ("hls_stale_bytes", {}, 320_000.0),
        ("viewer_sessions", {"state": "active"}, 5.0),
        ("viewer_sessions", {"state": "stuck"}, 2.0),
        ("mediamtx_paths", {}, 4.0),
        ("mediamtx_readers", {}, 6.0),
        ("own_resident_memory_bytes", {}, 40_000_000.0),
        ("source_up", {"source": "host"}, 1.0),
        ("source_up", {"source": "mediamtx"}, 0.0),
        ("build_info", {"version": VERSION}, 1.0),
    ],
)
def test_snapshot_values_are_exposed(name: str, labels: dict[str, str], expected: float) -> None:
    """Each snapshot figure appears under its name, in base units, with its labels."""
    assert value(registry_for(full_snapshot()), name, **labels) == pytest.approx(expected)


def test_no_snapshot_yet_exposes_only_build_info() -> None:
    """Before the first sample there is build info and nothing else, and nothing is sampled."""
    registry = registry_for(None)
    assert value(registry, "build_info", version=VERSION) == 1.0
    assert value(registry, "memory_used_ratio") is None
    assert value(registry, "source_up", source="host") is None
    names = {family.name for family in registry.collect()}
    assert names == {PREFIX + "build", PREFIX + "source_up"}


def test_missing_parts_leave_their_metrics_out() -> None:
    """A source that did not answer has no gauges (rather than a misleading zero); its status is 0."""
    snapshot = dataclasses.replace(
        full_snapshot(),
        host=None,
        database=None,
        sources=MappingProxyType(
            {
                "host": SourceStatus(name="host", up=False, error="boom", duration_seconds=0.0),
                "database": SourceStatus(name="database", up=False, error="gone", duration_seconds=0.0),
            }
        ),
    )
    registry = registry_for(snapshot)
    assert value(registry, "memory_used_ratio") is None
    assert value(registry, "load_average", window="1m") is None
    assert value(registry, "sqlite_wal_bytes") is None
    assert value(registry, "source_up", source="host") == 0.0
    assert value(registry, "source_up", source="probe") is None
    assert value(registry, "hls_files") == 44.0


def test_host_without_psi_has_no_pressure_metric() -> None:
    """No PSI on the host means no pressure family."""
    base = full_snapshot()
    assert base.host is not None
    registry = registry_for(dataclasses.replace(base, host=dataclasses.replace(base.host, psi=None)))
    assert value(registry, "pressure_some_ratio", resource="cpu") is None
    assert value(registry, "cpu_used_ratio") == pytest.approx(0.37)


def test_collector_reads_the_latest_snapshot_at_each_scrape() -> None:
    """The collector calls its source at scrape time, so a new snapshot shows on the next scrape."""
    current: list[Snapshot | None] = [None]
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: current[0], VERSION))
    assert value(registry, "hls_files") is None
    current[0] = full_snapshot()
    assert value(registry, "hls_files") == 44.0


def test_exposition_parses_and_follows_the_naming_rules() -> None:
    """The text exposition parses; every family has the prefix; no label is a PID or a path."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(full_snapshot, VERSION))
    daemon = DaemonMetrics(registry)
    daemon.observe_snapshot(full_snapshot())
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    assert all(name.startswith(PREFIX) for name in names)
    labels = {label for family in families for sample in family.samples for label in sample.labels}
    assert labels <= {"source", "window", "resource", "direction", "state", "table", "version", "le"}
    assert "4242" not in generate_latest(registry).decode()


def test_daemon_metrics_count_samples_and_observe_times() -> None:
    """observe_snapshot counts the sample and records its duration and the response time."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    snapshot = full_snapshot()
    metrics.observe_snapshot(snapshot)
    metrics.observe_snapshot(snapshot)
    assert registry.get_sample_value(PREFIX + "samples_total") == 2.0
    assert registry.get_sample_value(PREFIX + "sample_duration_seconds_count") == 2.0
    assert registry.get_sample_value(PREFIX + "sample_duration_seconds_sum") == pytest.approx(0.084)
    assert registry.get_sample_value(PREFIX + "backend_response_time_seconds_count") == 2.0
    assert registry.get_sample_value(PREFIX + "backend_response_time_seconds_bucket", {"le": "0.025"}) == 0.0
    assert registry.get_sample_value(PREFIX + "backend_response_time_seconds_bucket", {"le": "0.05"}) == 2.0


def test_daemon_metrics_skip_response_time_without_a_probe() -> None:
    """A snapshot without a probe time counts as a sample but adds no response-time observation."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.observe_snapshot(dataclasses.replace(full_snapshot(), probe=None))
    assert registry.get_sample_value(PREFIX + "samples_total") == 1.0
    assert registry.get_sample_value(PREFIX + "backend_response_time_seconds_count") == 0.0


def test_daemon_metrics_labels_and_suffixes() -> None:
    """Counters end in _total; labelled gauges expose one series per strategy."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.actions.labels(strategy="database", action="checkpoint", outcome="applied", mode="enforce").inc()
    metrics.breaker_open.labels(strategy="memory").set(1)
    metrics.rounds.labels(trigger="manual").inc(3)
    labels = {"strategy": "database", "action": "checkpoint", "outcome": "applied", "mode": "enforce"}
    assert registry.get_sample_value(PREFIX + "actions_total", labels) == 1.0
    assert registry.get_sample_value(PREFIX + "breaker_open", {"strategy": "memory"}) == 1.0
    assert registry.get_sample_value(PREFIX + "rounds_total", {"trigger": "manual"}) == 3.0


def test_two_daemons_need_two_registries() -> None:
    """Registering the daemon metrics twice in one registry is refused, so tests use fresh ones."""
    registry = CollectorRegistry()
    DaemonMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        DaemonMetrics(registry)


def _exposed(snapshot: list[Snapshot | None]) -> tuple[CollectorRegistry, DaemonMetrics, Exposition]:
    """A registry and an Exposition over the same daemon metrics and snapshot collector, on a clock that never moves."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    snapshots = SnapshotCollector(lambda: snapshot[0], VERSION)
    registry.register(snapshots)
    exposition = Exposition(clock=lambda: 100.0)
    exposition.add(metrics, key=lambda: metrics.version)
    exposition.add(snapshots, key=snapshots.key)
    return registry, metrics, exposition


def test_exposition_shows_every_change_at_the_next_render() -> None:
    """Each kind of change shows in the very next rendering (no time passes), exactly as the registry renders it."""
    current: list[Snapshot | None] = [None]
    registry, metrics, exposition = _exposed(current)
    changes: list[Callable[[], object]] = [
        metrics.samples.inc,
        lambda: metrics.rounds.labels(trigger="manual").inc(),
        lambda: metrics.rounds.labels(trigger="manual").inc(2),
        lambda: metrics.breaker_open.labels(strategy="memory").set(1),
        lambda: metrics.breaker_open.labels(strategy="memory").set(0),
        lambda: metrics.cooldown.labels(strategy="cpu").inc(5),
        lambda: metrics.cooldown.labels(strategy="cpu").dec(2),
        lambda: metrics.round_duration.observe(0.2),
        lambda: metrics.breaker_open.remove("memory"),
        lambda: metrics.armed.labels(strategy="cpu"),
        metrics.armed.clear,
        metrics.samples.reset,
        lambda: metrics.observe_snapshot(full_snapshot()),
        lambda: current.__setitem__(0, full_snapshot()),
        lambda: current.__setitem__(0, dataclasses.replace(full_snapshot(), seq=8, hls=None)),
    ]
    assert exposition.render() == generate_latest(registry)
    for change in changes:
        before = exposition.render()
        change()
        after = exposition.render()
        assert after == generate_latest(registry)
        assert after != before


def test_exposition_renders_an_unchanged_part_once() -> None:
    """A keyed part is collected again only when its key moves; a live one when its rendering is max_age old."""
    collected: list[str] = []

    class Counting:
        def __init__(self, name: str) -> None:
            self.name = name

        def collect(self) -> Iterator[GaugeMetricFamily]:
            collected.append(self.name)
            yield GaugeMetricFamily(PREFIX + self.name, "A figure.", value=len(collected))

    key = [1]
    now = [100.0]
    exposition = Exposition(max_age=1.0, clock=lambda: now[0])
    exposition.add(Counting("keyed"), key=lambda: key[0])
    exposition.add(Counting("live"))
    first = exposition.render()
    assert exposition.render() == first
    assert collected == ["keyed", "live"]
    key[0] = 2
    exposition.render()
    assert collected == ["keyed", "live", "keyed"]
    now[0] += 1.0
    exposition.render()
    assert collected == ["keyed", "live", "keyed", "live"]
    assert {family.name for family in exposition.collect()} == {PREFIX + "keyed", PREFIX + "live"}


def test_tracked_gauges_refuse_function_values() -> None:
    """A gauge read from a function at scrape time would change without moving the version: refused."""
    metrics = DaemonMetrics(CollectorRegistry())
    with pytest.raises(TypeError, match="function"):
        metrics.sample_interval.set_function(lambda: 1.0)


def test_an_untracked_daemon_metric_is_refused() -> None:
    """A plain metric among the daemon's own would never move the version, so /metrics would not show its changes."""
    from prometheus_client import Gauge

    class WithPlainGauge(DaemonMetrics):
        def __init__(self, registry: CollectorRegistry) -> None:
            self.plain = Gauge(PREFIX + "plain", "Not tracked.", registry=registry)
            super().__init__(registry)

    with pytest.raises(TypeError, match="tracked"):
        WithPlainGauge(CollectorRegistry())
