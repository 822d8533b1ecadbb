"""Prometheus exposition: a collector over the latest snapshot, and the daemon's own counters.

The snapshot collector reads a cached snapshot at scrape time and never samples. Names use one
prefix (``cctv_optimizer_``), base units and low-cardinality labels only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from metrics.snapshot import Snapshot
from metrics.sources import SOURCE_NAMES

PREFIX = "cctv_optimizer_"
RESPONSE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _gauge(name: str, doc: str, value: float | None, unit: str = "") -> GaugeMetricFamily | None:
    if value is None:
        return None
    family = GaugeMetricFamily(PREFIX + name, doc, unit=unit)
    family.add_metric([], float(value))
    return family


class SnapshotCollector(Collector):
    """Turns the latest snapshot into gauges at scrape time."""

    def __init__(self, latest: Callable[[], Snapshot | None], version: str) -> None:
        self._latest = latest
        self._version = version

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Nothing to describe up front: the families depend on which sources answer."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        """Yield the gauges of the cached snapshot."""
        info = InfoMetricFamily(PREFIX + "build", "Version of the daemon.")
        info.add_metric([], {"version": self._version})
        yield info
        snap = self._latest()
        up = GaugeMetricFamily(
            PREFIX + "source_up", "Whether each source answered in the last sample.", labels=["source"]
        )
        for name in SOURCE_NAMES:
            status = snap.sources.get(name) if snap is not None else None
            if status is not None:
                up.add_metric([name], 1.0 if status.up else 0.0)
        yield up
        if snap is None:
            return
        yield from (f for f in self._families(snap) if f is not None)

    def _families(self, snap: Snapshot) -> Iterator[GaugeMetricFamily | None]:  # noqa: PLR0912, PLR0915 -- one metric family per source, in the order /metrics lists them
        yield _gauge("last_sample_timestamp_seconds", "Wall time of the last sample.", snap.wall_time)
        h = snap.host
        if h is not None:
            yield _gauge("cpu_used_ratio", "Host CPU in use, 0..1.", h.cpu_ratio)
            yield _gauge("memory_used_ratio", "Host memory in use (1 - available/total).", h.memory_used_ratio)
            yield _gauge("swap_used_ratio", "Host swap in use.", h.swap_used_ratio)
            yield _gauge("load_per_core_ratio", "One-minute load average per core.", h.load_per_core)
            load = GaugeMetricFamily(PREFIX + "load_average", "Host load average.", labels=["window"])
            for label, value in zip(("1m", "5m", "15m"), h.load, strict=True):
                load.add_metric([label], value)
            yield load
            yield _gauge("shm_used_bytes", "Bytes used on /dev/shm.", h.shm_used_bytes)
            yield _gauge("shm_used_ratio", "Share of /dev/shm in use.", h.shm_used_ratio)
            if h.psi is not None:
                psi = GaugeMetricFamily(
                    PREFIX + "pressure_some_ratio", "PSI some avg10 as a ratio.", labels=["resource"]
                )
                psi.add_metric(["cpu"], h.psi.cpu_some / 100)
                psi.add_metric(["memory"], h.psi.memory_some / 100)
                psi.add_metric(["io"], h.psi.io_some / 100)
                yield psi
            net = GaugeMetricFamily(
                PREFIX + "network_bytes_per_second", "Host network throughput.", labels=["direction"]
            )
            net.add_metric(["receive"], h.net_rx_bytes_per_second)
            net.add_metric(["transmit"], h.net_tx_bytes_per_second)
            yield net
        b = snap.backend
        if b is not None:
            yield _gauge("backend_resident_memory_bytes", "RSS of the backend process.", b.rss_bytes)
            yield _gauge("backend_tree_resident_memory_bytes", "RSS of the backend and its children.", b.tree_rss_bytes)
            yield _gauge("backend_cpu_ratio", "Backend CPU seconds per second (1 = one core).", b.cpu_ratio)
            yield _gauge("backend_children", "Child processes of the backend.", b.children)
            yield _gauge("backend_open_fds", "Open file descriptors of the backend.", b.open_files)
        if snap.tcp is not None:
            tcp = GaugeMetricFamily(PREFIX + "tcp_connections", "TCP sockets of the backend's ports.", labels=["state"])
            for state, count in sorted(snap.tcp.by_state.items()):
                tcp.add_metric([state], count)
            yield tcp
        if snap.probe is not None:
            yield _gauge(
                "backend_up", "Whether the backend's /health answered 200.", 1.0 if snap.probe.available else 0.0
            )
        if snap.cache is not None:
            yield _gauge("backend_cache_entries", "Entries in the backend response cache.", snap.cache.size)
            yield _gauge("backend_cache_hit_ratio", "Hit ratio of the backend response cache.", snap.cache.hit_rate)
        d = snap.database
        if d is not None:
            yield _gauge("sqlite_file_bytes", "Size of the backend database file.", d.file_bytes)
            yield _gauge("sqlite_wal_bytes", "Size of the backend database WAL file.", d.wal_bytes)
            yield _gauge("sqlite_freelist_ratio", "Share of database pages on the freelist.", d.freelist_ratio)
            yield _gauge("sqlite_probe_seconds", "Time of the probe query.", d.probe_seconds)
            if d.tables:
                rows = GaugeMetricFamily(
                    PREFIX + "sqlite_table_rows", "Rows of tables nobody cleans.", labels=["table"]
                )
                for table, stat in sorted(d.tables.items()):
                    rows.add_metric([table], stat.rows)
                yield rows
        if snap.hls is not None:
            yield _gauge("hls_directory_bytes", "Bytes in the HLS directory.", snap.hls.bytes)
            yield _gauge("hls_files", "Files in the HLS directory.", snap.hls.files)
            yield _gauge("hls_streams", "Stream directories in the HLS directory.", snap.hls.streams)
            yield _gauge("hls_stale_files", "Files the pruning rule considers stale.", snap.hls.stale_files)
            yield _gauge("hls_stale_bytes", "Bytes of stale HLS files.", snap.hls.stale_bytes)
            yield _gauge(
                "hls_unknown_files",
                "Entries in the HLS directory that are not MediaMTX's (never pruned).",
                snap.hls.unknown_files,
            )
        if snap.sessions is not None:
            sessions = GaugeMetricFamily(
                PREFIX + "viewer_sessions", "Viewer sessions in the database.", labels=["state"]
            )
            sessions.add_metric(["active"], snap.sessions.active)
            sessions.add_metric(["stuck"], snap.sessions.stuck)
            sessions.add_metric(["stale"], snap.sessions.stale)
            yield sessions
        if snap.mediamtx is not None:
            yield _gauge("mediamtx_paths", "MediaMTX paths.", snap.mediamtx.paths)
            yield _gauge("mediamtx_readers", "MediaMTX readers.", snap.mediamtx.readers)
        if snap.own is not None:
            yield _gauge("own_resident_memory_bytes", "RSS of the daemon itself.", snap.own.rss_bytes)


class DaemonMetrics:
    """The daemon's own counters, gauges and histograms, all in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.response_time = Histogram(
            PREFIX + "backend_response_time_seconds",
            "Response time of the backend's hot endpoints, per sample.",
            buckets=RESPONSE_BUCKETS,
            registry=registry,
        )
        self.sample_duration = Histogram(
            PREFIX + "sample_duration_seconds",
            "Time taken by one full sample.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.samples = Counter(PREFIX + "samples", "Samples taken.", registry=registry)
        self.sample_interval = Gauge(
            PREFIX + "sample_interval_seconds", "Current (adaptive) sample interval.", registry=registry
        )
        self.rounds = Counter(PREFIX + "rounds", "Decision rounds run.", ["trigger"], registry=registry)
        self.round_duration = Histogram(
            PREFIX + "round_duration_seconds", "Duration of decision rounds.", registry=registry
        )
        self.actions = Counter(
            PREFIX + "actions",
            "Decisions by strategy, action, outcome and mode.",
            ["strategy", "action", "outcome", "mode"],
            registry=registry,
        )
        self.verdicts = Counter(
            PREFIX + "verdicts", "Verified effects by strategy and verdict.", ["strategy", "verdict"], registry=registry
        )
        self.reverts = Counter(PREFIX + "reverts", "Changes reverted.", ["strategy"], registry=registry)
        self.breaker_open = Gauge(
            PREFIX + "breaker_open", "1 when the strategy's circuit breaker is open.", ["strategy"], registry=registry
        )
        self.armed = Gauge(PREFIX + "strategy_armed", "1 when the strategy is armed.", ["strategy"], registry=registry)
        self.cooldown = Gauge(
            PREFIX + "strategy_cooldown_seconds", "Current cooldown of the strategy.", ["strategy"], registry=registry
        )
        self.score = Gauge(
            PREFIX + "strategy_score", "Score over recent verdicts, -1..1.", ["strategy"], registry=registry
        )
        self.findings = Gauge(PREFIX + "findings", "Open findings by strategy.", ["strategy"], registry=registry)
        self.baseline = Gauge(
            PREFIX + "baseline", "Learned baselines (p95 of the last hour).", ["signal"], registry=registry
        )
        self.last_round = Gauge(
            PREFIX + "last_round_timestamp_seconds", "Wall time of the last finished round.", registry=registry
        )

    def observe_snapshot(self, snap: Snapshot) -> None:
        """Record the per-sample histograms."""
        self.samples.inc()
        self.sample_duration.observe(snap.duration_seconds)
        if snap.probe is not None and snap.probe.response_time_seconds is not None:
            self.response_time.observe(snap.probe.response_time_seconds)
