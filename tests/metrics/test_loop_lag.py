"""The sampler keeps its blocking work off the event loop: every blocking read runs in a worker thread.

How long the loop is held is measured by the benchmarks (``make bench``), never asserted here: these machines are
shared and noisy. This test checks the structural property that makes the lag small: which thread does the reading.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from metrics.backend import BackendClient, Credentials
from metrics.hls import HlsReader
from metrics.host import HostReader
from metrics.mediamtx import MediaMtxClient
from metrics.process import ProcessReader, ProcessSpec
from metrics.sampler import Sampler
from metrics.source import BlockingSource, Sources
from metrics.sources import (
    CacheSource,
    DatabaseSource,
    HlsSource,
    HostSource,
    MediaMtxSource,
    ProbeSource,
    ProcessSource,
    TcpSource,
)
from metrics.sqlite import DatabaseReader
from metrics.tables import BY_TABLE
from metrics.tcp import make_tcp_counter
from testbed.harness import TestbedProcess
from tests.harness import running_testbed

HOT = ("/api/cameras/active", "/api/areas/public")
SAMPLES = 8
STALE_FILES = 8000
STUCK_SESSIONS = 500
TICK_S = 0.005
TABLES = tuple(BY_TABLE[t] for t in ("viewer_sessions", "login_attempts", "token_blacklist"))


def sources_for(tb: TestbedProcess) -> Sources:
    """Every real reader, pointed at the testbed."""
    env = tb.env
    password = Path(env["CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE"]).read_text(encoding="utf-8").strip()
    backend_port = urlsplit(tb.url).port
    mediamtx_port = urlsplit(tb.mediamtx_url).port
    assert backend_port is not None and mediamtx_port is not None
    backend = BackendClient(
        tb.url,
        Credentials(username=env["CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME"], password=password, api_key=None),
        user_agent="cctv-optimizer-test/1",
        timeout_seconds=5.0,
        requests_per_minute=90,
    )
    return Sources(
        [
            HostSource(HostReader()),
            ProcessSource(ProcessReader(ProcessSpec.parse(env["CCTV_OPTIMIZER_BACKEND__PROCESS"]))),
            TcpSource(make_tcp_counter(), extra_ports=frozenset({backend_port, mediamtx_port})),
            ProbeSource(backend, HOT),
            CacheSource(backend, len(HOT)),
            DatabaseSource(DatabaseReader(tb.database, tables=TABLES, table_interval_seconds=0.0)),
            HlsSource(HlsReader(tb.hls_dir, 120.0)),
            MediaMtxSource(MediaMtxClient(tb.mediamtx_url, 5.0)),
        ]
    )


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    """Sleep in short ticks and record how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(TICK_S)
        lags.append(loop.time() - before - TICK_S)


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedProcess]:
    """A testbed with small HLS segments, so many files cost little disk."""
    with running_testbed(tmp_path / "testbed", "--segment-bytes", "2048") as process:
        yield process


def record_threads(sources: Sources, seen: dict[str, set[int]]) -> None:
    """Wrap each blocking source's read so that the threads it ran on are recorded under its name."""

    def wrap(name: str, owner: object, attr: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def recorded(*args: object, **kwargs: object) -> object:
            seen.setdefault(name, set()).add(threading.get_ident())
            return original(*args, **kwargs)

        setattr(owner, attr, recorded)

    for source in sources:
        if isinstance(source, BlockingSource):
            wrap(source.name, source, "read")


async def test_sampling_the_testbed_never_blocks_the_loop(testbed: TestbedProcess) -> None:
    """With many files and rows to read, every blocking source runs in a worker thread, never on the loop's."""
    # enough files and rows that a scan done on the loop would hold it well past the bound
    testbed.scenario("stale_segments", count=STALE_FILES, age_seconds=600)
    testbed.scenario("stuck_sessions", count=STUCK_SESSIONS, age_seconds=600)
    testbed.scenario("wal_growth", mb=4)
    sources = sources_for(testbed)
    seen: dict[str, set[int]] = {}
    record_threads(sources, seen)
    sampler = Sampler(sources, source_timeout_seconds=10.0)
    loop_thread = threading.get_ident()
    lags: list[float] = []
    stop = asyncio.Event()
    ticks = asyncio.create_task(ticker(stop, lags))
    try:
        await asyncio.sleep(TICK_S * 4)  # the ticker is running before sampling starts
        snapshots = [await sampler.sample() for _ in range(SAMPLES)]
    finally:
        stop.set()
        await ticks
        probe, mediamtx, tcp = sources.find(ProbeSource), sources.find(MediaMtxSource), sources.find(TcpSource)
        assert probe is not None and mediamtx is not None and tcp is not None
        await probe.backend.close()
        await mediamtx.client.close()
        close = getattr(tcp.counter, "close", None)
        if close is not None:
            close()
    last = snapshots[-1]
    assert {name: status.error for name, status in last.sources.items() if not status.up} == {}
    assert set(last.sources) == set(sources.names)
    assert last.hls is not None and last.hls.stale_files >= STALE_FILES
    assert last.sessions is not None and last.sessions.stuck >= STUCK_SESSIONS
    assert set(seen) == {s.name for s in sources if isinstance(s, BlockingSource)}
    assert len(seen) == 5  # host, process, tcp, database, hls
    assert {name: loop_thread in threads for name, threads in seen.items()} == dict.fromkeys(seen, False)
    assert len(lags) >= SAMPLES  # the loop kept turning while the sources were read
    print(f"loop lag while sampling (information only): max {max(lags) * 1000:.1f} ms over {len(lags)} ticks")
