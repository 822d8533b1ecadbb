"""Connection limits on a real daemon process with a low descriptor limit: trickling clients over the cap,
/health still answers, sampling goes on, and accept errors are one log line per interval, not a traceback each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from testbed.harness import TestbedProcess
from tests.harness import ROOT, daemon_env, daemon_process, running_daemon

NOFILE = 256
TRICKLERS = 400  # more than the daemon's whole descriptor limit
HEADER_TIMEOUT = "5"
# generous bounds: they only tell "it answered / it closed" from "it hung"
ANSWERED_WITHIN = 60.0


def address_of(base: str) -> tuple[str, int]:
    """The (host, port) the daemon's API listens on, from its base URL."""
    parts = urlsplit(base)
    return parts.hostname or "127.0.0.1", parts.port or 80


def health(base: str, timeout: float = 5.0) -> int:
    """GET /health's status, or 0 when the connection was refused, reset or timed out."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def metric(base: str, name: str) -> float:
    """One sample's value from /metrics (asked again while the connection is refused: the cap may be full)."""
    deadline = time.monotonic() + ANSWERED_WITHIN
    while True:
        try:
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
                text = resp.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def open_tricklers(host: str, port: int, count: int) -> list[socket.socket]:
    """Connections that send a request line and one header byte, and then nothing."""
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nX".encode())
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def test_trickling_clients_over_the_cap_cannot_starve_the_daemon(testbed: TestbedProcess, tmp_path: Path) -> None:
    """400 trickling connections against a daemon limited to 256 descriptors: at the cap the oldest trickler
    makes room for a newer connection, so /health answers at the first try while they hold on; the rest are
    closed on the header timeout, and samples keep coming without a crash."""
    env = {
        **os.environ,
        **daemon_env(
            testbed,
            tmp_path / "s",
            ENABLE_PERFORMANCE_OPTIMIZATION="false",
            CCTV_OPTIMIZER_API__MAX_CONNECTIONS="100000",
            CCTV_OPTIMIZER_API__RESERVED_DESCRIPTORS="64",
            CCTV_OPTIMIZER_API__HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT,
        ),
        "PYTHONPATH": str(ROOT),
    }
    command = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, "-m", "optimizer.cli", "run"]
    with daemon_process(env, command=command) as daemon:
        started = daemon.wait_event("daemon_started")
        base = started["api"]
        cap = started["api_connection_cap"]
        assert 0 < cap <= NOFILE - 64
        host, port = address_of(base)
        tricklers = open_tricklers(host, port, TRICKLERS)
        try:
            assert len(tricklers) > cap
            assert health(base, timeout=ANSWERED_WITHIN) == 200, "/health was not answered while the tricklers held on"
            assert metric(base, "cctv_optimizer_api_connections_evicted_total") >= 1
            assert metric(base, "cctv_optimizer_api_connections") <= cap
            # the tricklers left are closed on the header timeout
            deadline = time.monotonic() + ANSWERED_WITHIN
            while metric(base, "cctv_optimizer_api_header_timeouts_total") < 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert metric(base, "cctv_optimizer_api_header_timeouts_total") >= 1
        finally:
            for s in tricklers:
                s.close()
        # every connection that ended was counted out: only the one asking is left
        deadline = time.monotonic() + ANSWERED_WITHIN
        while metric(base, "cctv_optimizer_api_connections") > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert metric(base, "cctv_optimizer_api_connections") == 1
        # the decision loop and the sampler were fresh all along: still healthy now, nothing crashed
        assert health(base) == 200
        assert daemon.stop() == 0
    events = [e.get("event") for e in (json.loads(line) for line in daemon.raw if line.startswith("{"))]
    assert "sample_crashed" not in events, [line for line in daemon.raw if "sample_crashed" in line]
    assert "api_handler_crashed" not in events
    cap_lines = events.count("api_connection_cap_reached")
    assert 1 <= cap_lines <= 1 + int(ANSWERED_WITHIN / 10) + 1
    assert not [line for line in daemon.raw if "Traceback" in line]


ACCEPT_SERVER = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    from optimizer.connections import AcceptErrorLog
    from optimizer.logs import configure_logging

    async def main():
        configure_logging("info", json=True)
        loop = asyncio.get_running_loop()
        AcceptErrorLog(interval=float(sys.argv[1])).install(loop)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        hoard = []
        try:
            while True:
                hoard.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(float(sys.argv[2]))
        print("done", flush=True)

    asyncio.run(main())
    """
)


def test_accept_errors_are_one_line_per_interval_with_a_count(tmp_path: Path) -> None:
    """A process out of descriptors fails every accept: one log line per interval with a count, no tracebacks."""
    script = tmp_path / "accept_server.py"
    script.write_text(ACCEPT_SERVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["prlimit", "--nofile=64:64", sys.executable, str(script), "2", "5"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        clients = []
        for _ in range(50):
            with contextlib.suppress(OSError):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        out, _ = proc.communicate(timeout=60)
        for c in clients:
            c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [e for e in lines if e.get("event") == "api_accept_failed"]
    assert 1 <= len(failed) <= 4, out[-2000:]
    assert failed[0]["count"] >= 1 and "open files" in failed[0]["error"]
    assert "Traceback" not in out


async def test_idle_keep_alive_connections_at_the_cap_make_room_for_a_new_one(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Every slot held by a keep-alive connection that asked once and then sits idle: a new client is served,
    in the place of the oldest idle one."""
    slots = 20
    env = daemon_env(testbed, tmp_path / "s", ENABLE_PERFORMANCE_OPTIMIZATION="false")
    env["CCTV_OPTIMIZER_API__MAX_CONNECTIONS"] = str(slots)
    async with running_daemon(env) as daemon:
        assert daemon.connection_limiter.cap == slots
        port = daemon.api_port
        request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        idle = []
        for _ in range(slots):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), ANSWERED_WITHIN)).startswith(b"HTTP/1.1 200")
            idle.append((reader, writer))
        try:
            assert daemon.connection_limiter.current == slots
            status = await asyncio.to_thread(health, f"http://127.0.0.1:{port}", ANSWERED_WITHIN)
            assert status == 200
            assert daemon.connection_limiter.evicted_total >= 1
            assert daemon.connection_limiter.rejected_total == 0
        finally:
            for _, writer in idle:
                writer.close()


def wait_connected(sock: socket.socket, within: float) -> bool:
    """Whether a non-blocking connect completed (the kernel finished the handshake) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        _, writable, _ = select.select([], [sock], [], 0.1)
        if writable:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return False


def test_health_is_answered_after_a_burst_of_connections_larger_than_the_accept_queue(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A flood of idle connections arriving while the daemon cannot accept (stopped here; busy in life) fills
    the kernel's listen queue; a full queue drops the next connection's handshake, so a health check arriving
    then times out on connect however fast the daemon catches up. The listen queue holds such a burst: the
    health check's connection completes at once, and once the daemon runs again it is answered.

    The cap (1,024 by default) stays above the burst: which connection the cap closes for a newer one depends
    on the order the kernel completed the handshakes in, which a loaded machine can change."""
    burst = 400  # more than the accept burst of 128 the listen queue used to be
    env = daemon_env(
        testbed,
        tmp_path / "s",
        ENABLE_PERFORMANCE_OPTIMIZATION="false",
        CCTV_OPTIMIZER_API__HEADER_TIMEOUT_SECONDS="60",
    )
    with daemon_process(env) as daemon:
        base = daemon.wait_event("daemon_started")["api"]
        address = address_of(base)
        idle: list[socket.socket] = []
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(burst):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(address)
                idle.append(s)
            probe.setblocking(False)
            probe.connect_ex(address)
            # generous: the kernel completes a loopback handshake at once unless it drops it
            connected = wait_connected(probe, 5.0)
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        try:
            assert connected, "the listen queue was full: the health check's handshake was dropped"
            probe.setblocking(True)
            probe.settimeout(ANSWERED_WITHIN)
            probe.sendall(
                f"GET /health HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := probe.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert metric(base, "cctv_optimizer_api_connections") >= burst
        finally:
            probe.close()
            for s in idle:
                s.close()
        assert daemon.stop() == 0
    assert not [line for line in daemon.raw if "Traceback" in line]


def status_of(base: str, path: str) -> int:
    """GET ``path``'s status, or 0 when the connection was refused, reset or timed out."""
    try:
        with urllib.request.urlopen(f"{base}{path}", timeout=ANSWERED_WITHIN) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def test_health_is_answered_when_every_slot_is_busy_with_a_request(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """Every slot held by a request in progress (a write whose body never comes): nothing can make room, so a
    new connection is refused, except a health check, which a small reserve beyond the cap answers (and
    closes). Any other request on that reserve is refused."""
    slots = 20
    env = daemon_env(testbed, tmp_path / "s", ENABLE_PERFORMANCE_OPTIMIZATION="false")
    env["CCTV_OPTIMIZER_API__MAX_CONNECTIONS"] = str(slots)
    async with running_daemon(env, api_body_timeout=ANSWERED_WITHIN * 2) as daemon:
        limiter = daemon.connection_limiter
        port = daemon.api_port
        base = f"http://127.0.0.1:{port}"
        stalled = (
            f"POST /performance-optimize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {daemon.token}"
            "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ).encode()
        busy = []
        for _ in range(slots):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(stalled)
            await writer.drain()
            busy.append(writer)
        try:
            for _ in range(int(ANSWERED_WITHIN / 0.05)):  # every request read, none finished
                if limiter.current == slots and not limiter.waiting:
                    break
                await asyncio.sleep(0.05)
            assert limiter.current == slots and not limiter.waiting
            assert await asyncio.to_thread(status_of, base, "/strategies") == 0, "over the cap, not refused"
            assert limiter.rejected_total >= 1
            assert await asyncio.to_thread(status_of, base, "/health") == 200
            assert await asyncio.to_thread(status_of, base, "/health") == 200, "the reserve was not given back"
            assert limiter.current == slots
        finally:
            for writer in busy:
                writer.close()


async def test_a_connection_that_sends_nothing_costs_no_request_handler(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A flood of idle connections is taken in cheaply: the web server's handler (its task and timers) is made
    only when a connection's first bytes come, so silent ones cost an accept and a timer each, and the daemon
    gets through them, and to what is queued behind them, sooner. Once a request comes it is served."""
    silent = 50
    env = daemon_env(testbed, tmp_path / "s", ENABLE_PERFORMANCE_OPTIMIZATION="false")
    async with running_daemon(env) as daemon:
        limiter = daemon.connection_limiter
        server = daemon._runner.server if daemon._runner is not None else None
        assert server is not None
        port = daemon.api_port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(silent)]
        try:
            for _ in range(int(ANSWERED_WITHIN / 0.05)):  # every one accepted
                if limiter.current >= silent:
                    break
                await asyncio.sleep(0.05)
            assert limiter.current == silent
            assert len(server.connections) == 0, "silent connections were given request handlers"
            reader, writer = idle[0]
            writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), ANSWERED_WITHIN)).startswith(b"HTTP/1.1 200")
            assert len(server.connections) == 1
        finally:
            for _, writer in idle:
                writer.close()


def test_in_one_accept_burst_over_the_cap_the_newest_connections_are_kept(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A burst the loop accepts in one go (up to 128), larger than the cap: each new connection takes the place
    of the oldest one still silent, those of the same burst included, so the newest stay, a health check that
    came last among them too. (The ones of the same burst used to be out of reach: the rest were reset.)"""
    slots = 20
    burst = 100  # with the health check, within one accept burst
    env = daemon_env(
        testbed,
        tmp_path / "s",
        ENABLE_PERFORMANCE_OPTIMIZATION="false",
        CCTV_OPTIMIZER_API__MAX_CONNECTIONS=str(slots),
        CCTV_OPTIMIZER_API__HEADER_TIMEOUT_SECONDS="60",
    )
    with daemon_process(env) as daemon:
        base = daemon.wait_event("daemon_started")["api"]
        address = address_of(base)
        idle: list[socket.socket] = []
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(burst):
                idle.append(socket.create_connection(address, timeout=5))
            probe = socket.create_connection(address, timeout=5)
            probe.sendall(
                f"GET /health HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\nConnection: close\r\n\r\n".encode()
            )
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        try:
            probe.settimeout(ANSWERED_WITHIN)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := probe.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), f"the health check was not answered: {answer[:200]!r}"
            assert metric(base, "cctv_optimizer_api_connections_rejected_total") == 0
        finally:
            probe.close()
            for s in idle:
                s.close()
        assert daemon.stop() == 0
