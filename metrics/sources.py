"""The daemon's sample sources, in one list: ``SOURCES``. The sampler reads every configured one each sample.

Each built-in source here adapts a reader of its own module (metrics/host.py, process.py, tcp.py, backend.py,
sqlite.py, hls.py, mediamtx.py) to the ``Source`` contract (metrics/source.py). A new source is a module with
its ``Source`` subclass and one entry in ``SOURCES``; everything that names the sources (the snapshot's
statuses in /performance-metrics, /metrics' ``source_up``, the sampler's thread pool, the signal table's rows a
source declares) follows from the list.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Self
from urllib.parse import urlsplit

from config.settings import Settings
from metrics.backend import BackendClient
from metrics.hls import HlsReader
from metrics.host import HostReader
from metrics.mediamtx import MediaMtxClient
from metrics.process import ProcessReader
from metrics.snapshot import (
    CacheStatsSample,
    DatabaseSample,
    HlsSample,
    HostSample,
    MediaMtxSample,
    ProbeSample,
    ProcessSample,
    SourceStatus,
    TcpSample,
)
from metrics.source import AsyncSource, BlockingSource, Reading, Source, SourceDeps, Sources
from metrics.sqlite import DatabaseReader
from metrics.tables import TABLES
from metrics.tcp import TcpCounter, make_tcp_counter


def url_port(url: str) -> int:
    """The port of an http(s) URL, defaulting by scheme."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class HostSource(BlockingSource[HostSample]):
    """Host-wide CPU, memory, load, pressure, network, disk and /dev/shm."""

    name = "host"

    def __init__(self, reader: HostReader) -> None:
        self.reader = reader

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self:
        """Always read."""
        del settings
        return cls(HostReader(deps.proc_root))

    def read(self, at: Reading) -> HostSample:
        """One reading of /proc."""
        return self.reader.read(at.monotonic)


class ProcessSource(BlockingSource[ProcessSample]):
    """The backend's process tree; its listening ports tell the TCP source what to count."""

    name = "process"

    def __init__(self, reader: ProcessReader) -> None:
        self.reader = reader

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """Read when the daemon found the backend's process reader (it always builds one)."""
        del settings
        return cls(deps.process) if deps.process is not None else None

    def read(self, at: Reading) -> ProcessSample:
        """One reading of the process tree."""
        return self.reader.read(at.monotonic)

    def status(self, part: ProcessSample, status: SourceStatus) -> SourceStatus:
        """Measured, but perhaps not the server: up, with the reason shown wherever the sources are."""
        if part.degraded is None:
            return status
        return SourceStatus(name=status.name, up=True, error=part.degraded, duration_seconds=status.duration_seconds)


class TcpSource(BlockingSource[TcpSample]):
    """TCP sockets of the backend's listening ports and the extra ports, and its connections to upstreams."""

    name = "tcp"
    needs = ("process",)

    def __init__(
        self,
        counter: TcpCounter,
        *,
        extra_ports: frozenset[int] = frozenset(),
        upstream_ports: frozenset[int] = frozenset(),
        owns_counter: bool = False,
    ) -> None:
        self.counter = counter
        # whether the counter is this source's own to close (one the daemon was given is not)
        self.owns_counter = owns_counter
        self.extra_ports = extra_ports
        # services the backend connects to: their sockets are counted from the backend's (client) end
        self.upstream_ports = upstream_ports

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self:
        """Always read: the backend's port, and MediaMTX's as an upstream (unless it is the same port)."""
        backend_port = url_port(settings.backend.url)
        return cls(
            deps.tcp_counter or make_tcp_counter(deps.proc_root),
            extra_ports=frozenset({backend_port}),
            upstream_ports=frozenset({url_port(settings.backend.mediamtx_url)}) - {backend_port},
            owns_counter=deps.tcp_counter is None,
        )

    async def close(self) -> None:
        """Close the counter's netlink socket if this source made the counter (a count after it reopens one)."""
        close = getattr(self.counter, "close", None)
        if self.owns_counter and close is not None:
            close()

    def ports(self, at: Reading) -> frozenset[int]:
        """The local ports to count: the extra ones and those the backend's process listens on this sample."""
        ports = set(self.extra_ports)
        process = at.part(ProcessSource)
        if process is not None:
            ports.update(process.listen_ports)
        return frozenset(ports - self.upstream_ports)

    def read(self, at: Reading) -> TcpSample:
        """One count of the sockets."""
        ports = self.ports(at)
        upstream = self.upstream_ports
        counts = self.counter.count(ports, upstream) if upstream else self.counter.count(ports)
        return TcpSample(
            ports=tuple(sorted(ports | upstream)),
            by_state=MappingProxyType({str(k.value): v for k, v in counts.by_state.items()}),
            total=counts.total,
            method=str(counts.method),
        )


class ProbeSource(AsyncSource[ProbeSample]):
    """The backend's /health and hot endpoints over HTTP."""

    name = "probe"

    def __init__(self, backend: BackendClient, hot_endpoints: tuple[str, ...] = ()) -> None:
        self.backend = backend
        self.hot_endpoints = hot_endpoints

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """Read when the daemon has a backend client (it always builds one)."""
        return cls(deps.backend, settings.backend.hot_endpoints) if deps.backend is not None else None

    async def read(self, at: Reading) -> ProbeSample:
        """One round of probes."""
        del at
        return await self.backend.probe(self.hot_endpoints)

    def status(self, part: ProbeSample, status: SourceStatus) -> SourceStatus:
        """The probe ran, but the backend did not answer properly: the source is down, and says why."""
        if part.available:
            return status
        return SourceStatus(
            name=status.name,
            up=False,
            error=part.error or "backend unavailable",
            duration_seconds=status.duration_seconds,
        )


class CacheSource(AsyncSource[CacheStatsSample]):
    """The backend response cache's counters (an admin call: only with credentials)."""

    name = "cache"

    def __init__(self, backend: BackendClient, hot_calls: int = 0) -> None:
        self.backend = backend
        # the probe's calls per sample, which the request budget must leave room for
        self.hot_calls = hot_calls

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """Read when the backend client has admin credentials."""
        if deps.backend is None or not deps.backend.has_credentials:
            return None
        return cls(deps.backend, len(settings.backend.hot_endpoints))

    async def read(self, at: Reading) -> CacheStatsSample:
        """The counters, or the last reading standing in when the request budget is short."""
        del at
        return await self.backend.sampled_cache_stats(self.hot_calls)


class DatabaseSource(BlockingSource[DatabaseSample]):
    """The backend's SQLite file, its tables and viewer sessions (the ``sessions`` part)."""

    name = "database"

    def __init__(self, reader: DatabaseReader) -> None:
        self.reader = reader

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """Read when ``backend.database`` is set."""
        del deps
        b = settings.backend
        if b.database is None:
            return None
        connection = settings.strategies.connection
        return cls(
            DatabaseReader(
                b.database,
                timezone_offset_hours=b.timezone_offset_hours,
                stuck_session_seconds=connection.stuck_session_seconds,
                session_timeout_seconds=connection.session_timeout_seconds,
                tables=TABLES,
            )
        )

    def read(self, at: Reading) -> DatabaseSample:
        """One reading of the file."""
        return self.reader.read(at.monotonic)

    def extra_parts(self, part: DatabaseSample) -> MappingProxyType[str, object]:
        """The viewer sessions the same read counted."""
        del part
        sessions = self.reader.last_sessions
        return MappingProxyType({} if sessions is None else {"sessions": sessions})


class HlsSource(BlockingSource[HlsSample]):
    """MediaMTX's HLS directory (its segments' ages are wall-clock)."""

    name = "hls"

    def __init__(self, reader: HlsReader) -> None:
        self.reader = reader

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """Read when the daemon built the HLS reader (it always does)."""
        del settings
        return cls(deps.hls) if deps.hls is not None else None

    def read(self, at: Reading) -> HlsSample:
        """One scan of the directory."""
        return self.reader.read(at.wall)


class MediaMtxSource(AsyncSource[MediaMtxSample]):
    """MediaMTX's paths and readers from its control API."""

    name = "mediamtx"

    def __init__(self, client: MediaMtxClient) -> None:
        self.client = client

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """Read when the daemon built the MediaMTX client (it always does)."""
        del settings
        return cls(deps.mediamtx) if deps.mediamtx is not None else None

    async def read(self, at: Reading) -> MediaMtxSample:
        """One call of the control API."""
        del at
        return await self.client.read()


# every source the sampler knows, in the order /metrics and the docs list them
SOURCES: tuple[type[Source[Any]], ...] = (
    HostSource,
    ProcessSource,
    TcpSource,
    ProbeSource,
    CacheSource,
    DatabaseSource,
    HlsSource,
    MediaMtxSource,
)

SOURCE_NAMES: tuple[str, ...] = tuple(s.name for s in SOURCES)

# how many sources read in the sampler's pool at once at most: one thread each
BLOCKING_SOURCES = sum(1 for s in SOURCES if issubclass(s, BlockingSource))


def build_sources(settings: Settings, deps: SourceDeps, catalogue: tuple[type[Source[Any]], ...] = SOURCES) -> Sources:
    """Every source of ``catalogue`` the configuration asks for, built from it; a source that needs one the
    catalogue does not hold is refused (a misspelt name would never order anything)."""
    known = {source.name for source in catalogue}
    unknown = sorted(
        f"{source.name} needs {need}" for source in catalogue for need in source.needs if need not in known
    )
    if unknown:
        raise ValueError(f"sources need sources that do not exist: {', '.join(unknown)}")
    built = (source.from_config(settings, deps) for source in catalogue)
    return Sources(s for s in built if s is not None)
