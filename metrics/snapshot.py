"""The immutable Snapshot the sampler publishes, and its parts (one per source)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from metrics.source import Source

_EMPTY: Mapping[str, float] = MappingProxyType({})
P = TypeVar("P")


class MeasuresSignals(Protocol):
    """A part that gives its own signals: how a source without a field on ``Snapshot`` feeds the windows."""

    def signal_values(self, wall_time: float) -> Mapping[str, float]:
        """This part's signals by name (each needs a row: the source's ``signals``, metrics/source.py)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PsiSample:
    """Pressure stall information: share of time (percent, avg10) some or all tasks stalled."""

    cpu_some: float
    memory_some: float
    memory_full: float
    io_some: float
    io_full: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSample:
    """Host-wide figures."""

    cpu_ratio: float
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    memory_used_ratio: float
    swap_used_ratio: float
    load: tuple[float, float, float]
    uptime_seconds: float
    psi: PsiSample | None
    net_rx_bytes_per_second: float
    net_tx_bytes_per_second: float
    disk_read_bytes_per_second: float
    disk_write_bytes_per_second: float
    shm_total_bytes: int
    shm_used_bytes: int

    @property
    def load_per_core(self) -> float:
        """One-minute load divided by the number of cores."""
        return self.load[0] / max(1, self.cpu_count)

    @property
    def shm_used_ratio(self) -> float:
        """Share of /dev/shm in use."""
        return self.shm_used_bytes / self.shm_total_bytes if self.shm_total_bytes else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSample:
    """The backend's process tree."""

    pid: int
    rss_bytes: int
    tree_rss_bytes: int
    cpu_ratio: float
    children: int
    open_files: int
    listen_ports: tuple[int, ...]
    # when the process started (wall-clock seconds); a new value means a restart
    started_wall: float | None = None
    # why these figures may not be the server's (the process found listens on no port); None when they are
    degraded: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSample:
    """TCP sockets of the backend's ports, counted per state (lower-case state names)."""

    ports: tuple[int, ...]
    by_state: Mapping[str, int]
    total: int
    method: str

    def get(self, state: str) -> int:
        """The count for one state, zero when absent."""
        return self.by_state.get(state, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSample:
    """One round of HTTP probes of the backend."""

    available: bool
    response_time_seconds: float | None
    endpoint_seconds: Mapping[str, float]
    requests: int
    errors: int
    bytes_received: int
    # why the backend counts as unavailable (refused, timed out, a bad status or body); None when available
    error: str | None = None
    # why no hot endpoint was timed this round (the request budget was spent): the response time is then
    # unknown, not the /health time, and the previous value stands (not fed to baselines or triggers)
    stale_reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStatsSample:
    """The backend response cache's counters, normalised from either JSON shape."""

    hits: int
    misses: int
    sets: int
    # entries removed by someone (invalidations and deletes; a bounded cache's evictions): a clear bumps it by
    # the entries it dropped, the backend's expiry sweep does not
    evictions: int
    size: int
    max_size: int | None
    hit_rate: float
    # seconds since these counters were read: above 0 when an earlier reading stands in (budget share, 429);
    # such a reading is shown but not pushed to the signal windows again
    age_seconds: float = 0.0


def age_days(epoch: float | None, wall_time: float) -> float | None:
    """Days from a row's time (epoch seconds) to ``wall_time``; 0 for a time still ahead (an expiry to come)."""
    if epoch is None:
        return None
    return max(0.0, (wall_time - epoch) / 86400.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TableStat:
    """Row count and oldest timestamp text of one backend table; ``oldest_epoch`` is that text read in its
    column's own time base (metrics/tables.py), None when it is not a time."""

    rows: int
    oldest: str | None
    oldest_epoch: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseSample:
    """The backend's SQLite file."""

    file_bytes: int
    wal_bytes: int
    page_size: int
    page_count: int
    freelist_count: int
    journal_mode: str
    probe_seconds: float
    busy: bool
    tables: Mapping[str, TableStat] = field(default_factory=lambda: MappingProxyType({}))
    # the backend's timezone as its system_settings row names it at this sample (None: not read)
    timezone: str | None = None

    @property
    def freelist_ratio(self) -> float:
        """Share of pages on the freelist."""
        return self.freelist_count / self.page_count if self.page_count else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HlsSample:
    """MediaMTX's HLS directory."""

    bytes: int
    files: int
    streams: int
    oldest_segment_age_seconds: float | None
    stale_files: int
    stale_bytes: int
    # files that are not MediaMTX's segments or playlists: never pruned, reported (a few names as examples)
    unknown_files: int = 0
    unknown_examples: tuple[str, ...] = ()
    # stream directories whose playlist could not be read whole (too large, a FIFO, a link): nothing in them is stale
    protected_directories: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaMtxSample:
    """MediaMTX paths and readers from its control API."""

    paths: int
    ready_paths: int
    readers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSample:
    """Viewer sessions in the backend database."""

    active: int
    stuck: int
    oldest_heartbeat_age_seconds: float | None
    # silent past the backend's own timeout (15 s): what its sweep ends; and the zone its times were read in
    stale: int = 0
    timezone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnSample:
    """The daemon's own footprint."""

    rss_bytes: int
    cpu_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStatus:
    """Whether one source answered in this sample, and why not."""

    name: str
    up: bool
    error: str | None
    duration_seconds: float


CACHE_SIGNALS = ("cache_hit_rate", "cache_entries", "cache_lookups", "cache_removals")


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one sample saw. Parts are None when their source was unavailable.

    ``parts`` holds every part by its source's name (and the database's ``sessions``); the built-in parts are
    also typed fields, and any source's part is ``snapshot.part(FooSource)``.
    """

    seq: int
    monotonic: float
    wall_time: float
    duration_seconds: float
    host: HostSample | None
    backend: ProcessSample | None
    tcp: TcpSample | None
    probe: ProbeSample | None
    cache: CacheStatsSample | None
    database: DatabaseSample | None
    hls: HlsSample | None
    mediamtx: MediaMtxSample | None
    sessions: SessionSample | None
    own: OwnSample | None
    sources: Mapping[str, SourceStatus]
    parts: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def taken(  # noqa: PLR0913 -- the sample's keyword-only header and its parts
        cls,
        *,
        seq: int,
        monotonic: float,
        wall_time: float,
        duration_seconds: float,
        parts: Mapping[str, object],
        own: OwnSample | None,
        sources: Mapping[str, SourceStatus],
    ) -> Snapshot:
        """The snapshot of what the sources read, by name; each typed field is the part of its type, if any."""
        by_type = {type(p): p for p in parts.values()}

        def typed(kind: type[P]) -> P | None:
            found = by_type.get(kind)
            return found if isinstance(found, kind) else None

        return cls(
            seq=seq,
            monotonic=monotonic,
            wall_time=wall_time,
            duration_seconds=duration_seconds,
            host=typed(HostSample),
            backend=typed(ProcessSample),
            tcp=typed(TcpSample),
            probe=typed(ProbeSample),
            cache=typed(CacheStatsSample),
            database=typed(DatabaseSample),
            hls=typed(HlsSample),
            mediamtx=typed(MediaMtxSample),
            sessions=typed(SessionSample),
            own=own,
            sources=sources,
            parts=MappingProxyType(dict(parts)),
        )

    def part(self, source: type[Source[P]]) -> P | None:
        """What ``source`` read in this sample; None when it is not configured or was down."""
        return cast("P | None", self.parts.get(source.name))

    def held_signals(self) -> frozenset[str]:
        """Signals this sample did not measure again although their source is up: their windows keep what they have."""
        held: set[str] = set()
        if self.cache is not None and self.cache.age_seconds > 0.0:
            held.update(CACHE_SIGNALS)
        if self.probe is not None and self.probe.available and self.probe.stale_reason is not None:
            held.add("response_time_seconds")
        return frozenset(held)

    def signals(self) -> Mapping[str, float]:
        """The flat numeric signals strategies detect on and the engine verifies against."""
        out = self._field_signals()
        for part in self.parts.values():
            # a part with ``MeasuresSignals``'s method (looked up: an isinstance on a protocol costs microseconds)
            values = getattr(part, "signal_values", None)
            if values is not None:
                out.update(values(self.wall_time))
        return MappingProxyType(out) if out else _EMPTY

    def _field_signals(self) -> dict[str, float]:  # noqa: PLR0912 -- one signal per source field
        """The signals of the typed fields' parts."""
        out: dict[str, float] = {}
        if self.host is not None:
            h = self.host
            out["cpu_ratio"] = h.cpu_ratio
            out["memory_used_ratio"] = h.memory_used_ratio
            out["load_per_core"] = h.load_per_core
            out["shm_used_ratio"] = h.shm_used_ratio
            if h.psi is not None:
                out["psi_cpu_some"] = h.psi.cpu_some
                out["psi_memory_some"] = h.psi.memory_some
        if self.backend is not None:
            out["backend_rss_bytes"] = float(self.backend.rss_bytes)
            out["backend_cpu_ratio"] = self.backend.cpu_ratio
            if self.backend.started_wall is not None:
                out["backend_uptime_seconds"] = max(0.0, self.wall_time - self.backend.started_wall)
        if self.tcp is not None:
            out["tcp_established"] = float(self.tcp.get("established"))
            out["tcp_close_wait"] = float(self.tcp.get("close_wait"))
            out["tcp_time_wait"] = float(self.tcp.get("time_wait"))
        if self.probe is not None:
            out["backend_up"] = 1.0 if self.probe.available else 0.0
            out["probe_requests"] = float(self.probe.requests)
            out["probe_errors"] = float(self.probe.errors)
            if self.probe.response_time_seconds is not None:
                out["response_time_seconds"] = self.probe.response_time_seconds
        if self.cache is not None and self.cache.age_seconds <= 0.0:
            out["cache_hit_rate"] = self.cache.hit_rate
            out["cache_entries"] = float(self.cache.size)
            out["cache_lookups"] = float(self.cache.hits + self.cache.misses)
            out["cache_removals"] = float(self.cache.evictions)
        if self.database is not None:
            out["wal_bytes"] = float(self.database.wal_bytes)
            out["database_bytes"] = float(self.database.file_bytes)
            out["freelist_ratio"] = self.database.freelist_ratio
            out["database_probe_seconds"] = self.database.probe_seconds
            for table, stat in self.database.tables.items():
                age = age_days(stat.oldest_epoch, self.wall_time)
                if age is not None:
                    out[f"table_oldest_days:{table}"] = age
        if self.hls is not None:
            out["hls_bytes"] = float(self.hls.bytes)
            out["hls_stale_files"] = float(self.hls.stale_files)
        if self.sessions is not None:
            out["sessions_active"] = float(self.sessions.active)
            out["sessions_stuck"] = float(self.sessions.stuck)
            out["sessions_stale"] = float(self.sessions.stale)
        if self.mediamtx is not None:
            out["mediamtx_readers"] = float(self.mediamtx.readers)
        if self.own is not None:
            out["own_rss_bytes"] = float(self.own.rss_bytes)
        return out
