"""What a sample source is: a name, how it reads (in a worker thread or on the event loop), how it is built from
the configuration, what it runs after, and the signals it provides.

The sampler knows sources only through this contract (metrics/sampler.py); the built-in ones and the list the
daemon reads are in metrics/sources.py. docs/EXTENDING.md ("A sample source") walks through adding one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from config.settings import Settings
from config.units import Unit
from metrics.backend import BackendClient
from metrics.hls import HlsReader
from metrics.mediamtx import MediaMtxClient
from metrics.process import ProcessReader
from metrics.snapshot import SourceStatus
from metrics.tcp import TcpCounter

T = TypeVar("T")
P = TypeVar("P")

_NONE: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal: its name, its readable label, its unit, who measures it, and its /metrics series."""

    name: str
    label: str
    unit: Unit
    # the sample source that measures it (a name of metrics/sources.py's list), or the strategy that derives it
    source: str
    # the series on /metrics that shows it (``name{label="value"}``), None where /metrics has none
    prometheus: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDeps:
    """What the daemon shares with its sources: the clients and readers its strategies use too, so both see the
    same objects (one HTTP session, one process lookup); a source that needs nothing shared builds its own."""

    proc_root: Path = Path("/proc")
    backend: BackendClient | None = None
    process: ProcessReader | None = None
    hls: HlsReader | None = None
    mediamtx: MediaMtxClient | None = None
    # counts TCP sockets; None: the best counter this host allows (metrics.tcp.make_tcp_counter)
    tcp_counter: TcpCounter | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """What one read is given: the sample's clocks and the parts already read in this sample (those of the
    sources it ``needs``, which ran in an earlier phase)."""

    monotonic: float
    wall: float
    parts: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def part(self, source: type[Source[P]]) -> P | None:
        """The part ``source`` read earlier in this sample; None when it is not configured or was down."""
        return cast("P | None", self.parts.get(source.name))


class Source(ABC, Generic[T]):
    """One sample source. Subclass ``BlockingSource`` or ``AsyncSource``, not this.

    Class attributes: ``name`` (its key in ``Snapshot.sources`` and ``Snapshot.parts``, the ``source`` label
    on /metrics), ``needs`` (names of sources whose parts it reads: it runs after them, in a later phase of
    the sample, whether they answered or not), ``signals`` (rows for the signal table, metrics/signals.py,
    for the numbers its part gives through ``signal_values``).
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    signals: ClassVar[tuple[Signal, ...]] = ()

    @classmethod
    @abstractmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self | None:
        """This source built from the configuration; None when the configuration leaves it out."""

    def status(self, part: T, status: SourceStatus) -> SourceStatus:
        """The status to show for a read that returned ``part``: up, as measured, unless the part says better."""
        del part
        return status

    def extra_parts(self, part: T) -> Mapping[str, object]:
        """Further parts a successful read yields, by name (the database's viewer sessions); none by default."""
        del part
        return _NONE

    async def close(self) -> None:
        """Release what this source opened itself when the daemon stops (what ``SourceDeps`` shared, the daemon
        closes); nothing by default."""


class BlockingSource(Source[T]):
    """A source whose read blocks (/proc, psutil, sqlite3, a directory walk): it runs in the sampler's pool."""

    @abstractmethod
    def read(self, at: Reading) -> T:
        """Read once; raise ``SamplingError`` with a short reason for an expected failure."""


class AsyncSource(Source[T]):
    """A source that reads on the event loop (HTTP through a shared pool)."""

    @abstractmethod
    async def read(self, at: Reading) -> T:
        """Read once; raise ``SamplingError`` with a short reason for an expected failure."""


class Sources:
    """The configured sources, grouped in phases: each phase starts once the one before has ended, and a source
    runs in the phase after the last of the sources it needs."""

    def __init__(self, sources: Iterable[Source[Any]]) -> None:
        self._all = tuple(sources)
        for source in self._all:
            if not isinstance(source, (BlockingSource, AsyncSource)):
                raise TypeError(f"source {source.name!r} is neither a BlockingSource nor an AsyncSource")
        twice = sorted(name for name, n in Counter(s.name for s in self._all).items() if n > 1)
        if twice:
            raise ValueError(f"sources named more than once: {', '.join(twice)}")
        self._by_name: Mapping[str, Source[Any]] = MappingProxyType({s.name: s for s in self._all})
        phase: dict[str, int] = {}

        def phase_of(source: Source[Any], path: tuple[str, ...]) -> int:
            if source.name in path:
                raise ValueError(f"sources need each other in a circle: {' -> '.join((*path, source.name))}")
            if source.name not in phase:
                needed = [self._by_name[n] for n in source.needs if n in self._by_name]
                phase[source.name] = 1 + max((phase_of(n, (*path, source.name)) for n in needed), default=-1)
            return phase[source.name]

        for source in self._all:
            phase_of(source, ())
        count = 1 + max(phase.values(), default=-1)
        self.phases: tuple[tuple[Source[Any], ...], ...] = tuple(
            tuple(s for s in self._all if phase[s.name] == n) for n in range(count)
        )

    def __iter__(self) -> Iterator[Source[Any]]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured sources' names, in list order."""
        return tuple(self._by_name)

    def find(self, source: type[P]) -> P | None:
        """The configured instance of ``source`` (typed); None when it is not configured."""
        found = self._by_name.get(getattr(source, "name", ""))
        return found if isinstance(found, source) else None
