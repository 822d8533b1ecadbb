"""Benchmark 7a: how one full sample's cost grows with connections, HLS files and the backend database's size.

One dimension grows at a time; the others stay at their base:

- connections: 1,000, 10,000 and 30,000 idle loopback connections, held by child processes that each listen on
  their own port and connect to it (a process may hold at most ``PER_HOLDER`` connections, both ends, under
  the descriptor limit); the daemon counts those ports as the backend's. Reference:
  ``psutil.net_connections(kind="tcp")`` at the same moment.
- HLS files: 1,000, 20,000 and 100,000 files in 50 stream directories (segments named as MediaMTX names them,
  a playlist per stream naming its newest five), with 10,000 connections held.
- database: the stand-in backend's schema grown to 100 MB and then 1 GB (history and audit rows), with 10,000
  connections held; also the database source alone with its table statistics (read every 5 minutes).

The daemon runs in this process without its timed loops against the stand-in backend. Goals: a whole sample
at most 1/10 of psutil's time at the same connection count, at every size; and no growth with the database's
size. Everything is built under a temporary directory and deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import select
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench.common import (
    FD_MARGIN,
    daemon_env,
    fmt_ms,
    median,
    raise_fd_limit,
    ratio,
    row,
    running_testbed,
    scratch_dir,
    stop_children,
)
from metrics.hls import SETTLED_SECONDS
from metrics.tcp import TcpCounter, TcpCounts, make_tcp_counter

NAME = "scale"
TITLE = "7a. Scale: sample cost by size"
CONNECTION_SIZES = (1_000, 10_000, 30_000)
HLS_SIZES = (1_000, 20_000, 100_000)
DATABASE_SIZES_MB = (100, 1024)
BASE_CONNECTIONS = 10_000
BASE_HLS_FILES = 100
PER_HOLDER = 5_000
STREAMS = 50
GOAL_RATIO = 1 / 10
# A whole sample at the largest database may take at most this much longer than at the smallest.
GOAL_DB_GROWTH = 1.25
SETUP_TIMEOUT_S = 120.0
LINGER_RESET = struct.pack("ii", 1, 0)
ROW_PAD = 900
# more rows than any database size here holds (per table), so synthetic times stay in the past
MAX_ROWS = 2_000_000


# --- connections -------------------------------------------------------------------------------------------


def hold(count: int) -> None:
    """Child mode: listen on a free loopback port, connect ``count`` times to it, hold until stdin closes."""
    raise_fd_limit(2 * count + FD_MARGIN)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = int(listener.getsockname()[1])
    accepted: list[socket.socket] = []

    def accept_all() -> None:
        while len(accepted) < count:
            accepted.append(listener.accept()[0])

    acceptor = threading.Thread(target=accept_all, daemon=True)
    acceptor.start()
    clients = [socket.create_connection(("127.0.0.1", port), timeout=SETUP_TIMEOUT_S) for _ in range(count)]
    acceptor.join(SETUP_TIMEOUT_S)
    sys.stdout.write(f"ready {port}\n")
    sys.stdout.flush()
    sys.stdin.read()
    for sock in [*clients, *accepted]:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
    listener.close()


@contextlib.contextmanager
def held_connections(total: int) -> Iterator[frozenset[int]]:
    """Hold ``total`` loopback connections in child processes; yield their listening ports."""
    children: list[subprocess.Popen[str]] = []
    ports: set[int] = set()
    try:
        holders = math.ceil(total / PER_HOLDER)
        for index in range(holders):
            count = min(PER_HOLDER, total - index * PER_HOLDER)
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.scale", "--hold", str(count)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=Path(__file__).resolve().parents[1],
                )
            )
        for child in children:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], SETUP_TIMEOUT_S)
            line = child.stdout.readline().split() if ready else []
            if len(line) != 2 or line[0] != "ready":
                raise RuntimeError(f"a connection holder did not get ready within {SETUP_TIMEOUT_S:g} s")
            ports.add(int(line[1]))
        yield frozenset(ports)
    finally:
        stop_children(children)


class PortsAdded:
    """A TcpCounter that also counts a set of extra ports (the holders' listeners stand for the backend's)."""

    def __init__(self, inner: TcpCounter) -> None:
        self.inner = inner
        self.extra: frozenset[int] = frozenset()

    def count(self, ports: frozenset[int], upstream: frozenset[int] = frozenset()) -> TcpCounts:
        """Count ``ports`` and the extra ones (and ``upstream`` by remote port, as asked)."""
        return self.inner.count(ports | self.extra, upstream)


def time_psutil(repeat: int, cpu: list[float] | None = None) -> list[float]:
    """Time ``psutil.net_connections(kind="tcp")`` (the reference); its CPU times go to ``cpu`` when given."""
    timings = []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        psutil.net_connections(kind="tcp")
        timings.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.process_time() - cpu_started)
    return timings


# --- HLS files and the database ----------------------------------------------------------------------------


def build_hls(root: Path, files: int) -> None:
    """Fill ``root`` with ``files`` files in STREAMS stream directories (segments, a playlist each)."""
    per_stream = max(2, files // STREAMS)
    built = time.time()
    old = built - 3600
    for index in range(STREAMS):
        stream = root / f"cam{index}"
        stream.mkdir(parents=True, exist_ok=True)
        prefix = f"{index:012x}"
        names = [f"{prefix}_seg{n}.mp4" for n in range(per_stream - 1)]
        for name in names:
            path = stream / name
            path.write_bytes(b"\0" * 188)
            os.utime(path, (old, old))
        playlist = "#EXTM3U\n" + "".join(f"#EXTINF:1.0,\n{name}\n" for name in names[-5:])
        (stream / "index.m3u8").write_text(playlist, encoding="ascii")
        os.utime(stream / "index.m3u8", (old, old))
        os.utime(stream, (old, old))  # streams that stopped an hour ago, as stale segments pile up
    # a file's change time cannot be set back: wait until the playlists are as settled as a stopped stream's
    # (metrics/hls.py reads a playlist changed in the last SETTLED_SECONDS again at every sample)
    time.sleep(max(0.0, SETTLED_SECONDS - (time.time() - built)))


def grow_database(path: Path, target_bytes: int) -> float:
    """Add history and audit rows to ``path`` (WAL mode) until the file reaches ``target_bytes``; seconds taken."""
    started = time.monotonic()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        batch = 5_000
        # rows are appended oldest first, as the backend writes them: one second apart, ending now
        first = int(conn.execute("SELECT coalesce(max(id), 0) FROM viewer_session_history").fetchone()[0])
        while path.stat().st_size < target_bytes:
            ago = f"'-' || ({MAX_ROWS} - {first} - i) || ' seconds'"
            first += batch
            conn.execute("BEGIN")
            # the backend's schema (testbed/schema.py): a history table with an index on its time column and
            # an audit table without one, so both ways of finding a table's oldest row are exercised
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO viewer_session_history"
                " (camera_id, camera_name, ip_address, user_agent, device_type, started_at, ended_at,"
                " duration_seconds)"
                " SELECT 1, 'cam', '10.0.0.1', printf('%.*c', ?, 'x'), 'desktop',"
                f" datetime('now', {ago}, 'localtime'), datetime('now', {ago}, 'localtime'), 60 FROM n",
                (batch, ROW_PAD),
            )
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO playback_token_audit_logs (event_type, ip_address, detail_json, created_at)"
                f" SELECT 'seen', '10.0.0.1', printf('%.*c', ?, 'y'), datetime('now', {ago}) FROM n",
                (batch, ROW_PAD),
            )
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started


def copy_database(source: Path, target: Path) -> None:
    """Copy the stand-in backend's database (its schema and seed rows) with SQLite's backup."""
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


# --- the daemon --------------------------------------------------------------------------------------------


# A port nothing uses: counting it times the kernel's walk of its socket tables with no connection matched.
UNUSED_PORT = 1


async def sources_alone(sampler: Any, repeat: int) -> dict[str, dict[str, float]]:
    """Each source read alone, one after another: what a sample's fixed cost is made of, as the median wall
    time (``wall``) and this process's CPU time (``cpu``, which other processes on the machine do not inflate).

    In a sample they run at once, in threads that share the interpreter's lock, so their own durations there
    overlap and wait for each other; alone, each shows what it costs. ``tcp_unused_port`` is the TCP count for
    a port without connections: the part of ``tcp`` that does not grow with them.
    """
    from metrics.source import BlockingSource, Reading
    from metrics.sources import CacheSource, ProcessSource, TcpSource

    sources = sampler.sources
    parts: dict[str, object] = {}
    process = sources.find(ProcessSource)
    if process is not None:
        parts["process"] = process.read(Reading(monotonic=time.monotonic(), wall=time.time()))

    def reading() -> Reading:
        return Reading(monotonic=time.monotonic(), wall=time.time(), parts=parts)

    def blocking(fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return call

    def alone(source: Any) -> Any:
        if isinstance(source, BlockingSource):
            return blocking(lambda: source.read(reading()))
        return lambda: source.read(reading())

    readers: dict[str, Any] = {source.name: alone(source) for source in sources}
    cache = sources.find(CacheSource)
    if cache is not None:
        readers["cache"] = cache.backend.cache_stats  # a fresh reading each time, never the last one standing in
    tcp = sources.find(TcpSource)
    if tcp is not None:
        readers["tcp_unused_port"] = blocking(tcp.counter.count, frozenset({UNUSED_PORT}))
    out: dict[str, dict[str, float]] = {"wall": {}, "cpu": {}}
    for name, read in readers.items():
        walls, cpus = [], []
        for _ in range(repeat):
            started, cpu_started = time.perf_counter(), time.process_time()
            # a source down here is down in the samples too: its time still counts
            with contextlib.suppress(Exception):
                await read()
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu_started)
        out["wall"][name] = median(walls)
        out["cpu"][name] = median(cpus)
    return out


async def measure(  # noqa: PLR0913 -- a benchmark point is named by its parameters
    tb: Any,
    work: Path,
    env_overrides: Mapping[str, str],
    extra_ports: frozenset[int],
    samples: int,
    *,
    breakdown: bool = False,
) -> dict[str, Any]:
    """Start the daemon in-process with ``env_overrides``, take samples, return their timings (and, with
    ``breakdown``, each source's alone)."""
    from config.loader import load_settings
    from optimizer.app import Daemon
    from optimizer.logs import configure_logging

    configure_logging("warning")
    state = work / f"state-{time.monotonic_ns()}"
    env = daemon_env(tb.env, state, 0, CCTV_OPTIMIZER_BACKEND__REQUESTS_PER_MINUTE="90", **env_overrides)
    counter = PortsAdded(make_tcp_counter())
    counter.extra = extra_ports
    daemon = Daemon(load_settings(env), environ=env, autostart_loops=False, tcp_counter=counter)
    await daemon.start()
    try:
        started = time.perf_counter()
        first = await daemon.sampler.sample()  # reads the table statistics too, as every 5 minutes
        first_s = time.perf_counter() - started
        timings: list[float] = []
        sources: dict[str, list[float]] = {}
        snap = first
        cpu_before = time.process_time()
        for _ in range(samples):
            started = time.perf_counter()
            snap = await daemon.sampler.sample()
            timings.append(time.perf_counter() - started)
            for name, status in snap.sources.items():
                sources.setdefault(name, []).append(status.duration_seconds)
        cpu_per_sample = (time.process_time() - cpu_before) / samples
        alone = await sources_alone(daemon.sampler, samples) if breakdown else {}
        return {
            "sources_alone": alone,
            "sample_cpu_s": cpu_per_sample,
            "first_sample_s": first_s,
            "first_sources_s": {name: status.duration_seconds for name, status in first.sources.items()},
            "sample_s": timings,
            "sample_median_s": median(timings),
            "source_median_s": {name: median(values) for name, values in sorted(sources.items())},
            "sources_down": sorted(name for name, status in snap.sources.items() if not status.up),
            "tcp_total": snap.tcp.total if snap.tcp is not None else None,
            "hls_files": getattr(snap.hls, "files", None),
            "database_bytes": snap.database.file_bytes if snap.database is not None else None,
        }
    finally:
        await daemon.stop()


def database_source_with_tables(path: Path, repeat: int) -> list[float]:
    """Time the database source alone when it also reads its table statistics (a fresh reader each time)."""
    from metrics.sqlite import DatabaseReader
    from metrics.tables import TABLES

    timings = []
    for _ in range(repeat):
        reader = DatabaseReader(path, tables=TABLES)
        started = time.perf_counter()
        reader.read(time.monotonic())
        timings.append(time.perf_counter() - started)
    return timings


def one_point(  # noqa: PLR0913 -- a benchmark point is named by its parameters
    tb: Any,
    work: Path,
    connections: int,
    *,
    samples: int,
    repeat: int,
    env_overrides: Mapping[str, str],
    breakdown: bool = False,
) -> dict[str, Any]:
    """Hold ``connections``, time psutil and the daemon's sample; the figures of one size."""
    with held_connections(connections) as ports:
        psutil.net_connections(kind="tcp")
        psutil_cpu: list[float] = []
        before = time_psutil(repeat, psutil_cpu)
        measured = asyncio.run(measure(tb, work, env_overrides, ports, samples, breakdown=breakdown))
        after = time_psutil(repeat, psutil_cpu)
        sockets = len(psutil.net_connections(kind="tcp"))
        processes = len(psutil.pids())
    reference = median(before + after)
    return {
        "connections": connections,
        "tcp_sockets_on_host": sockets,
        # psutil maps sockets to processes through every process's descriptors: its time grows with these
        "processes_on_host": processes,
        "psutil_s": before + after,
        "psutil_median_s": reference,
        # CPU times: on a busy machine wall times are partly waiting for a core, for both
        "psutil_cpu_median_s": median(psutil_cpu),
        "ratio_sample_vs_psutil": ratio(measured["sample_median_s"], reference),
        **measured,
    }


def sample_row(label: str, point: dict[str, Any]) -> dict[str, Any]:
    """The summary row of one size: the sample's median against psutil at the same connection count."""
    r = point["ratio_sample_vs_psutil"]
    down = point["sources_down"]
    return row(
        label,
        fmt_ms(point["sample_median_s"]) + (f" ({', '.join(down)} down)" if down else ""),
        reference=f"psutil {fmt_ms(point['psutil_median_s'])} at {point['connections']:,} connections;"
        f" first sample {fmt_ms(point['first_sample_s'])}; CPU {fmt_ms(point['sample_cpu_s'])} a sample against"
        f" psutil's {fmt_ms(point['psutil_cpu_median_s'])}",
        ratio_text=f"1/{1 / r:.0f}" if r > 0 else "-",
        goal="<= 1/10 of psutil",
        met=r <= GOAL_RATIO,
    )


def breakdown_row(point: dict[str, Any]) -> dict[str, Any]:
    """What the smallest size's sample is made of: each source alone (CPU time), against the 1/10 budget."""
    alone: dict[str, float] = point["sources_alone"]["cpu"]
    parts = {name: seconds for name, seconds in alone.items() if name != "tcp_unused_port"}
    total = sum(parts.values())
    listed = ", ".join(
        f"{name} {fmt_ms(seconds)}"
        + (f" (a port without connections: {fmt_ms(alone['tcp_unused_port'])})" if name == "tcp" else "")
        for name, seconds in sorted(parts.items(), key=lambda item: -item[1])
    )
    return row(
        f"what one sample at {point['connections']:,} connections is made of (each source alone, CPU)",
        f"{fmt_ms(total)} in all",
        reference=f"{listed}; the whole sample {fmt_ms(point['sample_median_s'])}, CPU"
        f" {fmt_ms(point['sample_cpu_s'])} (sources at once, in threads); 1/10 of psutil is"
        f" {fmt_ms(point['psutil_median_s'] * GOAL_RATIO)} ({point['tcp_sockets_on_host']:,} TCP sockets and"
        f" {point['processes_on_host']:,} processes on the host, whose descriptors psutil reads)",
        met=None,
    )


def run(quick: bool) -> dict[str, Any]:
    """Run every size and return the figures and summary rows."""
    samples = 5 if quick else 9
    repeat = 2 if quick else 3
    connection_sizes = CONNECTION_SIZES[:2] if quick else CONNECTION_SIZES
    hls_sizes = HLS_SIZES[:2] if quick else HLS_SIZES
    db_sizes = DATABASE_SIZES_MB[:1] if quick else DATABASE_SIZES_MB
    raise_fd_limit(FD_MARGIN * 4)
    rows: list[dict[str, Any]] = []
    points: dict[str, dict[str, Any]] = {}
    # three places, none inside another (the daemon refuses an HLS directory inside the database's)
    with (
        scratch_dir(NAME) as work,
        scratch_dir(f"{NAME}-hls") as media,
        scratch_dir(f"{NAME}-db") as data,
        running_testbed(work / "testbed", "--segment-bytes", "2048") as tb,
    ):
        assert urlsplit(tb.url).port is not None
        base_hls = media / "hls-base"
        build_hls(base_hls, BASE_HLS_FILES)
        base = {"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(base_hls)}
        for size in connection_sizes:
            smallest = size == connection_sizes[0]
            point = one_point(tb, work, size, samples=samples, repeat=repeat, env_overrides=base, breakdown=smallest)
            points[f"connections_{size}"] = point
            rows.append(sample_row(f"one full sample, {size:,} connections", point))
            if smallest:
                rows.append(breakdown_row(point))
        for size in hls_sizes:
            hls = media / f"hls-{size}"
            started = time.monotonic()
            build_hls(hls, size)
            point = one_point(
                tb,
                work,
                BASE_CONNECTIONS,
                samples=samples,
                repeat=repeat,
                env_overrides={"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(hls)},
            )
            point["build_s"] = time.monotonic() - started
            points[f"hls_{size}"] = point
            rows.append(sample_row(f"one full sample, {size:,} HLS files, {BASE_CONNECTIONS:,} connections", point))
            with contextlib.suppress(OSError):
                subprocess.run(["rm", "-rf", str(hls)], check=False)
        database = data / "big.db"
        copy_database(tb.database, database)
        db_points: list[dict[str, Any]] = []
        for size_mb in db_sizes:
            build_s = grow_database(database, size_mb * 2**20)
            point = one_point(
                tb,
                work,
                BASE_CONNECTIONS,
                samples=samples,
                repeat=repeat,
                env_overrides={**base, "CCTV_OPTIMIZER_BACKEND__DATABASE": str(database)},
            )
            point["build_s"] = build_s
            point["database_source_with_tables_s"] = database_source_with_tables(database, repeat)
            points[f"database_{size_mb}MB"] = point
            db_points.append(point)
            label = f"{size_mb} MB" if size_mb < 1024 else f"{size_mb / 1024:g} GB"
            rows.append(sample_row(f"one full sample, {label} database, {BASE_CONNECTIONS:,} connections", point))
            tables = median(point["database_source_with_tables_s"])
            rows.append(
                row(
                    f"database source with table statistics (every 5 min), {label} database",
                    fmt_ms(tables),
                    reference=f"without: {fmt_ms(point['source_median_s'].get('database', 0.0))}",
                    goal="does not grow with the database",
                    met=None,
                )
            )
        if len(db_points) > 1:
            growth = db_points[-1]["sample_median_s"] / db_points[0]["sample_median_s"]
            tables_growth = median(db_points[-1]["database_source_with_tables_s"]) / median(
                db_points[0]["database_source_with_tables_s"]
            )
            cpu_growth = db_points[-1]["sample_cpu_s"] / db_points[0]["sample_cpu_s"]
            rows.append(
                row(
                    "sample growth from the smallest to the largest database",
                    f"{growth:.2f}x (table statistics {tables_growth:.2f}x)",
                    reference=f"{fmt_ms(db_points[0]['sample_median_s'])} -> {fmt_ms(db_points[-1]['sample_median_s'])};"
                    f" CPU a sample {fmt_ms(db_points[0]['sample_cpu_s'])} -> {fmt_ms(db_points[-1]['sample_cpu_s'])}"
                    f" ({cpu_growth:.2f}x)",
                    goal=f"<= {GOAL_DB_GROWTH}x",
                    met=growth <= GOAL_DB_GROWTH,
                )
            )
    return {
        "goal": "whole sample <= psutil.net_connections / 10 at every size; no growth with the database's size",
        "goal_met": all(r["met"] is not False for r in rows),
        "points": points,
        "rows": rows,
    }


def run_connections(size: int, samples: int = 9, repeat: int = 3) -> dict[str, Any]:
    """One size of the connection dimension only, with its breakdown: to see a change's effect in a minute."""
    raise_fd_limit(FD_MARGIN * 4)
    with (
        scratch_dir(NAME) as work,
        scratch_dir(f"{NAME}-hls") as media,
        running_testbed(work / "testbed", "--segment-bytes", "2048") as tb,
    ):
        base_hls = media / "hls-base"
        build_hls(base_hls, BASE_HLS_FILES)
        base = {"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(base_hls)}
        point = one_point(tb, work, size, samples=samples, repeat=repeat, env_overrides=base, breakdown=True)
    return {"point": point, "rows": [sample_row(f"one full sample, {size:,} connections", point), breakdown_row(point)]}


def main(argv: list[str] | None = None) -> int:
    """``--hold N``: the connection-holder child; ``--connections N``: that size alone, with its breakdown;
    otherwise run the benchmark quickly (``--full``: every size) and print its JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--hold":
        hold(int(args[1]))
        return 0
    import json

    if len(args) == 2 and args[0] == "--connections":
        print(json.dumps(run_connections(int(args[1]))["rows"], indent=2, default=str))
        return 0
    print(json.dumps(run(quick="--full" not in args), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
