"""Prometheus exposition: a collector over the latest snapshot, the daemon's own counters, and the /metrics text.

The snapshot collector reads a cached snapshot at scrape time and never samples. Names use one
prefix (``cctv_optimizer_``), base units and low-cardinality labels only. ``Exposition`` renders the text
part by part and renders a part again only when what it shows has changed (a new snapshot, a counter bumped).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
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

    def key(self) -> Hashable:
        """What the gauges depend on: the latest snapshot (its sequence number and when it was taken)."""
        snap = self._latest()
        return None if snap is None else (snap.seq, snap.monotonic)

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


class Changes:
    """A version that moves after every change to the metrics sharing it: what a cached rendering is keyed by."""

    __slots__ = ("_lock", "_version")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0

    @property
    def version(self) -> int:
        """The number of changes so far."""
        return self._version

    def bump(self) -> None:
        """Count one change (from any thread)."""
        with self._lock:
            self._version += 1


class _Tracked(MetricWrapperBase):
    """A metric that counts every change in its ``changes``, after the change (so a rendering keyed by the
    version it read first never misses one); its labelled children count theirs in the same place."""

    changes: Changes | None = None

    def _changed(self) -> None:
        if self.changes is not None:
            self.changes.bump()

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Self:
        """The child for these label values (a new one is a new series: a change)."""
        child = super().labels(*labelvalues, **labelkwargs)
        child.changes = self.changes
        self._changed()
        return child

    def remove(self, *labelvalues: Any) -> None:
        """Drop one labelled series."""
        super().remove(*labelvalues)
        self._changed()

    def clear(self) -> None:
        """Drop every labelled series."""
        super().clear()
        self._changed()


class TrackedCounter(_Tracked, Counter):
    """A Counter whose changes are counted."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        """Increment, then count the change."""
        super().inc(amount, exemplar)
        self._changed()

    def reset(self) -> None:
        """Reset to zero, then count the change."""
        super().reset()
        self._changed()


class TrackedGauge(_Tracked, Gauge):
    """A Gauge whose changes are counted (``set_function`` is refused: its value would change unseen)."""

    def inc(self, amount: float = 1) -> None:
        """Increment, then count the change."""
        super().inc(amount)
        self._changed()

    def dec(self, amount: float = 1) -> None:
        """Decrement, then count the change."""
        super().dec(amount)
        self._changed()

    def set(self, value: float) -> None:
        """Set, then count the change."""
        super().set(value)
        self._changed()

    def set_function(self, f: Callable[[], float]) -> None:
        """Refused: a value read from a function at scrape time cannot be cached by version."""
        raise TypeError("a tracked gauge has no function value; use a collector rendered at each scrape")


class TrackedHistogram(_Tracked, Histogram):
    """A Histogram whose observations are counted."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """Observe, then count the change."""
        super().observe(amount, exemplar)
        self._changed()


class DaemonMetrics:
    """The daemon's own counters, gauges and histograms, all in one registry.

    Every change to them moves ``version``: /metrics renders them again only then.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.changes = Changes()
        self.response_time = TrackedHistogram(
            PREFIX + "backend_response_time_seconds",
            "Response time of the backend's hot endpoints, per sample.",
            buckets=RESPONSE_BUCKETS,
            registry=registry,
        )
        self.sample_duration = TrackedHistogram(
            PREFIX + "sample_duration_seconds",
            "Time taken by one full sample.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.samples = TrackedCounter(PREFIX + "samples", "Samples taken.", registry=registry)
        self.sample_interval = TrackedGauge(
            PREFIX + "sample_interval_seconds", "Current (adaptive) sample interval.", registry=registry
        )
        self.rounds = TrackedCounter(PREFIX + "rounds", "Decision rounds run.", ["trigger"], registry=registry)
        self.round_duration = TrackedHistogram(
            PREFIX + "round_duration_seconds", "Duration of decision rounds.", registry=registry
        )
        self.actions = TrackedCounter(
            PREFIX + "actions",
            "Decisions by strategy, action, outcome and mode.",
            ["strategy", "action", "outcome", "mode"],
            registry=registry,
        )
        self.verdicts = TrackedCounter(
            PREFIX + "verdicts", "Verified effects by strategy and verdict.", ["strategy", "verdict"], registry=registry
        )
        self.reverts = TrackedCounter(PREFIX + "reverts", "Changes reverted.", ["strategy"], registry=registry)
        self.breaker_open = TrackedGauge(
            PREFIX + "breaker_open", "1 when the strategy's circuit breaker is open.", ["strategy"], registry=registry
        )
        self.armed = TrackedGauge(
            PREFIX + "strategy_armed", "1 when the strategy is armed.", ["strategy"], registry=registry
        )
        self.cooldown = TrackedGauge(
            PREFIX + "strategy_cooldown_seconds", "Current cooldown of the strategy.", ["strategy"], registry=registry
        )
        self.score = TrackedGauge(
            PREFIX + "strategy_score", "Score over recent verdicts, -1..1.", ["strategy"], registry=registry
        )
        self.findings = TrackedGauge(PREFIX + "findings", "Open findings by strategy.", ["strategy"], registry=registry)
        self.baseline = TrackedGauge(
            PREFIX + "baseline", "Learned baselines (p95 of the last hour).", ["signal"], registry=registry
        )
        self.last_round = TrackedGauge(
            PREFIX + "last_round_timestamp_seconds", "Wall time of the last finished round.", registry=registry
        )
        metrics = [metric for metric in vars(self).values() if isinstance(metric, MetricWrapperBase)]
        untracked = [repr(metric) for metric in metrics if not isinstance(metric, _Tracked)]
        if untracked:
            # its changes would not move the version: /metrics would keep showing its first value
            raise TypeError(f"daemon metrics must be tracked (TrackedCounter, TrackedGauge...): {untracked}")
        self._all: tuple[_Tracked, ...] = tuple(metric for metric in metrics if isinstance(metric, _Tracked))
        for metric in self._all:
            metric.changes = self.changes

    @property
    def version(self) -> int:
        """Moves after every change to any of these metrics."""
        return self.changes.version

    def collect(self) -> Iterator[Metric]:
        """Every family, in the order the registry lists them."""
        for metric in self._all:
            yield from metric.collect()

    def observe_snapshot(self, snap: Snapshot) -> None:
        """Record the per-sample histograms."""
        self.samples.inc()
        self.sample_duration.observe(snap.duration_seconds)
        if snap.probe is not None and snap.probe.response_time_seconds is not None:
            self.response_time.observe(snap.probe.response_time_seconds)


class _Collecting(Protocol):
    def collect(self) -> Iterable[Metric]: ...


@dataclass(slots=True)
class _Part:
    """Some of the families, and their last rendering."""

    source: _Collecting
    # what the families depend on; None: rendered again once ``max_age`` has passed (figures read live)
    key: Callable[[], Hashable] | None
    max_age: float
    rendered_key: Hashable = None
    rendered_at: float = float("-inf")
    payload: bytes | None = None

    def render(self, now: float) -> bytes:
        if self.key is None:
            if self.payload is None or now - self.rendered_at >= self.max_age:
                self.payload, self.rendered_at = generate_latest(self.source), now
            return self.payload
        # the key is read before rendering: a change made while rendering moves it again, so is never missed
        key = self.key()
        if self.payload is None or key is None or key != self.rendered_key:
            self.payload, self.rendered_key = generate_latest(self.source), key
        return self.payload


class Exposition:
    """The /metrics text, rendered part by part: a part is rendered again only when its key has moved.

    An idle daemon is scraped more often than anything changes (every 15 s, sampled every 30 s), and a
    rendering is most of a scrape's cost. A part with a key (the daemon's own metrics: their version; the
    snapshot's gauges: the snapshot) is never stale: the next scrape after a change shows it. A part without one
    holds figures read live (the process's CPU and memory, the API's connections): it is rendered again when its
    last rendering is ``max_age`` seconds old, so many scrapers in a burst share one.
    """

    def __init__(self, *, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._parts: list[_Part] = []
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()

    def add(self, source: _Collecting, key: Callable[[], Hashable] | None = None) -> None:
        """Append a part: ``source``'s families, keyed by ``key`` (None: read live, see the class)."""
        with self._lock:
            self._parts.append(_Part(source, key, self._max_age))

    def render(self) -> bytes:
        """The text exposition of every part, in the order they were added."""
        with self._lock:
            now = self._clock()
            return b"".join(part.render(now) for part in self._parts)

    def collect(self) -> Iterator[Metric]:
        """Every part's families, freshly collected (so the exposition is itself a collector)."""
        with self._lock:
            sources = [part.source for part in self._parts]
        for source in sources:
            yield from source.collect()
