"""Lower and restore the CPU and IO priority of a process, every thread of it, saving the old values first.

Linux keeps the nice value and the IO priority per thread: ``setpriority(PRIO_PROCESS, pid)`` and
``ioprio_set(IOPRIO_WHO_PROCESS, pid)`` change only the thread whose id is ``pid`` (``renice -p`` has the
same limit), so a multi-threaded ffmpeg is changed thread by thread through ``/proc/PID/task``.

The IO priority goes through the ``ioprio_get``/``ioprio_set`` system calls via ctypes: a call costs a
few microseconds and fails with the kernel's own errno, where running ``ionice`` forks a process per
thread (about 2 ms each) and reports errors as text. The call numbers differ per architecture; on one
not listed here the IO priority is reported unsupported and only the nice value is changed.

Every change checks the process is still the one that was planned for (its start time) and rolls back
the threads it already changed when a later one fails, so a failure leaves the process as it was.
Lowering a priority works on one's own processes; raising it back (restoring), or touching another
user's processes, needs ``CAP_SYS_NICE``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from metrics.memory import start_ticks
from strategies.base import StrategyError

IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_SHIFT = 13
IOPRIO_CLASS_NONE, IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE = 0, 1, 2, 3
_CLASS_NAMES = {IOPRIO_CLASS_NONE: "none", IOPRIO_CLASS_RT: "rt", IOPRIO_CLASS_BE: "be", IOPRIO_CLASS_IDLE: "idle"}
# (ioprio_set, ioprio_get) per machine
_SYSCALLS: Mapping[str, tuple[int, int]] = {
    "x86_64": (251, 252),
    "amd64": (251, 252),
    "i386": (289, 290),
    "i686": (289, 290),
    "aarch64": (30, 31),
    "arm64": (30, 31),
    "riscv64": (30, 31),
    "armv7l": (314, 315),
    "armv6l": (314, 315),
    "ppc64le": (273, 274),
    "s390x": (282, 283),
}


def ioprio_value(ioclass: int, level: int) -> int:
    """The kernel's packed IO priority: class in the top bits, level (0..7) below."""
    return (ioclass << IOPRIO_CLASS_SHIFT) | level


def ioprio_parts(value: int) -> tuple[int, int]:
    """(class, level) of a packed IO priority."""
    return value >> IOPRIO_CLASS_SHIFT, value & ((1 << IOPRIO_CLASS_SHIFT) - 1)


def describe_ioprio(value: int | None) -> str:
    """Short text for an IO priority: ``none``, ``be/7``, ``idle``, ``rt/0``; ``-`` when unknown."""
    if value is None:
        return "-"
    ioclass, level = ioprio_parts(value)
    name = _CLASS_NAMES.get(ioclass, str(ioclass))
    return name if ioclass in (IOPRIO_CLASS_NONE, IOPRIO_CLASS_IDLE) else f"{name}/{level}"


def io_lower_than(current: int, target: int) -> bool:
    """Whether ``target`` is a lower IO priority than ``current`` (so setting it would be a demotion).

    Real-time is never demoted (someone chose it on purpose); ``none`` follows the nice value and counts
    as best-effort 4, the kernel's default.
    """
    cur_class, cur_level = ioprio_parts(current)
    tgt_class, tgt_level = ioprio_parts(target)
    if cur_class in (IOPRIO_CLASS_RT, IOPRIO_CLASS_IDLE):
        return False
    if tgt_class == IOPRIO_CLASS_IDLE:
        return True
    effective = 4 if cur_class == IOPRIO_CLASS_NONE else cur_level
    return tgt_class == IOPRIO_CLASS_BE and tgt_level > effective


@dataclass(frozen=True, slots=True, kw_only=True)
class Priority:
    """A thread's nice value and packed IO priority (None where IO priorities are unsupported)."""

    nice: int
    ioprio: int | None

    def describe(self) -> str:
        """``nice 10, io be/7``."""
        return f"nice {self.nice}, io {describe_ioprio(self.ioprio)}"

    def as_dict(self) -> dict[str, int | None]:
        """A JSON-ready form."""
        return {"nice": self.nice, "ioprio": self.ioprio}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Priority:
        """Rebuild from the JSON form."""
        io = data.get("ioprio")
        return cls(nice=int(str(data["nice"])), ioprio=int(str(io)) if io is not None else None)


class PriorityOps(Protocol):
    """The four system calls, per thread id; raise OSError with the kernel's errno."""

    def get_nice(self, tid: int) -> int:
        """The thread's nice value."""
        ...

    def set_nice(self, tid: int, value: int) -> None:
        """Set the thread's nice value."""
        ...

    def get_ioprio(self, tid: int) -> int | None:
        """The thread's packed IO priority, or None when unsupported here."""
        ...

    def set_ioprio(self, tid: int, value: int) -> None:
        """Set the thread's packed IO priority."""
        ...


class SystemPriorityOps:
    """The real calls: os.getpriority/os.setpriority and ioprio_get/ioprio_set through libc's syscall()."""

    def __init__(self, machine: str | None = None) -> None:
        self._numbers = _SYSCALLS.get((machine or platform.machine()).lower())
        self._syscall: Callable[..., int] | None = None
        self._resolved = False

    def _libc_syscall(self) -> Callable[..., int] | None:
        """libc's syscall(), looked up on first use: ctypes costs a daemon that never renices about 0.4 MiB."""
        if not self._resolved:
            self._resolved = True
            if self._numbers is not None:
                import ctypes

                with contextlib.suppress(OSError, AttributeError):
                    self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        return self._syscall

    @property
    def ioprio_supported(self) -> bool:
        """Whether IO priorities can be read and set on this machine."""
        return self._libc_syscall() is not None

    def get_nice(self, tid: int) -> int:
        """os.getpriority on the thread."""
        return os.getpriority(os.PRIO_PROCESS, tid)

    def set_nice(self, tid: int, value: int) -> None:
        """os.setpriority on the thread."""
        os.setpriority(os.PRIO_PROCESS, tid, value)

    def _call(self, index: int, *args: int) -> int:
        import ctypes

        assert self._syscall is not None and self._numbers is not None
        ctypes.set_errno(0)
        result = int(self._syscall(self._numbers[index], *(ctypes.c_int(a) for a in args)))
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def get_ioprio(self, tid: int) -> int | None:
        """ioprio_get(IOPRIO_WHO_PROCESS, tid)."""
        if self._libc_syscall() is None:
            return None
        return self._call(1, IOPRIO_WHO_PROCESS, tid)

    def set_ioprio(self, tid: int, value: int) -> None:
        """ioprio_set(IOPRIO_WHO_PROCESS, tid, value)."""
        if self._libc_syscall() is None:
            return
        self._call(0, IOPRIO_WHO_PROCESS, tid, value)


class ProcessGone(StrategyError):
    """The process exited, or its PID now belongs to another process."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedPriority:
    """What a process had before a change: the main thread's values and each thread's own."""

    main: Priority
    threads: Mapping[int, Priority]

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form (thread ids become text keys)."""
        return {"main": self.main.as_dict(), "threads": {str(t): p.as_dict() for t, p in self.threads.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SavedPriority:
        """Rebuild from the JSON form."""
        main = data["main"]
        threads = data.get("threads") or {}
        assert isinstance(main, Mapping) and isinstance(threads, Mapping)
        return cls(main=Priority.from_dict(main), threads={int(t): Priority.from_dict(p) for t, p in threads.items()})


def _errno_text(exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return "permission denied (needs CAP_SYS_NICE to raise a priority or touch another user's process)"
    return exc.strerror or str(exc)


class Renicer:
    """Changes and restores the priority of whole processes, checking their identity first."""

    def __init__(self, ops: PriorityOps | None = None, proc_root: Path = Path("/proc")) -> None:
        self.ops: PriorityOps = ops if ops is not None else SystemPriorityOps()
        self._proc = proc_root

    def start_ticks(self, pid: int) -> int | None:
        """The process's start time in clock ticks since boot (its identity), None when it is gone."""
        return start_ticks(pid, self._proc)

    def thread_ids(self, pid: int) -> list[int]:
        """The process's thread ids, main thread first."""
        try:
            tids = sorted(int(t) for t in os.listdir(self._proc / str(pid) / "task") if t.isdigit())
        except OSError:
            return []
        return sorted(tids, key=lambda t: (t != pid, t))

    def _check(self, pid: int, start_ticks: int) -> None:
        if self.start_ticks(pid) != start_ticks:
            raise ProcessGone(f"process {pid} is gone")

    def _read(self, tid: int) -> Priority:
        return Priority(nice=self.ops.get_nice(tid), ioprio=self.ops.get_ioprio(tid))

    def current(self, pid: int, start_ticks: int) -> Priority:
        """The main thread's priority, after checking the process is the same one."""
        self._check(pid, start_ticks)
        try:
            return self._read(pid)
        except ProcessLookupError:
            raise ProcessGone(f"process {pid} is gone") from None
        except OSError as exc:
            raise StrategyError(f"cannot read the priority of process {pid}: {_errno_text(exc)}") from None

    def _set(self, tid: int, target: Priority, before: Priority) -> None:
        if target.nice != before.nice:
            self.ops.set_nice(tid, target.nice)
        if target.ioprio is not None and target.ioprio != before.ioprio:
            self.ops.set_ioprio(tid, target.ioprio)

    def lower(self, pid: int, start_ticks: int, target: Callable[[Priority], Priority]) -> SavedPriority:
        """Give every thread the priority ``target(its current priority)``; return what they had.

        On failure the threads already changed are put back and StrategyError says why.
        """
        self._check(pid, start_ticks)
        saved: dict[int, Priority] = {}
        changed: list[tuple[int, Priority]] = []
        try:
            for tid in self.thread_ids(pid):
                try:
                    before = self._read(tid)
                except ProcessLookupError:
                    # a thread that ended between the listing and the read
                    continue
                saved[tid] = before
                try:
                    self._set(tid, target(before), before)
                except ProcessLookupError:
                    continue
                changed.append((tid, before))
        except OSError as exc:
            self._undo(changed)
            raise StrategyError(f"cannot lower the priority of process {pid}: {_errno_text(exc)}") from None
        if pid not in saved:
            raise ProcessGone(f"process {pid} is gone")
        return SavedPriority(main=saved[pid], threads=saved)

    def restore(self, pid: int, start_ticks: int, saved: SavedPriority) -> Priority:
        """Put every thread back to its saved priority (threads started since get the main thread's).

        Returns what the main thread had just before. On failure the threads already restored get
        their previous value back and StrategyError says why.
        """
        self._check(pid, start_ticks)
        changed: list[tuple[int, Priority]] = []
        current_main: Priority | None = None
        try:
            for tid in self.thread_ids(pid):
                try:
                    before = self._read(tid)
                except ProcessLookupError:
                    continue
                if tid == pid:
                    current_main = before
                want = saved.threads.get(tid, saved.main)
                try:
                    self._set(tid, want, before)
                except ProcessLookupError:
                    continue
                changed.append((tid, before))
        except OSError as exc:
            self._undo(changed)
            raise StrategyError(f"cannot restore the priority of process {pid}: {_errno_text(exc)}") from None
        if current_main is None:
            raise ProcessGone(f"process {pid} is gone")
        return current_main

    def _undo(self, changed: list[tuple[int, Priority]]) -> None:
        """Best effort: put the given threads back; a thread that cannot be put back is left as it is."""
        for tid, before in reversed(changed):
            with contextlib.suppress(OSError):
                current = self._read(tid)
                self._set(tid, before, current)
