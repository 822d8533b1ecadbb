"""Find the backend process (pid file, systemd unit, listening port or name) and sample its tree.

``port:N`` (the default, with the port of the backend's URL) finds the process holding the listening socket
through /proc/PID/fd; when that socket belongs to another user, whose descriptors the unit's user cannot read,
it goes by the socket's owner instead (``pid_of_listener_owner``).

Discovery is the expensive part (it may scan /proc), so it is done once and repeated only when the
process is gone. The listening ports are read at discovery too: they do not change while it runs.
The tree is walked through the kernel's per-thread ``children`` lists where the kernel has them, which
reads a few small files instead of every process's stat (what psutil's ``children()`` does).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from metrics.errors import SamplingError
from metrics.memory import read_small, rss_bytes
from metrics.snapshot import ProcessSample

_LISTEN = "0A"
LAUNCHER_RECHECK_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    """How to find the backend: ``pid:FILE``, ``unit:NAME``, ``port:N`` or ``name:PATTERN``."""

    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> ProcessSpec:
        """Parse the configured text (already validated by config)."""
        kind, _, value = text.partition(":")
        return cls(kind=kind, value=value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def count_fds(process: psutil.Process) -> int:
    """Open file descriptors of ``process``; -1 when they cannot be read.

    Since Linux 6.2 the size of /proc/PID/fd is the number of open descriptors, one stat() instead of listing
    every entry (psutil lists them: about 30 ms for a backend holding 10,000 sockets). Older kernels report 0
    there, and then the listing is used.
    """
    try:
        size = os.stat(f"/proc/{process.pid}/fd").st_size
    except OSError:
        size = 0
    if size > 0:
        return size
    try:
        return process.num_fds()
    except psutil.AccessDenied:
        return -1


def listeners(port: int, proc_root: Path = Path("/proc")) -> dict[str, int]:
    """Socket inodes listening on ``port``, with the uid that owns each (from /proc/net/tcp and tcp6)."""
    found: dict[str, int] = {}
    want = f"{port:04X}"
    for name in ("tcp", "tcp6"):
        try:
            with (proc_root / "net" / name).open(encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == _LISTEN and fields[1].rsplit(":", 1)[1] == want:
                        found[fields[9]] = int(fields[7])
        except OSError:
            continue
    return found


def pid_owning_inodes(inodes: set[str], proc_root: Path = Path("/proc")) -> int | None:
    """The lowest PID holding one of the socket inodes (a scan of /proc/*/fd; done at discovery only)."""
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in sorted((e for e in os.listdir(proc_root) if e.isdigit()), key=int):
        fd_dir = proc_root / entry / "fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(fd_dir / fd) in targets:
                        return int(entry)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _recorder_like(cmdline: list[str]) -> bool:
    """ffmpeg runs (recorders, thumbnails): processes of the backend's user that never hold its port."""
    return bool(cmdline) and (os.path.basename(cmdline[0]) == "ffmpeg" or "-segment_time" in cmdline)


def pid_of_listener_owner(port: int, proc_root: Path = Path("/proc")) -> int:
    """The backend among the processes of the user owning the listening socket, for when its fds are unreadable.

    Another user's /proc/PID/fd cannot be read without privileges the unit does not grant, but the listening
    socket's owner can (/proc/net/tcp). Among that user's processes, ffmpeg runs are left out, and so is any
    process with another candidate below it (pm2's daemon, a shell wrapper: launchers, not the listener). One
    left is the backend; of several, the one running ``server.js`` (the backend's entry point) is.
    """
    owners = set(listeners(port, proc_root).values())
    if not owners:
        raise SamplingError(f"backend process not found by port:{port}: nothing listens on it")
    if len(owners) != 1:
        raise SamplingError(f"backend process not found by port:{port}: several users listen on it")
    uid = owners.pop()
    procs: dict[int, tuple[int, list[str]]] = {}
    for proc in psutil.process_iter(["uids", "ppid", "cmdline"]):
        uids = proc.info.get("uids")
        if proc.pid != os.getpid() and uids is not None and uids.real == uid:
            cmdline = list(proc.info.get("cmdline") or [])
            if cmdline and not _recorder_like(cmdline):
                procs[proc.pid] = (int(proc.info.get("ppid") or 0), cmdline)
    launchers: set[int] = set()
    for pid in procs:
        parent = procs[pid][0]
        while parent in procs and parent not in launchers:
            launchers.add(parent)
            parent = procs[parent][0]
    candidates = sorted(set(procs) - launchers)
    if len(candidates) > 1:
        servers = [pid for pid in candidates if any(os.path.basename(a) == "server.js" for a in procs[pid][1])]
        candidates = servers if len(servers) == 1 else candidates
    if len(candidates) != 1:
        listed = ", ".join(f"{pid} ({' '.join(procs[pid][1])[:60]})" for pid in candidates) or "none"
        raise SamplingError(
            f"backend process not found by port:{port}: its owner (uid {uid}) is another user, whose open files "
            f"the daemon cannot read, and these of its processes could be it: {listed}; set backend.process "
            "(pid:FILE, unit:NAME or name:PATTERN)"
        )
    return candidates[0]


def _listen_ports(process: psutil.Process) -> list[int] | None:
    """The TCP ports ``process`` listens on; None when its sockets cannot be read (another user's process)."""
    try:
        return sorted(
            {c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr}
        )
    except psutil.Error:
        return None


def _unit_pid(unit: str) -> int | None:
    """The main PID of a systemd unit, from systemctl."""
    name = unit if "." in unit else f"{unit}.service"
    try:
        out = subprocess.run(
            ["systemctl", "show", "--property=MainPID", "--value", name],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def discover_pid(spec: ProcessSpec, proc_root: Path = Path("/proc")) -> int:
    """Find the backend's PID by its spec, or raise SamplingError saying what was tried."""
    pid: int | None = None
    if spec.kind == "pid":
        try:
            text = Path(spec.value).read_text(encoding="ascii").strip()
        except OSError as exc:
            raise SamplingError(f"cannot read pid file {spec.value}: {exc.strerror}") from None
        pid = int(text) if text.isdigit() else None
    elif spec.kind == "unit":
        pid = _unit_pid(spec.value)
    elif spec.kind == "port":
        port = int(spec.value)
        found = listeners(port, proc_root)
        pid = pid_owning_inodes(set(found), proc_root)
        if pid is None and found and os.geteuid() not in set(found.values()) and os.geteuid() != 0:
            # the listener is another user's, so its /proc/PID/fd is not ours to read: go by the socket's owner
            pid = pid_of_listener_owner(port, proc_root)
    elif spec.kind == "name":
        pattern = re.compile(spec.value)
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if cmdline and pattern.search(cmdline) and proc.pid != os.getpid():
                pid = proc.pid
                break
    if pid is None or not psutil.pid_exists(pid):
        raise SamplingError(f"backend process not found by {spec}")
    return pid


class ProcessReader:
    """Samples the backend process tree; rediscovers the process when it is gone."""

    name = "process"

    def __init__(self, spec: ProcessSpec, proc_root: Path = Path("/proc"), *, port: int | None = None) -> None:
        self._spec = spec
        self._proc_root = proc_root
        # the backend's own port (from its URL): what the server listens on, and a launcher does not
        self._port = port
        self._launcher: int | None = None
        # why the process measured may not be the server (it listens on nothing, nor does anything below it)
        self._degraded: str | None = None
        self._degraded_checked = 0.0
        self._process: psutil.Process | None = None
        self._listen_ports: tuple[int, ...] = ()
        self._last: tuple[float, float] | None = None
        own = Path("/proc") / str(os.getpid()) / "task" / str(os.getpid()) / "children"
        # psutil reads the real /proc whatever proc_root says, and so does the walk that stands in for it
        self._kernel_children = own.exists()

    @property
    def listen_ports(self) -> tuple[int, ...]:
        """The ports the backend listened on at discovery."""
        return self._listen_ports

    @property
    def pid(self) -> int | None:
        """The backend's PID when it is known."""
        return self._process.pid if self._process is not None else None

    @property
    def launcher_pid(self) -> int | None:
        """The process the spec named when it was a launcher and the backend was found below it."""
        return self._launcher

    def _discover(self) -> psutil.Process:
        pid = discover_pid(self._spec, self._proc_root)
        process = psutil.Process(pid)
        ports = _listen_ports(process)
        launcher: int | None = None
        degraded: str | None = None
        if ports is not None and not ports and self._spec.kind != "port":
            # a shell wrapper or pm2's daemon: the server is below it; measuring the launcher would say 2 MB, CPU 0
            found, degraded = self._listener_below(process)
            if found is not None:
                launcher = pid
                process, ports = found
        self._listen_ports = tuple(ports or ())
        self._launcher = launcher
        self._degraded = degraded
        if self._process is None or self._process.pid != process.pid:
            self._last = None  # another process: its CPU time is not comparable with the previous reading
        self._process = process
        return process

    def _listener_below(self, named: psutil.Process) -> tuple[tuple[psutil.Process, list[int]] | None, str | None]:
        """The descendant of ``named`` listening on the backend's port (any port when not known), or why none is."""
        where = f"port {self._port}" if self._port is not None else "any port"
        try:
            descendants = named.children(recursive=True)
            command = " ".join(named.cmdline())[:80]
        except psutil.Error as exc:
            return None, f"{self._spec} names process {named.pid}, which listens on no port: {exc}"
        found: dict[int, tuple[psutil.Process, list[int]]] = {}
        for child in descendants:
            ports = _listen_ports(child)
            if ports and (self._port is None or self._port in ports):
                found[child.pid] = (child, ports)
        # the topmost listener: a cluster's workers share the socket their primary holds
        top = []
        for pid, (child, _) in found.items():
            try:
                parent = child.ppid()
            except psutil.Error:
                continue
            if parent not in found:
                top.append(pid)
        if top:
            return found[min(top)], None
        return None, (
            f"{self._spec} names process {named.pid} ({command}), which listens on no port, and none of its "
            f"{len(descendants)} descendant(s) listens on {where}: if it is a launcher (a shell wrapper, pm2's "
            "daemon), its figures are not the server's; set backend.process to port:N or to the server's own pid file"
        )

    def read(self, now: float) -> ProcessSample:
        """Take one sample of the backend's tree (blocking; run in a worker thread)."""
        process = self._process
        if process is None or not process.is_running():
            process = self._discover()
            self._degraded_checked = now
        elif self._degraded is not None and now - self._degraded_checked >= LAUNCHER_RECHECK_SECONDS:
            # the server may have started under the launcher since: look again, now and then (a walk of its tree)
            self._degraded_checked = now
            process = self._discover()
        try:
            with process.oneshot():
                rss = process.memory_info().rss
                times = process.cpu_times()
                cpu = times.user + times.system
                open_files = count_fds(process)
                started = process.create_time()
            tree = self._tree_rss(process.pid) if self._kernel_children else None
            if tree is None:
                children = process.children(recursive=True)
                tree_rss = rss
                for child in children:
                    try:
                        tree_rss += child.memory_info().rss
                    except psutil.Error:
                        continue
                count = len(children)
            else:
                count, children_rss = tree
                tree_rss = rss + children_rss
        except psutil.NoSuchProcess:
            self._process = None
            raise SamplingError(f"backend process {process.pid} exited") from None
        except psutil.Error as exc:
            raise SamplingError(f"cannot read backend process {process.pid}: {exc}") from None
        ratio = 0.0
        if self._last is not None and now > self._last[0]:
            ratio = max(0.0, (cpu - self._last[1]) / (now - self._last[0]))
        self._last = (now, cpu)
        return ProcessSample(
            pid=process.pid,
            rss_bytes=rss,
            tree_rss_bytes=tree_rss,
            cpu_ratio=ratio,
            children=count,
            open_files=open_files,
            listen_ports=self._listen_ports,
            degraded=self._degraded,
            started_wall=started,
        )

    @staticmethod
    def _tree_rss(pid: int) -> tuple[int, int] | None:
        """(descendants, their RSS bytes) from /proc/PID/task/TID/children; None when the backend is gone."""
        count = rss = 0
        pending = [pid]
        while pending:
            parent = pending.pop()
            tasks = f"/proc/{parent}/task"
            try:
                threads = os.listdir(tasks)
            except OSError:
                if parent == pid:
                    return None
                continue  # a descendant that exited since its parent listed it
            for tid in threads:
                text = read_small(f"{tasks}/{tid}/children")
                if text is None:
                    continue
                for child in text.split():
                    resident = rss_bytes(int(child))
                    if resident is None:
                        continue  # exited since its parent listed it
                    count += 1
                    rss += resident
                    pending.append(int(child))
        return count, rss
