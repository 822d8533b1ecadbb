"""Benchmark of TCP connection counting: sock_diag netlink vs /proc/net/tcp vs psutil.

Opens N idle loopback connections to a listener on 127.0.0.1 (the client ends live in a child process, so
each process needs only N file descriptors), times each way of counting the listener port's sockets by
state (median of --repeat runs), checks that the three agree exactly, and writes the figures as JSON.

Agreement is judged on counts taken back to back (netlink, /proc, psutil, netlink again), not on each method's
first timed call: those are seconds apart, and on a shared host the sockets matching the port can change in
between (another process's TIME_WAIT socket whose remote port is the listener's number expiring, say). When
the two netlink counts of the window differ the host changed during it and the window is taken again.

    python bench/bench_tcp.py [--sizes 100,1000,10000] [--repeat 7] [--out bench/results/tcp_counting.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metrics.tcp import NetlinkTcpCounter, ProcNetTcpCounter, TcpState  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "tcp_counting.json"
FD_MARGIN = 256
SETUP_TIMEOUT_S = 60.0
GOAL_RATIO = 1 / 20
AGREEMENT_ATTEMPTS = 5
# Abortive close (RST): both ends vanish at once instead of leaving N sockets in TIME_WAIT for a minute.
LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodResult:
    """One counting method's figures at one size."""

    median_s: float
    counts: dict[str, int]
    peak_alloc_bytes: int


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE to at least ``needed`` (the hard limit too when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            raise SystemExit(f"need {needed} file descriptors, hard limit is {hard}") from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run_child(host: str, port: int, count: int) -> None:
    """Child mode: open ``count`` connections, say 'ready', hold them until stdin closes."""
    raise_fd_limit(count + FD_MARGIN)
    clients = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection((host, port), timeout=SETUP_TIMEOUT_S))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.read()
    finally:
        for client in clients:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            client.close()


@contextmanager
def idle_connections(count: int) -> Iterator[int]:
    """Hold ``count`` established loopback connections open; yield the listener's port."""
    raise_fd_limit(count + FD_MARGIN)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    accepted: list[socket.socket] = []
    child: subprocess.Popen[str] | None = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(min(count, 4096))
        listener.settimeout(SETUP_TIMEOUT_S)
        port = int(listener.getsockname()[1])
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", f"127.0.0.1:{port}:{count}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        while len(accepted) < count:
            accepted.append(listener.accept()[0])
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], SETUP_TIMEOUT_S)
        if not ready or child.stdout.readline().strip() != "ready":
            raise RuntimeError("the client process did not get ready")
        yield port
    finally:
        for server_end in accepted:
            server_end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            server_end.close()
        listener.close()
        if child is not None:
            stop_child(child)


def stop_child(child: subprocess.Popen[str]) -> None:
    """Let the child close its ends and exit; kill it if it does not within a few seconds."""
    try:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    finally:
        if child.stdout is not None:
            child.stdout.close()


def psutil_counts(ports: frozenset[int]) -> dict[str, int]:
    """Count with psutil the way the daemon would have without metrics.tcp (the sockets owning the port)."""
    tally = Counter(
        conn.status.lower() for conn in psutil.net_connections(kind="tcp") if getattr(conn.laddr, "port", None) in ports
    )
    return {state.value: tally.get(state.value, 0) for state in TcpState}


def foreign_sockets(ports: frozenset[int]) -> dict[str, int]:
    """Count by state the matching sockets that no process of this benchmark holds (pid-less ones included)."""
    me = psutil.Process()
    ours = {me.pid} | {child.pid for child in me.children(recursive=True)}
    tally = Counter(
        conn.status.lower()
        for conn in psutil.net_connections(kind="tcp")
        if conn.pid not in ours and getattr(conn.laddr, "port", None) in ports
    )
    return dict(sorted(tally.items()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Agreement:
    """The three methods' counts taken back to back, and how many windows that needed."""

    counts: dict[str, dict[str, int]]
    attempts: int
    host_quiet: bool
    foreign: dict[str, int]

    @property
    def agree(self) -> bool:
        """Tell whether all three methods gave the same counts in the window."""
        first, *others = self.counts.values()
        return all(other == first for other in others)


def counts_at_one_moment(
    ports: frozenset[int], by_netlink: Callable[[], dict[str, int]], by_proc: Callable[[], dict[str, int]]
) -> Agreement:
    """Count with all three methods between two netlink counts; take the window again while the host changes."""
    counts: dict[str, dict[str, int]] = {}
    quiet = False
    attempts = 0
    while not quiet and attempts < AGREEMENT_ATTEMPTS:
        attempts += 1
        before = by_netlink()
        counts = {"netlink": before, "proc": by_proc(), "psutil": psutil_counts(ports)}
        quiet = by_netlink() == before
    return Agreement(counts=counts, attempts=attempts, host_quiet=quiet, foreign=foreign_sockets(ports))


def measure_interleaved(methods: dict[str, Callable[[], dict[str, int]]], repeat: int) -> dict[str, MethodResult]:
    """Time each method (median of ``repeat`` after one warm-up) and its peak Python allocation.

    The repetitions take turns (a, b, c, a, b, c, ...) so that every method meets the same background load
    on a shared machine; timing one method's runs all together would let a busy spell land on one of them.
    """
    counts = {name: count_once() for name, count_once in methods.items()}
    timings: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, count_once in methods.items():
            started = time.perf_counter()
            count_once()
            timings[name].append(time.perf_counter() - started)
    results = {}
    for name, count_once in methods.items():
        tracemalloc.start()
        try:
            count_once()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        results[name] = MethodResult(
            median_s=statistics.median(timings[name]), counts=counts[name], peak_alloc_bytes=peak
        )
    return results


@dataclass(frozen=True, slots=True, kw_only=True)
class SizeResult:
    """The three methods' figures at one size."""

    netlink: MethodResult
    proc: MethodResult
    psutil: MethodResult
    netlink_method: str
    agreement: Agreement

    @property
    def counts_agree(self) -> bool:
        """Tell whether all three methods gave the same counts when taken back to back."""
        return self.agreement.agree

    @property
    def ratio_netlink_vs_psutil(self) -> float:
        """Return netlink's time as a fraction of psutil's."""
        return self.netlink.median_s / self.psutil.median_s

    def as_json(self) -> dict[str, object]:
        """Return the JSON row for this size."""
        return {
            "netlink_s": self.netlink.median_s,
            "proc_s": self.proc.median_s,
            "psutil_s": self.psutil.median_s,
            "ratio_netlink_vs_psutil": self.ratio_netlink_vs_psutil,
            "ratio_proc_vs_psutil": self.proc.median_s / self.psutil.median_s,
            "counts_agree": self.counts_agree,
            "counts": self.psutil.counts,
            "agreement": {
                "counts": self.agreement.counts,
                "windows_taken": self.agreement.attempts,
                "host_quiet": self.agreement.host_quiet,
                "sockets_not_ours": self.agreement.foreign,
            },
            "netlink_method": self.netlink_method,
            "peak_alloc_bytes": {
                "netlink": self.netlink.peak_alloc_bytes,
                "proc": self.proc.peak_alloc_bytes,
                "psutil": self.psutil.peak_alloc_bytes,
            },
        }


def bench_size(size: int, repeat: int, netlink: NetlinkTcpCounter, proc: ProcNetTcpCounter) -> SizeResult:
    """Run all three methods against ``size`` idle connections."""
    with idle_connections(size) as port:
        ports = frozenset({port})

        def by_netlink() -> dict[str, int]:
            return {state.value: n for state, n in netlink.count(ports).by_state.items()}

        def by_proc() -> dict[str, int]:
            return {state.value: n for state, n in proc.count(ports).by_state.items()}

        timed = measure_interleaved(
            {"netlink": by_netlink, "proc": by_proc, "psutil": lambda: psutil_counts(ports)}, repeat
        )
        return SizeResult(
            netlink=timed["netlink"],
            proc=timed["proc"],
            psutil=timed["psutil"],
            netlink_method=f"{netlink.method.value}, {'one dump' if netlink.combined else 'a dump per family'}",
            agreement=counts_at_one_moment(ports, by_netlink, by_proc),
        )


def machine_info() -> dict[str, object]:
    """Describe the machine the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psutil": psutil.__version__,
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "tcp_sockets_before": sum(1 for _ in _table_lines()),
    }


def _table_lines() -> Iterator[bytes]:
    """Yield the socket lines of /proc/net/tcp and tcp6 (to note how busy the machine was)."""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}", "rb") as table:
                table.readline()
                yield from table
        except OSError:
            continue


def print_table(results: dict[int, SizeResult]) -> None:
    """Print the figures as a small table."""
    print(f"{'size':>7} {'netlink ms':>11} {'proc ms':>9} {'psutil ms':>10} {'nl/psutil':>10} {'agree':>6}")
    for size, row in results.items():
        print(
            f"{size:>7} {row.netlink.median_s * 1e3:>11.2f} {row.proc.median_s * 1e3:>9.2f}"
            f" {row.psutil.median_s * 1e3:>10.2f} {row.ratio_netlink_vs_psutil:>10.4f} {row.counts_agree!s:>6}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when the counts disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated connection counts")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per method (median reported)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON figures")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        host, port, count = args.child.rsplit(":", 2)
        run_child(host, int(port), int(count))
        return 0
    sizes = sorted({int(size) for size in args.sizes.split(",") if size.strip()})
    if not sizes or min(sizes) < 1 or args.repeat < 1:
        parser.error("sizes and --repeat must be positive")
    machine = machine_info()
    netlink = NetlinkTcpCounter()
    proc = ProcNetTcpCounter()
    started = time.perf_counter()
    try:
        results = {size: bench_size(size, args.repeat, netlink, proc) for size in sizes}
    finally:
        netlink.close()
    machine["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report: dict[str, object] = {
        "machine": machine,
        "repeat": args.repeat,
        "wall_s": time.perf_counter() - started,
        "goal": f"netlink_s <= psutil_s * {GOAL_RATIO:g} at the largest size",
        "goal_met": results[sizes[-1]].ratio_netlink_vs_psutil <= GOAL_RATIO,
        "results": {str(size): row.as_json() for size, row in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    print(f"goal met: {report['goal_met']}; written to {args.out}")
    return 0 if all(row.counts_agree for row in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
