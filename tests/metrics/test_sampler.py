"""Tests for metrics.sampler with fake readers: isolation of failures, timeouts, no overlapping reads."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest

from config.settings import Settings
from metrics.errors import SamplingError
from metrics.sampler import Sampler
from metrics.snapshot import (
    CacheStatsSample,
    DatabaseSample,
    HlsSample,
    HostSample,
    MediaMtxSample,
    ProbeSample,
    ProcessSample,
    SessionSample,
    Snapshot,
)
from metrics.source import SourceDeps, Sources
from metrics.sources import (
    SOURCE_NAMES,
    CacheSource,
    DatabaseSource,
    HlsSource,
    HostSource,
    MediaMtxSource,
    ProbeSource,
    ProcessSource,
    TcpSource,
    build_sources,
)
from metrics.tcp import TcpCounts, TcpState
from optimizer.executors import SAMPLER_THREADS
from tests.metrics.test_prometheus import full_snapshot

TIMEOUT_S = 0.2
GATE_LIMIT_S = 10.0  # a gated fake read never outlives this, even when a test fails
SETTLE_S = 5.0
HOT = ("/api/cameras/active", "/api/areas/public")
BACKEND_PORT = 3000
EXTRA_PORT = 9997

BASE = full_snapshot()
assert BASE.host and BASE.backend and BASE.database and BASE.hls and BASE.probe and BASE.cache and BASE.mediamtx
HOST: HostSample = BASE.host
PROCESS: ProcessSample = BASE.backend
DATABASE: DatabaseSample = BASE.database
HLS: HlsSample = BASE.hls
PROBE: ProbeSample = BASE.probe
CACHE: CacheStatsSample = BASE.cache
MEDIAMTX: MediaMtxSample = BASE.mediamtx
SESSIONS = SessionSample(active=5, stuck=2, oldest_heartbeat_age_seconds=700.0)


@dataclass
class FakeReader:
    """A blocking reader (run in a thread by the sampler): returns its value, fails, or waits on a gate."""

    value: Any
    error: BaseException | None = None
    gate: threading.Event | None = None
    calls: list[float] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    last_sessions: SessionSample | None = None
    threads: set[int] = field(default_factory=set)

    def read(self, now: float) -> Any:
        """Record the call (and its thread), wait on the gate if any, then answer."""
        self.calls.append(now)
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(GATE_LIMIT_S)
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class FakeBackend:
    """The backend client's probe and cache calls, as coroutines that answer, fail or wait."""

    has_credentials: bool = True
    probe_error: BaseException | None = None
    cache_error: BaseException | None = None
    probe_gate: asyncio.Event | None = None
    probe_calls: list[tuple[str, ...]] = field(default_factory=list)

    async def probe(self, hot: tuple[str, ...]) -> ProbeSample:
        """Answer the probe."""
        self.probe_calls.append(hot)
        if self.probe_gate is not None:
            await asyncio.wait_for(self.probe_gate.wait(), GATE_LIMIT_S)
        if self.probe_error is not None:
            raise self.probe_error
        return PROBE

    async def sampled_cache_stats(self, _hot_endpoints: int = 0) -> CacheStatsSample:
        """Answer the cache stats."""
        if self.cache_error is not None:
            raise self.cache_error
        return CACHE


@dataclass
class FakeMediaMtx:
    """MediaMTX's client: answers or fails."""

    error: BaseException | None = None

    async def read(self) -> MediaMtxSample:
        """Answer the paths count."""
        if self.error is not None:
            raise self.error
        return MEDIAMTX


@dataclass
class FakeTcp:
    """A TCP counter that records the ports it was asked about."""

    error: BaseException | None = None
    asked: list[frozenset[int]] = field(default_factory=list)

    def count(self, ports: frozenset[int], upstream: frozenset[int] = frozenset()) -> TcpCounts:
        """Three established sockets and one listener."""
        self.asked.append(ports)
        if self.error is not None:
            raise self.error
        by_state = dict.fromkeys(TcpState, 0)
        by_state[TcpState.ESTABLISHED] = 3
        by_state[TcpState.LISTEN] = 1
        return TcpCounts(by_state=MappingProxyType(by_state), total=3, method="proc")


@dataclass
class Fakes:
    """One of each fake source."""

    host: FakeReader = field(default_factory=lambda: FakeReader(HOST))
    process: FakeReader = field(default_factory=lambda: FakeReader(PROCESS))
    database: FakeReader = field(default_factory=lambda: FakeReader(DATABASE, last_sessions=SESSIONS))
    hls: FakeReader = field(default_factory=lambda: FakeReader(HLS))
    backend: FakeBackend = field(default_factory=FakeBackend)
    mediamtx: FakeMediaMtx = field(default_factory=FakeMediaMtx)
    tcp: FakeTcp = field(default_factory=FakeTcp)
    # the daemon's shape: a pool of its own for the blocking reads (None: asyncio's default threads)
    executor: ThreadPoolExecutor | None = None

    def sampler(self, *, clock: Any = time.monotonic, wall_clock: Any = time.time) -> Sampler:
        """A sampler over these fakes."""
        return Sampler(
            self.sources(), source_timeout_seconds=TIMEOUT_S, clock=clock, wall_clock=wall_clock, executor=self.executor
        )

    def sources(self) -> Sources:
        """Every built-in source, each over its fake."""
        return Sources(
            [
                HostSource(self.host),  # type: ignore[arg-type]
                ProcessSource(self.process),  # type: ignore[arg-type]
                TcpSource(self.tcp, extra_ports=frozenset({EXTRA_PORT})),
                ProbeSource(self.backend, HOT),  # type: ignore[arg-type]
                CacheSource(self.backend, len(HOT)),  # type: ignore[arg-type]
                DatabaseSource(self.database),  # type: ignore[arg-type]
                HlsSource(self.hls),  # type: ignore[arg-type]
                MediaMtxSource(self.mediamtx),  # type: ignore[arg-type]
            ]
        )

    def release(self) -> None:
        """Open every gate, so no fake read is left waiting."""
        for reader in (self.host, self.process, self.database, self.hls):
            if reader.gate is not None:
                reader.gate.set()
        if self.backend.probe_gate is not None:
            self.backend.probe_gate.set()


# the sources the fakes stand in for: every built-in one
FAKED = Fakes().sources().names
assert set(FAKED) <= set(SOURCE_NAMES)


@pytest.fixture(params=["default_threads", "own_pool"])
async def fakes(request: pytest.FixtureRequest) -> AsyncIterator[Fakes]:
    """Fresh fakes, sampled through asyncio's threads or a pool of their own as the daemon does; every gate is
    opened at the end, while the event loop still runs."""
    made = Fakes(executor=ThreadPoolExecutor(SAMPLER_THREADS) if request.param == "own_pool" else None)
    yield made
    made.release()
    if made.executor is not None:
        made.executor.shutdown(wait=False)


def parts(snap: Snapshot) -> dict[str, object]:
    """The snapshot's part for each source name."""
    return {name: snap.parts.get(name) for name in FAKED}


def down(snap: Snapshot) -> dict[str, str | None]:
    """Sources that are down, with their error."""
    return {name: status.error for name, status in snap.sources.items() if not status.up}


async def sample_until_up(sampler: Sampler, name: str) -> Snapshot:
    """Sample until ``name`` is up again (bounded), for after a stuck read has been released."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        snap = await sampler.sample()
        if snap.sources[name].up:
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still down: {snap.sources[name].error}")
        await asyncio.sleep(0.01)


async def test_every_source_answers(fakes: Fakes) -> None:
    """All sources up: each part is the reader's value and every status is up."""
    snap = await fakes.sampler().sample()
    assert down(snap) == {}
    assert set(snap.sources) == set(FAKED)
    assert snap.seq == 1
    assert (snap.host, snap.backend, snap.database, snap.hls) == (HOST, PROCESS, DATABASE, HLS)
    assert (snap.probe, snap.cache, snap.mediamtx) == (PROBE, CACHE, MEDIAMTX)
    assert snap.sessions == SESSIONS
    assert snap.tcp is not None
    assert (snap.tcp.get("established"), snap.tcp.total, snap.tcp.method) == (3, 3, "proc")
    assert snap.own is not None and snap.own.rss_bytes > 0
    assert fakes.backend.probe_calls == [HOT]


async def test_sequence_numbers_and_clocks(fakes: Fakes) -> None:
    """Snapshots are numbered; monotonic time goes to the readers, wall time to the HLS scan."""
    sampler = fakes.sampler(clock=lambda: 500.0, wall_clock=lambda: 1_700_000_000.0)
    first = await sampler.sample()
    second = await sampler.sample()
    assert (first.seq, second.seq) == (1, 2)
    assert (second.monotonic, second.wall_time, second.duration_seconds) == (500.0, 1_700_000_000.0, 0.0)
    assert fakes.host.calls == [500.0, 500.0]
    assert fakes.database.calls == [500.0, 500.0]
    assert fakes.hls.calls == [1_700_000_000.0, 1_700_000_000.0]


async def test_tcp_ports_are_the_backends_and_the_extra_ones(fakes: Fakes) -> None:
    """TCP is counted for the backend's listening ports plus the configured extra ports."""
    snap = await fakes.sampler().sample()
    assert fakes.tcp.asked == [frozenset({BACKEND_PORT, EXTRA_PORT})]
    assert snap.tcp is not None
    assert snap.tcp.ports == (BACKEND_PORT, EXTRA_PORT)


def break_source(fakes: Fakes, name: str, error: BaseException) -> None:
    """Make one source fail with ``error``."""
    if name == "probe":
        fakes.backend.probe_error = error
    elif name == "cache":
        fakes.backend.cache_error = error
    else:
        getattr(fakes, name).error = error


@pytest.mark.parametrize("name", FAKED)
async def test_each_source_fails_alone(fakes: Fakes, name: str) -> None:
    """A source raising SamplingError is down with its message, its part is None, the others are whole."""
    break_source(fakes, name, SamplingError(f"{name} is unhappy"))
    snap = await fakes.sampler().sample()
    assert down(snap) == {name: f"{name} is unhappy"}
    for other, part in parts(snap).items():
        assert (part is None) == (other == name), other


@pytest.mark.parametrize("name", ["host", "probe", "tcp"])
async def test_a_bug_in_a_reader_is_contained(fakes: Fakes, name: str) -> None:
    """An unexpected exception marks only that source down, naming the exception."""
    break_source(fakes, name, ZeroDivisionError("division by zero"))
    snap = await fakes.sampler().sample()
    assert down(snap) == {name: "internal error: ZeroDivisionError: division by zero"}


async def test_process_failure_leaves_only_extra_ports(fakes: Fakes) -> None:
    """Without the backend process, TCP is still counted on the extra ports."""
    fakes.process.error = SamplingError("backend process not found")
    await fakes.sampler().sample()
    assert fakes.tcp.asked == [frozenset({EXTRA_PORT})]


async def test_sessions_need_a_database_read(fakes: Fakes) -> None:
    """When the database read fails, the previous sessions are not passed off as current."""
    fakes.database.error = SamplingError("database is gone")
    snap = await fakes.sampler().sample()
    assert snap.sessions is None


async def test_unconfigured_sources_are_left_out(fakes: Fakes) -> None:
    """Sources left out have no status and no part; without credentials the cache is not built, so not asked."""
    settings = Settings()  # no database
    deps = SourceDeps(backend=FakeBackend(has_credentials=False), tcp_counter=fakes.tcp)  # type: ignore[arg-type]
    built = build_sources(settings, deps)
    assert {"host", "tcp", "probe"} <= set(built.names)
    assert "cache" not in built.names and "database" not in built.names
    sources = Sources([HostSource(fakes.host), *(s for s in built if s.name in {"tcp", "probe"})])  # type: ignore[arg-type]
    snap = await Sampler(sources, source_timeout_seconds=TIMEOUT_S).sample()
    assert set(snap.sources) == {"host", "probe", "tcp"}
    assert (snap.cache, snap.database, snap.hls, snap.mediamtx, snap.backend) == (None,) * 5


async def test_a_timeout_marks_only_that_source_down(fakes: Fakes) -> None:
    """A blocking read past the timeout is reported as timed out; the others answer and the sample ends."""
    fakes.host.gate = threading.Event()
    started = time.monotonic()
    snap = await fakes.sampler().sample()
    assert time.monotonic() - started < GATE_LIMIT_S / 2
    assert down(snap) == {"host": f"timed out after {TIMEOUT_S:g} s"}
    assert snap.sources["host"].duration_seconds >= TIMEOUT_S
    assert snap.database == DATABASE


@pytest.mark.parametrize("fakes", ["own_pool"], indirect=True)  # asyncio's default threads are not the sampler's
async def test_the_blocking_reads_of_a_sample_run_one_after_another_on_one_thread(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the daemon's pool, a sample's blocking reads are queued on one thread rather than one thread each."""
    monkeypatch.setattr("metrics.sampler.SPILL_AFTER_SECONDS", GATE_LIMIT_S)  # none is slow here
    readers = (fakes.host, fakes.process, fakes.database, fakes.hls)
    running: list[int] = [0, 0]  # now, most at once
    lock = threading.Lock()

    def lingering(read: Any) -> Any:
        def wrapped(now: float) -> Any:
            with lock:
                running[0] += 1
                running[1] = max(running)
            time.sleep(0.02)  # long enough for reads started together to overlap if they had threads of their own
            with lock:
                running[0] -= 1
            return read(now)

        return wrapped

    for reader in readers:
        reader.read = lingering(reader.read)  # type: ignore[method-assign]
    snap = await fakes.sampler().sample()
    assert down(snap) == {}
    assert running[1] == 1
    assert len(set().union(*(reader.threads for reader in readers))) == 1


async def test_a_stuck_read_holds_the_next_samples_reads_up_only_briefly(fakes: Fakes) -> None:
    """While a read outlives its sample, the reads queued after it in later samples still answer."""
    fakes.host.gate = threading.Event()
    sampler = fakes.sampler()
    await sampler.sample()
    for _ in range(3):
        snap = await sampler.sample()
        assert down(snap) == {"host": "previous read still running"}
        assert (snap.backend, snap.database, snap.hls) == (PROCESS, DATABASE, HLS)


async def test_a_still_running_read_is_not_started_twice(fakes: Fakes) -> None:
    """While a timed-out read is still running, later samples skip that source instead of stacking reads."""
    fakes.host.gate = threading.Event()
    sampler = fakes.sampler()
    await sampler.sample()
    snap = await sampler.sample()
    # only host is checked: on a busy machine another source of the cancelled sample may still be reading too
    assert down(snap).get("host") == "previous read still running"
    assert len(fakes.host.calls) == 1
    fakes.host.gate.set()
    recovered = await sample_until_up(sampler, "host")
    assert recovered.host == HOST
    assert len(fakes.host.calls) == 2


async def test_a_slow_async_source_times_out_alone(fakes: Fakes) -> None:
    """A hanging probe is timed out and skipped while it hangs; the cache from the same client answers."""
    fakes.backend.probe_gate = asyncio.Event()
    sampler = fakes.sampler()
    first = await sampler.sample()
    second = await sampler.sample()
    assert down(first) == {"probe": f"timed out after {TIMEOUT_S:g} s"}
    assert down(second) == {"probe": "previous read still running"}
    assert second.cache == CACHE
    assert len(fakes.backend.probe_calls) == 1
    fakes.backend.probe_gate.set()
    assert (await sample_until_up(sampler, "probe")).probe == PROBE


async def test_a_read_that_fails_after_its_timeout_is_not_logged_by_asyncio(fakes: Fakes) -> None:
    """A timed-out read that later raises has its error taken: no "Task exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        fakes.backend.probe_gate = asyncio.Event()
        fakes.backend.probe_error = SamplingError("login refused (500)")
        sampler = fakes.sampler()
        first = await sampler.sample()
        assert down(first) == {"probe": f"timed out after {TIMEOUT_S:g} s"}
        fakes.backend.probe_gate.set()
        for _ in range(20):  # let the late read end (with its error) before the source is healed
            await asyncio.sleep(0)
        fakes.backend.probe_error = None
        await sample_until_up(sampler, "probe")
        gc.collect()  # an exception nobody took is reported when its task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert unhandled == []


async def test_a_cancelled_sample_does_not_let_a_read_start_twice(fakes: Fakes) -> None:
    """Cancelling a sample mid-read keeps the source busy until the read really ends."""
    fakes.host.gate = threading.Event()
    sampler = fakes.sampler()
    task = asyncio.create_task(sampler.sample())
    assert await asyncio.to_thread(fakes.host.entered.wait, SETTLE_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = await sampler.sample()
    # only host is checked: on a busy machine another source of the cancelled sample may still be reading too
    assert down(snap).get("host") == "previous read still running"
    assert len(fakes.host.calls) == 1
    fakes.host.gate.set()
    await sample_until_up(sampler, "host")


async def test_a_reader_failing_as_it_is_called_is_retried_next_time(fakes: Fakes) -> None:
    """A reader that raises before returning an awaitable is down, and is tried again on the next sample."""
    calls: list[int] = []

    def broken() -> MediaMtxSample:
        calls.append(1)
        raise SamplingError("MediaMTX client is misconfigured")

    fakes.mediamtx.read = broken  # type: ignore[method-assign,assignment]
    sampler = fakes.sampler()
    first = await sampler.sample()
    second = await sampler.sample()
    assert down(first) == {"mediamtx": "MediaMTX client is misconfigured"}
    assert down(second) == {"mediamtx": "MediaMTX client is misconfigured"}
    assert len(calls) == 2


def test_a_standing_in_reading_is_held_not_measured_again() -> None:
    """An earlier cache reading or an untimed hot probe gives no new signal value, and keeps the window as it is."""
    from dataclasses import replace

    from metrics.window import Windows

    fresh = BASE
    held = replace(
        BASE,
        cache=replace(CACHE, age_seconds=4.0),
        probe=replace(PROBE, response_time_seconds=None, stale_reason="hot endpoints not timed: request budget spent"),
    )
    assert {"cache_entries", "cache_lookups", "cache_hit_rate", "response_time_seconds"} <= set(fresh.signals())
    assert fresh.held_signals() == frozenset()
    for name in ("cache_entries", "cache_lookups", "cache_hit_rate", "response_time_seconds"):
        assert name not in held.signals()
        assert name in held.held_signals()
    # what the engine does with each sample: a held signal keeps its earlier values, an absent one is dropped
    windows = Windows(10)
    windows.push(1.0, fresh.signals())
    windows.push(2.0, held.signals())
    windows.retain({*held.signals(), *held.held_signals()})
    assert windows.values("cache_entries") == [float(CACHE.size)]
    assert windows.values("response_time_seconds") == [PROBE.response_time_seconds]


async def test_a_degraded_process_reading_is_up_with_its_reason(fakes: Fakes) -> None:
    """A process that listens on nothing (a launcher, perhaps) is measured, and its status carries the reason."""
    from dataclasses import replace

    reason = "pid:/run/backend.pid names process 7 (sh start.sh), which listens on no port"
    fakes.process.value = replace(PROCESS, listen_ports=(), degraded=reason)
    snap = await fakes.sampler().sample()
    status = snap.sources["process"]
    assert (status.up, status.error) == (True, reason)
    assert snap.backend is not None and snap.backend.degraded == reason
