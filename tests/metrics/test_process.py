"""Tests for metrics.process: finding the backend by pid file, port and name, and sampling its tree."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from metrics.errors import SamplingError
from metrics.process import (
    LAUNCHER_RECHECK_SECONDS,
    ProcessReader,
    ProcessSpec,
    count_fds,
    discover_pid,
    listeners,
    pid_owning_inodes,
)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
NO_SUCH_PID = 2**31 - 2

# A stand-in backend: listens on a loopback port, has one child, and exits when its stdin closes.
CHILD = """
import socket, subprocess, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
helper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(server.getsockname()[1], helper.pid, flush=True)
sys.stdin.read()
helper.stdin.close()
helper.wait()
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Child:
    """A running stand-in backend."""

    process: subprocess.Popen[bytes]
    port: int
    helper_pid: int
    marker: str

    @property
    def pid(self) -> int:
        """Its PID."""
        return self.process.pid


def first_line(process: subprocess.Popen[bytes]) -> str:
    """The child's first stdout line, waiting at most START_TIMEOUT_S."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT_S):
            raise TimeoutError("child did not report its port")
    return process.stdout.readline().decode().strip()


def stop(child: Child) -> None:
    """Close its stdin so it exits with its helper; kill both by PID if they do not."""
    process = child.process
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)
    if process.stdout is not None:
        process.stdout.close()
    try:
        psutil.Process(child.helper_pid).wait(timeout=STOP_TIMEOUT_S)
    except psutil.TimeoutExpired:
        os.kill(child.helper_pid, signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass


@pytest.fixture
def start_child() -> Iterator[Callable[[], Child]]:
    """Start stand-in backends; all are stopped at the end."""
    started: list[Child] = []

    def factory() -> Child:
        marker = f"cctv-backend-standin-{uuid.uuid4().hex}"
        process = subprocess.Popen([sys.executable, "-c", CHILD, marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            port, helper = (int(x) for x in first_line(process).split())
        except BaseException:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
            raise
        child = Child(process=process, port=port, helper_pid=helper, marker=marker)
        started.append(child)
        return child

    yield factory
    for child in started:
        stop(child)


@pytest.fixture
def child(start_child: Callable[[], Child]) -> Child:
    """One running stand-in backend."""
    return start_child()


def test_spec_parse_and_text() -> None:
    """A spec splits at the first colon only and prints back as it was given."""
    spec = ProcessSpec.parse("name:node .*server.js:3000")
    assert (spec.kind, spec.value) == ("name", "node .*server.js:3000")
    assert str(spec) == "name:node .*server.js:3000"
    assert ProcessSpec.parse("port:3000") == ProcessSpec(kind="port", value="3000")


def test_discover_by_pid_file(child: Child, tmp_path: Path) -> None:
    """pid:FILE reads the PID from the file."""
    pid_file = tmp_path / "backend.pid"
    pid_file.write_text(f"{child.pid}\n")
    assert discover_pid(ProcessSpec(kind="pid", value=str(pid_file))) == child.pid


def test_discover_by_port(child: Child) -> None:
    """port:N finds the process holding the listening socket."""
    assert discover_pid(ProcessSpec(kind="port", value=str(child.port))) == child.pid


def test_listening_socket_inode_belongs_to_the_child(child: Child) -> None:
    """The listening inode of the port is found in /proc/net/tcp and owned by the child."""
    inodes = set(listeners(child.port))
    assert len(inodes) == 1
    assert pid_owning_inodes(inodes) == child.pid
    assert pid_owning_inodes(set()) is None


def test_discover_by_name(child: Child) -> None:
    """name:PATTERN finds the process whose command line matches, not its helper or the caller."""
    assert discover_pid(ProcessSpec(kind="name", value=child.marker)) == child.pid


@pytest.mark.parametrize(
    "spec",
    [
        ProcessSpec(kind="name", value=f"no-such-process-{uuid.uuid4().hex}"),
        ProcessSpec(kind="unit", value=f"no-such-unit-{uuid.uuid4().hex}"),
        ProcessSpec(kind="bogus", value="x"),
    ],
)
def test_not_found_is_a_sampling_error(spec: ProcessSpec) -> None:
    """A spec that finds nothing raises SamplingError naming the spec."""
    with pytest.raises(SamplingError, match="not found by"):
        discover_pid(spec)


def test_port_without_listener_is_not_found(child: Child) -> None:
    """A port nobody listens on (the child's, once it has stopped) finds nothing."""
    port = child.port
    stop(child)
    with pytest.raises(SamplingError, match=f"not found by port:{port}"):
        discover_pid(ProcessSpec(kind="port", value=str(port)))


def test_pid_file_problems(tmp_path: Path) -> None:
    """A missing pid file, one without a number, and one naming a dead PID all raise SamplingError."""
    with pytest.raises(SamplingError, match="cannot read pid file"):
        discover_pid(ProcessSpec(kind="pid", value=str(tmp_path / "absent.pid")))
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("not a pid\n")
    with pytest.raises(SamplingError, match="not found"):
        discover_pid(ProcessSpec(kind="pid", value=str(garbage)))
    dead = tmp_path / "dead.pid"
    dead.write_text(str(NO_SUCH_PID))
    with pytest.raises(SamplingError, match="not found"):
        discover_pid(ProcessSpec(kind="pid", value=str(dead)))


def test_reader_samples_the_tree(child: Child) -> None:
    """The sample names the PID, the listening port, the child process and adds its memory to the tree."""
    reader = ProcessReader(ProcessSpec(kind="port", value=str(child.port)))
    found_before = reader.pid
    assert found_before is None
    sample = reader.read(10.0)
    own = psutil.Process(child.pid).memory_info().rss
    helper = psutil.Process(child.helper_pid).memory_info().rss
    assert sample.pid == child.pid == reader.pid
    assert sample.listen_ports == (child.port,) == reader.listen_ports
    assert sample.children == 1
    assert sample.rss_bytes == pytest.approx(own, rel=0.2)
    assert sample.tree_rss_bytes == pytest.approx(own + helper, rel=0.2)
    assert sample.tree_rss_bytes > sample.rss_bytes
    assert sample.open_files >= 4  # stdin, stdout, stderr and the listening socket
    assert sample.open_files == len(os.listdir(f"/proc/{child.pid}/fd"))
    assert sample.cpu_ratio == 0.0


def test_open_files_counts_every_descriptor_of_a_process_holding_many() -> None:
    """The stat()-based count equals the listing psutil does, for a process with a few thousand descriptors."""
    script = "import sys; f = [open('/dev/null') for _ in range(3000)]; print(1, flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == b"1"
            process = psutil.Process(holder.pid)
            assert count_fds(process) == process.num_fds() == len(os.listdir(f"/proc/{holder.pid}/fd"))
            assert count_fds(process) > 3000
        finally:
            holder.stdin.close()
            holder.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def spinner() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A process that burns CPU, and its marker; it is killed (by its handle) at the end."""
    marker = f"cctv-spinner-{uuid.uuid4().hex}"
    process = subprocess.Popen([sys.executable, "-c", "while True: pass", marker])
    yield process, marker
    process.kill()
    process.wait(timeout=STOP_TIMEOUT_S)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_cpu_ratio_is_cpu_seconds_per_second(spinner: tuple[subprocess.Popen[bytes], str]) -> None:
    """The second read divides the CPU seconds used since the first by the time between the reads."""
    process, marker = spinner
    reader = ProcessReader(ProcessSpec(kind="name", value=marker))
    reader.read(100.0)
    before = cpu_seconds(process.pid)
    deadline = time.monotonic() + START_TIMEOUT_S
    while cpu_seconds(process.pid) < before + 0.3:
        assert time.monotonic() < deadline, "the spinner got no CPU"
        threading.Event().wait(0.02)
    used = cpu_seconds(process.pid) - before
    sample = reader.read(102.0)
    assert sample.pid == process.pid
    # the two reads bracket our own measurement, give or take the few ms between them
    assert sample.cpu_ratio == pytest.approx(used / 2.0, abs=0.05)


def test_reader_rediscovers_after_a_restart(start_child: Callable[[], Child], tmp_path: Path) -> None:
    """When the backend exits the read fails; once a new one writes its PID the reader finds it."""
    pid_file = tmp_path / "backend.pid"
    first = start_child()
    pid_file.write_text(str(first.pid))
    reader = ProcessReader(ProcessSpec(kind="pid", value=str(pid_file)))
    assert reader.read(1.0).pid == first.pid
    stop(first)
    with pytest.raises(SamplingError):
        reader.read(2.0)
    second = start_child()
    pid_file.write_text(str(second.pid))
    sample = reader.read(3.0)
    assert sample.pid == second.pid
    assert sample.listen_ports == (second.port,)
    assert sample.cpu_ratio == 0.0


# pm2's way: a launcher, the server holding the port (argv names server.js), a sibling worker, an ffmpeg recorder.
PM2_LIKE = """
import socket, subprocess, sys
listen = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()"
idle = "import sys; sys.stdin.read()"
names = sys.argv[1:3]
server = subprocess.Popen([sys.executable, "-c", listen, names[0]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
worker = subprocess.Popen([sys.executable, "-c", idle, names[1]], stdin=subprocess.PIPE)
recorder = subprocess.Popen(["ffmpeg", "-c", idle, "-segment_time", "600"], executable=sys.executable, stdin=subprocess.PIPE)
print(server.stdout.readline().decode().strip(), server.pid, flush=True)
sys.stdin.read()
for p in (server, worker, recorder):
    p.stdin.close()
    p.wait()
"""

DISCOVER = """
import sys
from metrics.errors import SamplingError
from metrics.process import ProcessSpec, discover_pid
try:
    print(discover_pid(ProcessSpec(kind="port", value=sys.argv[1])))
except SamplingError as exc:
    print(exc)
"""


@pytest.mark.parametrize(("names", "found"), [(("server.js", "recorder.js"), "server"), (("app", "worker"), None)])
def test_port_discovery_of_another_users_backend_goes_by_the_sockets_owner(
    names: tuple[str, str], found: str | None
) -> None:
    """As another user (no access to the backend's /proc/PID/fd), port: discovery picks, among the processes of the
    listening socket's owner, the one that is no launcher and no ffmpeg, preferring server.js; when that leaves more
    than one it says which and asks for backend.process instead of guessing."""
    from tests.sandbox import Identity, sandbox

    backend, daemon = Identity(uid=61271, gid=61271), Identity(uid=61272, gid=61272)
    with sandbox("cctv-discover-") as box:
        launcher = subprocess.Popen(
            box.argv(backend, [box.python, "-c", PM2_LIKE, *names]),
            env=box.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
        )
        try:
            assert launcher.stdout is not None and launcher.stdin is not None
            port, server_pid = launcher.stdout.readline().decode().split()
            answer = box.python_code(daemon, DISCOVER, port).stdout.strip()
        finally:
            if launcher.stdin is not None:
                launcher.stdin.close()
            launcher.wait(timeout=STOP_TIMEOUT_S)
            if launcher.stdout is not None:
                launcher.stdout.close()
    if found == "server":
        assert answer == server_pid
    else:
        assert answer.startswith(f"backend process not found by port:{port}: its owner (uid {backend.uid})")
        assert "set backend.process" in answer and server_pid in answer


# A launcher: a shell that starts the server (a python listener) and waits for it, as a wrapper script or pm2 does.
LISTENER = (
    "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
    "print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


def stop_launcher(shell: subprocess.Popen[bytes]) -> None:
    """End the launcher: its stdin closed lets the listener go; what does not stop in time is killed, tree first."""
    assert shell.stdin is not None and shell.stdout is not None
    shell.stdin.close()
    try:
        shell.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for proc in psutil.Process(shell.pid).children(recursive=True):
            proc.kill()
        shell.kill()
        shell.wait(timeout=STOP_TIMEOUT_S)
    shell.stdout.close()


@pytest.fixture
def wrapper() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``sh -c 'python LISTENER; echo stopped'``: the shell stays (it has more to do), the listener is its child."""
    script = f'"{sys.executable}" -c "{LISTENER}"; echo stopped'
    shell = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(first_line(shell))
        yield shell, port
    finally:
        stop_launcher(shell)


def test_a_pid_file_naming_a_launcher_measures_the_listener_below_it(
    wrapper: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    """The pid file names the shell wrapper: the reader measures the process listening on the backend's port.

    It used to measure the wrapper itself: 1.6 MB resident, CPU 0, no listening port (so no connections counted).
    """
    shell, port = wrapper
    (server,) = psutil.Process(shell.pid).children()
    pid_file = tmp_path / "backend.pid"
    pid_file.write_text(f"{shell.pid}\n")
    reader = ProcessReader(ProcessSpec(kind="pid", value=str(pid_file)), port=port)
    sample = reader.read(1.0)
    assert sample.pid == server.pid == reader.pid
    assert sample.listen_ports == (port,)
    assert reader.launcher_pid == shell.pid
    assert sample.degraded is None
    assert sample.rss_bytes == pytest.approx(server.memory_info().rss, rel=0.2)
    # its start time, from which the uptime signal (and a restart) is seen
    assert sample.started_wall == pytest.approx(server.create_time())
    # the backend's port not known: any listener below the launcher is the server
    assert ProcessReader(ProcessSpec(kind="pid", value=str(pid_file))).read(1.0).pid == server.pid


def test_a_launcher_with_nothing_listening_below_it_is_measured_but_degraded(tmp_path: Path) -> None:
    """Nothing in the named process's tree listens on the port: it is measured, and the reason says why it may be
    the wrong process; a sample through the sampler shows the source up with that reason."""
    shell = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "import sys; sys.stdin.read()"; echo stopped'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        wait_for_child = time.monotonic() + START_TIMEOUT_S
        while not psutil.Process(shell.pid).children() and time.monotonic() < wait_for_child:
            time.sleep(0.05)
        pid_file = tmp_path / "backend.pid"
        pid_file.write_text(f"{shell.pid}\n")
        reader = ProcessReader(ProcessSpec(kind="pid", value=str(pid_file)), port=1)
        sample = reader.read(1.0)
        assert sample.pid == shell.pid
        assert sample.listen_ports == ()
        assert sample.degraded is not None
        assert f"process {shell.pid}" in sample.degraded and "listens on no port" in sample.degraded
        assert "port 1" in sample.degraded and "launcher" in sample.degraded
    finally:
        stop_launcher(shell)


def test_a_server_started_later_under_the_launcher_is_found_at_the_next_look(tmp_path: Path) -> None:
    """The launcher starts the server only after a while: degraded until then, the server once it listens.

    The reader looks again every LAUNCHER_RECHECK_SECONDS (of the sample clock it is given), not at every sample.
    """
    script = f'read go; "{sys.executable}" -c "{LISTENER}"; echo stopped'
    shell = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert shell.stdin is not None and shell.stdout is not None
    try:
        pid_file = tmp_path / "backend.pid"
        pid_file.write_text(f"{shell.pid}\n")
        reader = ProcessReader(ProcessSpec(kind="pid", value=str(pid_file)))
        first = reader.read(1.0)
        assert (first.pid, first.listen_ports) == (shell.pid, ())
        assert first.degraded is not None
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        port = int(first_line(shell))
        assert reader.read(1.0 + LAUNCHER_RECHECK_SECONDS / 2).pid == shell.pid
        found = reader.read(1.0 + LAUNCHER_RECHECK_SECONDS)
        (server,) = psutil.Process(shell.pid).children()
        assert (found.pid, found.listen_ports, found.degraded) == (server.pid, (port,), None)
        assert reader.launcher_pid == shell.pid
    finally:
        stop_launcher(shell)
