"""Cheap counts of the backend's TCP connections by state, via sock_diag netlink or /proc/net/tcp.

A socket matches when its local port is in the requested set (the backend's listening ports), or when its
remote port is in the upstream set (the services the backend connects to, such as MediaMTX's API): each
connection is counted once, from the backend's end. A loopback client of the backend has both ends on this
host, and its client end (whose remote port is the backend's) is not counted again, which is also what
``ss state all sport = :PORT`` shows; a connection from the backend to a local MediaMTX is counted from the
backend's end (where a leak shows as CLOSE_WAIT), not from MediaMTX's.

Families: every socket is counted exactly once, under the family of the socket itself. An IPv4 client
accepted by a dual-stack listener (an AF_INET6 socket with IPV6_V6ONLY off) is an AF_INET6 socket whose
addresses are IPv4-mapped (``::ffff:a.b.c.d``): it appears only in ``net/tcp6`` and only in the AF_INET6
dump (once in the family-less dump), and is counted once from there. Ports are compared regardless of
the address, so a mapped socket matches exactly like any other. Filtered on the local port,
``psutil.net_connections(kind="tcp")`` reports the same, so all three agree.

States: the kernel's request sockets (TCP_NEW_SYN_RECV) are counted as SYN_RECV, as /proc shows them.
Sockets that are only bound (neither listening nor connected) are not counted: /proc/net/tcp does not
list them, so the netlink request leaves them out too. CLOSE therefore stays at zero in practice.

Errors: the constructors probe and raise ``OSError`` when their source does not work on this machine.
``count()`` never raises ``OSError``: the netlink counter switches to /proc parsing for good when netlink
keeps failing at runtime, and /proc parsing that fails at runtime raises ``SamplingError``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from metrics.errors import SamplingError

__all__ = [
    "CountMethod",
    "NetlinkSocket",
    "NetlinkTcpCounter",
    "ProcNetTcpCounter",
    "TcpCounter",
    "TcpCounts",
    "TcpState",
    "make_tcp_counter",
    "open_sock_diag_socket",
    "port_filter_bytecode",
]


class TcpState(StrEnum):
    """A TCP socket state; the value is the Prometheus label value."""

    ESTABLISHED = "established"
    SYN_SENT = "syn_sent"
    SYN_RECV = "syn_recv"
    FIN_WAIT1 = "fin_wait1"
    FIN_WAIT2 = "fin_wait2"
    TIME_WAIT = "time_wait"
    CLOSE = "close"
    CLOSE_WAIT = "close_wait"
    LAST_ACK = "last_ack"
    LISTEN = "listen"
    CLOSING = "closing"


class CountMethod(StrEnum):
    """Where a count came from."""

    NETLINK = "netlink"
    PROC = "proc"


# The kernel's numbering (include/net/tcp_states.h); 12 is TCP_NEW_SYN_RECV, a request socket.
_KERNEL_STATES: Mapping[int, TcpState] = MappingProxyType(
    {
        1: TcpState.ESTABLISHED,
        2: TcpState.SYN_SENT,
        3: TcpState.SYN_RECV,
        4: TcpState.FIN_WAIT1,
        5: TcpState.FIN_WAIT2,
        6: TcpState.TIME_WAIT,
        7: TcpState.CLOSE,
        8: TcpState.CLOSE_WAIT,
        9: TcpState.LAST_ACK,
        10: TcpState.LISTEN,
        11: TcpState.CLOSING,
        12: TcpState.SYN_RECV,
    }
)
# Room for any state byte, so counting never needs a bounds check; unknown states are dropped at the end.
_STATE_SLOTS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpCounts:
    """Matched TCP sockets by state; ``total`` leaves LISTEN out."""

    by_state: Mapping[TcpState, int]
    total: int
    method: str

    def get(self, state: TcpState) -> int:
        """Return the number of matched sockets in ``state``."""
        return self.by_state.get(state, 0)


class TcpCounter(Protocol):
    """Counts the TCP sockets whose local port is in a set."""

    def count(self, ports: frozenset[int], upstream: frozenset[int] = frozenset()) -> TcpCounts:
        """Return the counts by state of the sockets whose local port is in ``ports`` or whose remote port is
        in ``upstream``."""
        ...


def _counts_from_slots(slots: list[int], method: CountMethod) -> TcpCounts:
    """Fold per-kernel-state tallies into a TcpCounts with every state present."""
    by_state = dict.fromkeys(TcpState, 0)
    for number, state in _KERNEL_STATES.items():
        by_state[state] += slots[number]
    total = sum(by_state.values()) - by_state[TcpState.LISTEN]
    return TcpCounts(by_state=MappingProxyType(by_state), total=total, method=method)


def _check_ports(ports: frozenset[int]) -> None:
    """Reject ports no socket can have, so a caller's mistake does not read as 'no connections'."""
    for port in ports:
        if not 1 <= port <= 65535:
            raise ValueError(f"TCP port out of range 1..65535: {port!r}")


# --- /proc/net/tcp ---------------------------------------------------------------------------------------

# Offsets from the colon after the slot number, per the kernel's fixed-width format
# ("%4d: %08X:%04X %08X:%04X %02X ..."; tcp6 prints the address as four %08X words).
_TCP4_OFFSETS = (11, 25, 30)
_TCP6_OFFSETS = (35, 73, 78)
_HEX_STATES: Mapping[bytes, int] = MappingProxyType({b"%02X" % number: number for number in _KERNEL_STATES})


class ProcNetTcpCounter:
    """Counts by parsing ``<proc_root>/net/tcp`` and ``tcp6`` line by line, keeping only tallies."""

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        """Probe that ``net/tcp`` is readable (``OSError`` if not); ``tcp6`` may be absent (no IPv6)."""
        self._tcp = proc_root / "net" / "tcp"
        self._tcp6 = proc_root / "net" / "tcp6"
        with self._tcp.open("rb") as probe:
            probe.readline()

    def count(self, ports: frozenset[int], upstream: frozenset[int] = frozenset()) -> TcpCounts:
        """Return the counts by state of the sockets whose local port is in ``ports`` or whose remote port is
        in ``upstream``."""
        _check_ports(ports | upstream)
        slots = [0] * _STATE_SLOTS
        if ports or upstream:
            # The kernel prints ports as four upper-case hex digits: compare bytes, skip int parsing.
            wanted = frozenset(b"%04X" % port for port in ports)
            remote = frozenset(b"%04X" % port for port in upstream)
            self._tally(self._tcp, _TCP4_OFFSETS, wanted, remote, slots, required=True)
            self._tally(self._tcp6, _TCP6_OFFSETS, wanted, remote, slots, required=False)
        return _counts_from_slots(slots, CountMethod.PROC)

    @staticmethod
    def _tally(  # noqa: PLR0913 -- the counts of one netlink dump, by port set
        path: Path,
        offsets: tuple[int, int, int],
        wanted: frozenset[bytes],
        remote: frozenset[bytes],
        slots: list[int],
        *,
        required: bool,
    ) -> None:
        """Add the matching lines of one table to ``slots``."""
        local_at, remote_at, state_at = offsets
        hex_states = _HEX_STATES
        try:
            with path.open("rb", buffering=1 << 17) as table:
                table.readline()  # the column header
                for line in table:
                    colon = line.find(b":")
                    local = colon + local_at
                    if line[local : local + 4] in wanted or (
                        remote and line[colon + remote_at : colon + remote_at + 4] in remote
                    ):
                        state = colon + state_at
                        slots[hex_states.get(line[state : state + 2], 0)] += 1
        except FileNotFoundError:
            if required:
                raise SamplingError(f"cannot read {path}: it is gone") from None
        except OSError as exc:
            raise SamplingError(f"cannot read {path}: {exc.strerror}") from None


# --- sock_diag netlink -----------------------------------------------------------------------------------

_NETLINK_SOCK_DIAG = 4
_TCPDIAG_GETSOCK = 18
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_INET_DIAG_REQ_BYTECODE = 1
_INET_DIAG_BC_JMP = 1
_INET_DIAG_BC_S_EQ = 11
_INET_DIAG_BC_D_EQ = 12

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLMSG_HEAD = struct.Struct("=IHHI")  # len, type, flags, seq: what the reply loop reads
_INET_DIAG_REQ_V2 = struct.Struct("=BBBBI48x")  # family, protocol, ext, pad, states, zero sockid
_INET_DIAG_REQ_COMPAT = struct.Struct("=BBBB48xII")  # family, src_len, dst_len, ext, zero sockid, states, dbs
_NLATTR = struct.Struct("=HH")
_BC_OP = struct.Struct("=BBH")  # code, yes, no
_ERRNO = struct.Struct("=i")

# inet_diag_msg after the 16-byte nlmsghdr: state at +1, then sockid with sport/dport (big endian) at +4/+6.
_STATE_AT = 16 + 1
_SPORT_AT = 16 + 4
_DPORT_AT = 16 + 6
_DIAG_MSG_MIN = 16 + 72

# Every state but CLOSE (7) and the kernel's bound-only pseudo-state (13), which /proc never lists.
_STATE_MASK = sum(1 << number for number in _KERNEL_STATES if number != 7)
# Beyond this many ports the in-kernel program (a test per port, run for every socket) gets long, so
# the full dump is filtered here instead; this also keeps its 16-bit jump offsets far from their limit.
_MAX_KERNEL_FILTER_PORTS = 64
_RECV_BUFFER = 1 << 16
_SOCKET_TIMEOUT_S = 5.0
# Dump chunks are at most 32 KiB; a generous cap still ends a reply that never finishes.
_MAX_CHUNKS_PER_DUMP = 1 << 20


def port_filter_bytecode(ports: Iterable[int], upstream: Iterable[int] = ()) -> bytes:
    """Return an inet_diag program accepting a socket whose source (local) port is in ``ports`` or whose
    destination (remote) port is in ``upstream``.

    The kernel runs it per socket: a test that holds jumps ``yes`` bytes ahead, one that fails jumps ``no``
    bytes; landing exactly on the end accepts, landing 4 bytes past it rejects. ``yes`` is one byte wide,
    so a hit steps onto a following JMP whose 16-bit offset reaches the end; a miss skips that JMP and
    tries the next port. The last test's hit lands on the end and its miss 4 bytes beyond it.
    """
    tests = [(_INET_DIAG_BC_S_EQ, port) for port in sorted(set(ports))]
    tests += [(_INET_DIAG_BC_D_EQ, port) for port in sorted(set(upstream))]
    if not tests:
        raise ValueError("a port filter needs at least one port")
    length = 12 * (len(tests) - 1) + 8
    program = bytearray()
    for index, (code, port) in enumerate(tests):
        # A port test is two ops: the test itself and one whose `no` field carries the port.
        program += _BC_OP.pack(code, 8, 12)
        program += _BC_OP.pack(0, 0, port)
        if index < len(tests) - 1:
            program += _BC_OP.pack(_INET_DIAG_BC_JMP, 4, length - len(program))
    return bytes(program)


def _request_kind(family: int) -> int:
    """Return the message type of a dump request for ``family``; its replies carry the same type."""
    return _TCPDIAG_GETSOCK if family == socket.AF_UNSPEC else _SOCK_DIAG_BY_FAMILY


def _build_request(family: int, seq: int, bytecode: bytes | None) -> bytes:
    """Return one dump request for TCP sockets of ``family``; AF_UNSPEC asks for both families at once.

    The v2 request (SOCK_DIAG_BY_FAMILY) needs a family, and each one makes the kernel walk the whole
    shared TCP hash table; the older TCPDIAG_GETSOCK request leaves the family unset, so one walk returns
    IPv4 and IPv6 sockets alike, with the same states mask and bytecode filter.
    """
    if family == socket.AF_UNSPEC:
        body = _INET_DIAG_REQ_COMPAT.pack(family, 0, 0, 0, _STATE_MASK, 0)
    else:
        body = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 0, _STATE_MASK)
    if bytecode is not None:
        body += _NLATTR.pack(_NLATTR.size + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
    flags = _NLM_F_REQUEST | _NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _request_kind(family), flags, seq, 0) + body


class NetlinkSocket(Protocol):
    """The part of a netlink socket the counter uses (a seam for tests)."""

    def send(self, data: bytes, /) -> int:
        """Send one datagram."""
        ...

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
        """Receive one datagram into ``buffer``."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


def open_sock_diag_socket() -> NetlinkSocket:
    """Open a NETLINK_SOCK_DIAG socket bound to a kernel-chosen port id."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        raise OSError(errno.EAFNOSUPPORT, "netlink is not available on this platform")
    sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
    try:
        # The kernel always answers a dump; the timeout only turns a wedged socket into an error.
        sock.settimeout(_SOCKET_TIMEOUT_S)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


# One family-less dump, or one v2 dump per family where the kernel lacks the compat request.
_COMBINED = (socket.AF_UNSPEC,)
_PER_FAMILY = (socket.AF_INET, socket.AF_INET6)

# Header bytes that must repeat in every message of a uniform chunk: length, type and sequence number.
_UNIFORM_HEADER_BYTES = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11)


def _tally_uniform_chunk(buffer: bytearray, received: int, kind: int, seq: int, slots: list[int]) -> bool:
    """Tally a chunk made only of equal-length socket messages of this dump; False if it is not one.

    Most chunks of a large dump are such runs (the same family and state give the same attributes), and
    strided slices count them without a Python step per socket. If every stride position carries the
    first message's length, type and sequence number, walking the chunk by the length fields would visit
    exactly these positions, so the result equals the general walk's.
    """
    if received < _DIAG_MSG_MIN:
        return False
    length, first_kind, _flags, first_seq = _NLMSG_HEAD.unpack_from(buffer, 0)
    if first_kind != kind or first_seq != seq or length < _DIAG_MSG_MIN or length % 4 or received % length:
        return False
    messages = received // length
    for at in _UNIFORM_HEADER_BYTES:
        if buffer[at:received:length].count(buffer[at]) != messages:
            return False
    for state, number in Counter(buffer[_STATE_AT:received:length]).items():
        slots[state] += number
    return True


def _close_all(held: list[NetlinkSocket]) -> None:
    """Close and forget every held socket."""
    while held:
        held.pop().close()


class NetlinkTcpCounter:
    """Counts with sock_diag dumps filtered in the kernel, reading only each reply's fixed header.

    One dump covers both families where the kernel accepts the family-less TCPDIAG_GETSOCK request
    (probed once; ``combined=False`` forces one v2 dump per family, ``True`` insists on the single one).
    One netlink socket is reused across counts. When a dump fails the socket is reopened and the dump
    retried once; if that fails too, the counter switches to /proc parsing for the rest of its life.
    Safe to call from several threads (dumps are serialised).
    """

    def __init__(
        self,
        *,
        proc_root: Path = Path("/proc"),
        socket_factory: Callable[[], NetlinkSocket] = open_sock_diag_socket,
        combined: bool | None = None,
    ) -> None:
        """Open the socket and probe a filtered dump; ``OSError`` if netlink does not work."""
        self._proc_root = proc_root
        self._socket_factory = socket_factory
        self._lock = threading.Lock()
        self._buffer = bytearray(_RECV_BUFFER)
        self._seq = 0
        self._fallback: ProcNetTcpCounter | None = None
        self._held: list[NetlinkSocket] = []
        self._finalizer = weakref.finalize(self, _close_all, self._held)
        self._families: tuple[int, ...] = _PER_FAMILY if combined is False else _COMBINED
        self._bytecode_ports: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        self._bytecode: bytes | None = None
        try:
            self._held.append(socket_factory())
            try:
                self._dump_all(frozenset({1}))
            except OSError:
                if combined is not None:
                    raise
                # An old or trimmed kernel without the compat request: one v2 dump per family, fresh socket.
                _close_all(self._held)
                self._families = _PER_FAMILY
                self._held.append(socket_factory())
                self._dump_all(frozenset({1}))
        except OSError:
            self.close()
            raise

    @property
    def combined(self) -> bool:
        """Tell whether one dump covers both families (else one dump per family)."""
        return self._families == _COMBINED

    @property
    def method(self) -> CountMethod:
        """Return where counts come from now: netlink, or proc after a lasting failure."""
        return CountMethod.NETLINK if self._fallback is None else CountMethod.PROC

    def close(self) -> None:
        """Close the netlink socket now rather than when the counter is collected (a later count reopens)."""
        with self._lock:
            _close_all(self._held)

    def count(self, ports: frozenset[int], upstream: frozenset[int] = frozenset()) -> TcpCounts:
        """Return the counts by state of the sockets whose local port is in ``ports`` or whose remote port is
        in ``upstream``."""
        _check_ports(ports | upstream)
        with self._lock:
            if self._fallback is None:
                if not ports and not upstream:
                    return _counts_from_slots([0] * _STATE_SLOTS, CountMethod.NETLINK)
                try:
                    return _counts_from_slots(self._dump_with_retry(ports, upstream), CountMethod.NETLINK)
                except OSError:
                    _close_all(self._held)
                    try:
                        self._fallback = ProcNetTcpCounter(self._proc_root)
                    except OSError as exc:
                        raise SamplingError(
                            f"sock_diag failed and {self._proc_root}/net/tcp is unreadable: {exc.strerror}"
                        ) from None
            return self._fallback.count(ports, upstream)

    def _dump_with_retry(self, ports: frozenset[int], upstream: frozenset[int]) -> list[int]:
        """Dump on the current socket; on failure reopen it and try once more."""
        if self._held:
            try:
                return self._dump_all(ports, upstream)
            except OSError:
                # A failed dump can leave unread parts queued: start over on a fresh socket.
                _close_all(self._held)
        self._held.append(self._socket_factory())
        return self._dump_all(ports, upstream)

    def _dump_all(self, ports: frozenset[int], upstream: frozenset[int] = frozenset()) -> list[int]:
        """Run the dump (or one per address family) and return the tallies by kernel state."""
        in_kernel = len(ports) + len(upstream) <= _MAX_KERNEL_FILTER_PORTS
        if in_kernel and (ports, upstream) != self._bytecode_ports:
            # The port sets rarely change between counts: build their program once.
            self._bytecode = port_filter_bytecode(ports, upstream)
            self._bytecode_ports = (ports, upstream)
        slots = [0] * _STATE_SLOTS
        for family in self._families:
            if in_kernel:
                self._dump(family, self._bytecode, None, frozenset(), slots)
            else:
                self._dump(family, None, ports, upstream, slots)
        return slots

    def _dump(  # noqa: PLR0912 -- one netlink message parsed step by step
        self,
        family: int,
        bytecode: bytes | None,
        ports: frozenset[int] | None,
        upstream: frozenset[int],
        slots: list[int],
    ) -> None:
        """Send one dump request and tally its replies until NLMSG_DONE; ``ports`` (local) and ``upstream``
        (remote) filter here if ``ports`` is given."""
        sock = self._held[0]
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        sock.send(_build_request(family, seq, bytecode))
        reply_kind = _request_kind(family)
        buffer = self._buffer
        size = len(buffer)
        head = _NLMSG_HEAD.unpack_from
        for _ in range(_MAX_CHUNKS_PER_DUMP):
            received = sock.recv_into(buffer, size, socket.MSG_TRUNC)
            if received > size:
                raise OSError(errno.EMSGSIZE, "netlink reply larger than the receive buffer")
            if received <= 0:
                raise OSError(errno.EPIPE, "netlink socket returned no data")
            if ports is None and _tally_uniform_chunk(buffer, received, reply_kind, seq, slots):
                continue
            offset = 0
            while offset + 16 <= received:
                length, kind, _flags, message_seq = head(buffer, offset)
                if length < 16 or offset + length > received:
                    raise OSError(errno.EBADMSG, "malformed netlink message")
                if message_seq == seq:
                    if kind == reply_kind and length >= _DIAG_MSG_MIN:
                        if (
                            ports is None
                            or (buffer[offset + _SPORT_AT] << 8 | buffer[offset + _SPORT_AT + 1]) in ports
                            or (buffer[offset + _DPORT_AT] << 8 | buffer[offset + _DPORT_AT + 1]) in upstream
                        ):
                            slots[buffer[offset + _STATE_AT]] += 1
                    elif kind == _NLMSG_DONE:
                        # A dump that failed part-way says so with a negative errno in DONE.
                        if length >= 20 and (code := _ERRNO.unpack_from(buffer, offset + 16)[0]) < 0:
                            raise OSError(-code, os.strerror(-code))
                        return
                    elif kind == _NLMSG_ERROR:
                        code = _ERRNO.unpack_from(buffer, offset + 16)[0] if length >= 20 else 0
                        # A zero here would be an ACK, which a dump never asks for: still a failure.
                        failure = -code if code < 0 else errno.EIO
                        raise OSError(failure, os.strerror(failure))
                offset += (length + 3) & ~3
            if offset < received:
                raise OSError(errno.EBADMSG, "truncated netlink message")
        raise OSError(errno.EIO, "netlink dump did not finish")


def make_tcp_counter(proc_root: Path = Path("/proc")) -> TcpCounter:
    """Return a NetlinkTcpCounter when sock_diag works here (probed once), else a ProcNetTcpCounter."""
    try:
        return NetlinkTcpCounter(proc_root=proc_root)
    except OSError:
        return ProcNetTcpCounter(proc_root)
