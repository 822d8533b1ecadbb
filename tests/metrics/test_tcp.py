"""Tests for metrics.tcp: /proc fixture trees, real loopback sockets, scripted netlink replies."""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from metrics.errors import SamplingError
from metrics.tcp import (
    CountMethod,
    NetlinkTcpCounter,
    ProcNetTcpCounter,
    TcpCounter,
    TcpCounts,
    TcpState,
    make_tcp_counter,
    open_sock_diag_socket,
)

FIXTURES = Path(__file__).parent / "fixtures" / "proc_tcp"
SETTLE_TIMEOUT_S = 5.0
LINGER_RESET = struct.pack("ii", 1, 0)


def expected(**by_state: int) -> dict[TcpState, int]:
    """Return a full state -> count dict with the given non-zero entries."""
    return {state: by_state.get(state.value, 0) for state in TcpState}


def netlink_works() -> bool:
    """Tell whether sock_diag answers on this machine."""
    try:
        NetlinkTcpCounter().close()
    except OSError:
        return False
    return True


def ipv6_loopback_works() -> bool:
    """Tell whether ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_netlink = pytest.mark.skipif(not netlink_works(), reason="sock_diag netlink is not available")


def psutil_counts(ports: frozenset[int]) -> dict[TcpState, int]:
    """Count with psutil.net_connections, filtered the same way as the counters."""
    tally = Counter(
        TcpState(conn.status.lower())
        for conn in psutil.net_connections(kind="tcp")
        if getattr(conn.laddr, "port", None) in ports
    )
    return {state: tally.get(state, 0) for state in TcpState}


# listening ports tried before giving up on finding one that no other socket on the host names
PORT_ATTEMPTS = 20


class Loopback:
    """Listeners and connections on loopback, arranged into known TCP states and reset at the end."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._listeners: dict[int, socket.socket] = {}

    def _keep(self, sock: socket.socket) -> socket.socket:
        """Track ``sock`` for the final reset and bound its blocking calls."""
        sock.settimeout(SETTLE_TIMEOUT_S)
        self._sockets.append(sock)
        return sock

    def listen(self, family: int = socket.AF_INET, host: str = "127.0.0.1", *, v6only: bool = True) -> int:
        """Open a listener on ``host`` port 0 and return its port.

        The counters match a socket by its local port, so a port that another socket on the host still has
        (a closed connection's client end in TIME_WAIT, for one) would add to the counts: such a port is kept
        bound, out of the way, and another one is taken.
        """
        for _ in range(PORT_ATTEMPTS):
            listener = self._keep(socket.socket(family, socket.SOCK_STREAM))
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            listener.bind((host, 0))
            listener.listen(64)
            port = int(listener.getsockname()[1])
            if sum(ProcNetTcpCounter().count(frozenset({port})).by_state.values()) == 1:  # the listener alone
                self._listeners[port] = listener
                return port
        raise RuntimeError(f"no port without other sockets on it in {PORT_ATTEMPTS} tries")

    def reserve_port(self) -> int:
        """Bind (without listening) a socket on 127.0.0.1 port 0, so nobody else takes that port."""
        sock = self._keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    def connect(self, port: int, host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
        """Open one connection to the listener on ``port``; return (client end, server end)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        client = self._keep(socket.socket(family, socket.SOCK_STREAM))
        client.connect((host, port))
        server = self._keep(self._listeners[port].accept()[0])
        return client, server

    def half_close(self, port: int, host: str = "127.0.0.1") -> None:
        """Client closes, server keeps its end: server CLOSE_WAIT, client FIN_WAIT2."""
        client, server = self.connect(port, host)
        client.close()
        assert server.recv(1) == b""

    def time_wait(self, port: int, host: str = "127.0.0.1") -> None:
        """Server closes first, then the client: server TIME_WAIT, client gone."""
        client, server = self.connect(port, host)
        server.close()
        assert client.recv(1) == b""
        client.close()

    def close(self) -> None:
        """Reset every open socket, so no FIN_WAIT2 or CLOSE_WAIT outlives the test."""
        for sock in self._sockets:
            if sock.fileno() != -1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                sock.close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    """Provide a Loopback that resets its sockets afterwards."""
    net = Loopback()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(params=[True, False], ids=["one-dump", "dump-per-family"])
def netlink(request: pytest.FixtureRequest) -> Iterator[NetlinkTcpCounter]:
    """Provide a netlink counter in each dump mode, closed afterwards."""
    try:
        counter = NetlinkTcpCounter(combined=request.param)
    except OSError as exc:
        pytest.skip(f"this kernel does not take that dump mode: {exc}")
    assert counter.combined is request.param
    try:
        yield counter
    finally:
        counter.close()


def settle(counter: TcpCounter, ports: frozenset[int], want: dict[TcpState, int]) -> TcpCounts:
    """Count until the sockets reach ``want`` or the timeout passes; return the last counts.

    Loopback state changes (an ACK of a FIN, say) land a moment after the call that caused them; each count
    walks the kernel's socket table, which paces this loop without an explicit pause.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    counts = counter.count(ports)
    while dict(counts.by_state) != want and time.monotonic() < deadline:
        counts = counter.count(ports)
    return counts


# --- /proc fixture trees -----------------------------------------------------------------------------------

# The sockets whose local port is 3000 or 9997; the client ends (remote port 3000) are not counted again.
DUAL_STACK_ALL = expected(
    listen=2,
    established=5,
    close_wait=1,
    time_wait=1,
    syn_recv=1,
    last_ack=1,
)


def test_proc_counts_fixture_tree_by_state() -> None:
    """Every state in net/tcp and net/tcp6 is counted for matching local ports, LISTEN out of total."""
    counts = ProcNetTcpCounter(FIXTURES / "dual_stack").count(frozenset({3000, 9997}))
    assert dict(counts.by_state) == DUAL_STACK_ALL
    assert counts.total == 9
    assert counts.method == "proc"
    assert counts.get(TcpState.ESTABLISHED) == 5


def test_proc_port_filter_keeps_only_requested_ports() -> None:
    """Only sockets with a requested local port count; hex digits inside an address never match."""
    counter = ProcNetTcpCounter(FIXTURES / "dual_stack")
    assert dict(counter.count(frozenset({9997})).by_state) == expected(established=1)
    # The 8080 -> 8081 line has "0BB8" (3000) in both addresses; it counts for its local port, not for 3000.
    assert dict(counter.count(frozenset({8080})).by_state) == expected(established=1)
    # ... and not for its remote port either: only the end that owns a port counts.
    assert dict(counter.count(frozenset({8081})).by_state) == expected()
    assert dict(counter.count(frozenset({4242})).by_state) == expected()
    assert dict(counter.count(frozenset({8888})).by_state) == expected(listen=1, established=1)


def test_proc_counts_mapped_ipv4_under_tcp6_once(tmp_path: Path) -> None:
    """An IPv4-mapped socket in tcp6 counts once, like any IPv6 socket."""
    (tmp_path / "net").mkdir()
    source = (FIXTURES / "dual_stack" / "net" / "tcp6").read_text(encoding="ascii").splitlines(keepends=True)
    mapped = [line for line in source if "FFFF00000100007F:0BB8" in line]
    assert len(mapped) == 1
    (tmp_path / "net" / "tcp").write_text(source[0], encoding="ascii")
    (tmp_path / "net" / "tcp6").write_text(source[0] + mapped[0], encoding="ascii")
    counts = ProcNetTcpCounter(tmp_path).count(frozenset({3000}))
    assert dict(counts.by_state) == expected(established=1)


def test_proc_empty_ports_gives_all_states_at_zero() -> None:
    """An empty port set counts nothing, and every state is still present."""
    counts = ProcNetTcpCounter(FIXTURES / "dual_stack").count(frozenset())
    assert dict(counts.by_state) == expected()
    assert set(counts.by_state) == set(TcpState)
    assert counts.total == 0


def test_proc_tree_without_tcp6_counts_ipv4() -> None:
    """A host without IPv6 (no net/tcp6) still counts net/tcp."""
    counts = ProcNetTcpCounter(FIXTURES / "ipv4_only").count(frozenset({3000}))
    assert dict(counts.by_state) == expected(listen=1, established=1)
    assert counts.total == 1


def test_proc_constructor_raises_oserror_without_net_tcp(tmp_path: Path) -> None:
    """The constructor probe raises OSError when net/tcp is missing."""
    with pytest.raises(OSError, match="tcp"):
        ProcNetTcpCounter(tmp_path)


def test_proc_count_raises_sampling_error_when_table_vanishes(tmp_path: Path) -> None:
    """A net/tcp that disappears after construction is a SamplingError naming the file, not an OSError."""
    (tmp_path / "net").mkdir()
    table = tmp_path / "net" / "tcp"
    table.write_bytes((FIXTURES / "ipv4_only" / "net" / "tcp").read_bytes())
    counter = ProcNetTcpCounter(tmp_path)
    table.unlink()
    with pytest.raises(SamplingError, match="net/tcp"):
        counter.count(frozenset({3000}))


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_count_rejects_impossible_ports(port: int) -> None:
    """A port outside 1..65535 is a ValueError, not a silent zero."""
    with pytest.raises(ValueError, match="out of range"):
        ProcNetTcpCounter(FIXTURES / "dual_stack").count(frozenset({port}))


def test_counts_by_state_is_read_only() -> None:
    """TcpCounts.by_state cannot be changed by a consumer."""
    counts = ProcNetTcpCounter(FIXTURES / "dual_stack").count(frozenset({3000}))
    with pytest.raises(TypeError):
        counts.by_state[TcpState.LISTEN] = 0  # type: ignore[index]


# --- real sockets ------------------------------------------------------------------------------------------


def arrange_states(net: Loopback, port: int, host: str) -> dict[TcpState, int]:
    """Open 3 live, 2 half-closed and 2 server-closed connections; return the expected counts (server ends)."""
    for _ in range(3):
        net.connect(port, host)
    for _ in range(2):
        net.half_close(port, host)
    for _ in range(2):
        net.time_wait(port, host)
    return expected(listen=1, established=3, close_wait=2, time_wait=2)


@needs_netlink
@pytest.mark.parametrize(
    ("family", "host"),
    [
        pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            id="ipv6",
            marks=pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback"),
        ),
    ],
)
def test_counters_agree_with_psutil_on_loopback(
    loopback: Loopback, netlink: NetlinkTcpCounter, family: int, host: str
) -> None:
    """Both counters and psutil give the same exact counts for live, CLOSE_WAIT/FIN_WAIT2 and TIME_WAIT sockets."""
    port = loopback.listen(family, host)
    want = arrange_states(loopback, port, host)
    ports = frozenset({port})
    by_netlink = settle(netlink, ports, want)
    by_proc = ProcNetTcpCounter().count(ports)
    assert dict(by_netlink.by_state) == want
    assert dict(by_proc.by_state) == want
    assert psutil_counts(ports) == want
    assert (by_netlink.method, by_proc.method) == ("netlink", "proc")
    assert by_netlink.total == by_proc.total == 7


@needs_netlink
def test_dual_stack_socket_counted_once_under_its_own_family(
    loopback: Loopback, netlink: NetlinkTcpCounter, tmp_path: Path
) -> None:
    """IPv4 clients of an AF_INET6 dual-stack listener: the mapped server ends count once, from tcp6 only."""
    port = loopback.listen(socket.AF_INET6, "::ffff:127.0.0.1", v6only=False)
    for _ in range(2):
        loopback.connect(port, "127.0.0.1")
    ports = frozenset({port})
    want = expected(listen=1, established=2)
    assert dict(settle(netlink, ports, want).by_state) == want
    assert dict(ProcNetTcpCounter().count(ports).by_state) == want
    assert psutil_counts(ports) == want
    # With net/tcp alone nothing remains: the mapped server ends live in tcp6, the AF_INET client ends do not
    # own the port.
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").symlink_to("/proc/self/net/tcp")
    assert dict(ProcNetTcpCounter(tmp_path).count(ports).by_state) == expected()


@needs_netlink
def test_port_filter_excludes_other_ports(loopback: Loopback, netlink: NetlinkTcpCounter) -> None:
    """Only the requested ports' sockets count, for one port and for several at once."""
    first, second, third = (loopback.listen() for _ in range(3))
    for port, connections in ((first, 1), (second, 2), (third, 3)):
        for _ in range(connections):
            loopback.connect(port)
    proc = ProcNetTcpCounter()
    cases = {
        frozenset({first}): expected(listen=1, established=1),
        frozenset({second}): expected(listen=1, established=2),
        frozenset({first, third}): expected(listen=2, established=4),
        frozenset({first, second, third}): expected(listen=3, established=6),
    }
    for ports, want in cases.items():
        assert dict(settle(netlink, ports, want).by_state) == want, ports
        assert dict(proc.count(ports).by_state) == want, ports


@needs_netlink
def test_loopback_connection_counted_once_from_the_backend_end(loopback: Loopback, netlink: NetlinkTcpCounter) -> None:
    """Two loopback connections to the backend's port count as 2, as `ss sport = :PORT` shows, not 4.

    Both ends live on this host; only the one whose local port is the backend's counts, in every reader and
    in the many-ports path filtered outside the kernel.
    """
    port = loopback.listen()
    loopback.connect(port)
    loopback.connect(port)
    want = expected(listen=1, established=2)
    ports = frozenset({port})
    assert dict(settle(netlink, ports, want).by_state) == want
    assert dict(ProcNetTcpCounter().count(ports).by_state) == want
    many = ports | {loopback.reserve_port() for _ in range(70)}
    assert netlink.count(many).get(TcpState.ESTABLISHED) == 2
    assert ProcNetTcpCounter().count(many).get(TcpState.ESTABLISHED) == 2
    assert netlink.count(ports).total == 2


@needs_netlink
def test_a_leak_towards_an_upstream_service_is_counted_from_the_backends_end(
    loopback: Loopback, netlink: NetlinkTcpCounter
) -> None:
    """The backend as a client of a local service (MediaMTX's API) that closed on it: the backend's sockets sit
    in CLOSE_WAIT. Matched on their remote port they count once each, from the backend's end, in every reader;
    the service's own ends (FIN_WAIT2, its LISTEN) are not counted."""
    service = loopback.listen()
    for _ in range(3):
        client, server = loopback.connect(service)
        server.close()
        assert client.recv(1) == b""  # the backend's end has the service's FIN and never closes: CLOSE_WAIT
    want = expected(close_wait=3)
    none: frozenset[int] = frozenset()
    upstream = frozenset({service})
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    counts = netlink.count(none, upstream)
    while dict(counts.by_state) != want and time.monotonic() < deadline:
        counts = netlink.count(none, upstream)
    assert dict(counts.by_state) == want
    assert dict(ProcNetTcpCounter().count(none, upstream).by_state) == want
    many = frozenset({loopback.reserve_port() for _ in range(70)})
    assert netlink.count(many, upstream).get(TcpState.CLOSE_WAIT) == 3
    assert ProcNetTcpCounter().count(many, upstream).get(TcpState.CLOSE_WAIT) == 3


@needs_netlink
def test_many_ports_filtered_outside_the_kernel_agree(loopback: Loopback, netlink: NetlinkTcpCounter) -> None:
    """Past the in-kernel filter's port limit the counts are the same; bound-only sockets never count."""
    port = loopback.listen()
    loopback.connect(port)
    reserved = {loopback.reserve_port() for _ in range(70)}
    want = expected(listen=1, established=1)
    few = settle(netlink, frozenset({port}), want)
    many = netlink.count(frozenset({port} | reserved))
    from_proc = ProcNetTcpCounter().count(frozenset({port} | reserved))
    assert dict(few.by_state) == want
    # a reserved port may equal the local port of an earlier test's connection still in TIME_WAIT: that socket
    # rightly counts, so TIME_WAIT is compared between the two readers rather than with zero
    assert dict(many.by_state) == dict(from_proc.by_state)
    assert {k: v for k, v in many.by_state.items() if k is not TcpState.TIME_WAIT} == {
        k: v for k, v in want.items() if k is not TcpState.TIME_WAIT
    }


@needs_netlink
def test_netlink_empty_ports_gives_zeros(netlink: NetlinkTcpCounter) -> None:
    """An empty port set gives every state at zero from netlink too."""
    counts = netlink.count(frozenset())
    assert dict(counts.by_state) == expected()
    assert counts.method == "netlink"


def test_make_tcp_counter_prefers_netlink_when_it_works() -> None:
    """The factory picks netlink exactly when sock_diag works here, else /proc."""
    counter = make_tcp_counter(FIXTURES / "dual_stack")
    want = CountMethod.NETLINK if netlink_works() else CountMethod.PROC
    try:
        assert counter.count(frozenset()).method == want
    finally:
        if isinstance(counter, NetlinkTcpCounter):
            counter.close()


# --- failures and fallback ---------------------------------------------------------------------------------


class FlakySocket:
    """A real netlink socket whose send fails while ``switch['broken']`` is set."""

    def __init__(self, switch: dict[str, bool]) -> None:
        self._sock = open_sock_diag_socket()
        self._switch = switch
        self.closed = False

    def send(self, data: bytes, /) -> int:
        """Send, or fail with ENOBUFS while broken."""
        if self._switch["broken"]:
            raise OSError(errno.ENOBUFS, "injected failure")
        return self._sock.send(data)

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
        """Receive from the real socket."""
        return self._sock.recv_into(buffer, nbytes, flags)

    def close(self) -> None:
        """Close the real socket and note it."""
        self.closed = True
        self._sock.close()


@needs_netlink
def test_netlink_falls_back_to_proc_for_good_when_socket_keeps_failing() -> None:
    """When send fails on the socket and on a reopened one, counts come from /proc, and stay there."""
    switch = {"broken": False}
    opened: list[FlakySocket] = []

    def factory() -> FlakySocket:
        opened.append(FlakySocket(switch))
        return opened[-1]

    counter = NetlinkTcpCounter(proc_root=FIXTURES / "dual_stack", socket_factory=factory)
    try:
        ports = frozenset({3000, 9997})
        switch["broken"] = True
        counts = counter.count(ports)
        assert counts.method == "proc"
        assert dict(counts.by_state) == DUAL_STACK_ALL
        assert counter.method is CountMethod.PROC
        assert [sock.closed for sock in opened] == [True, True]
        switch["broken"] = False
        assert counter.count(ports).method == "proc"
    finally:
        counter.close()


NLM_F_MULTI = 2


def diag_message(seq: int, state: int, *, sport: int = 3000, dport: int = 40000, attrs: bytes = b"") -> bytes:
    """Build one SOCK_DIAG_BY_FAMILY reply: nlmsghdr, inet_diag_msg, then ``attrs`` (unpadded)."""
    body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0) + struct.pack(">HH", sport, dport) + bytes(64)
    payload = body + attrs
    return struct.pack("=IHHII", 16 + len(payload), 20, NLM_F_MULTI, seq, 0) + payload


def padded(message: bytes) -> bytes:
    """Pad a netlink message to the 4-byte boundary the next message starts on."""
    return message + bytes(-len(message) % 4)


def done_message(seq: int, error: int = 0) -> bytes:
    """Build NLMSG_DONE carrying ``error`` (0 or a negative errno)."""
    return struct.pack("=IHHIIi", 20, 3, NLM_F_MULTI, seq, 0, error)


def error_message(seq: int, error: int) -> bytes:
    """Build NLMSG_ERROR carrying a negative errno and the request header."""
    return struct.pack("=IHHIIi16x", 36, 2, 0, seq, 0, error)


Script = Callable[[int, int], list[bytes]]


class ScriptedSocket:
    """A netlink socket stand-in: each request is answered by the next script, given (family, seq)."""

    def __init__(self, scripts: list[Script]) -> None:
        self._scripts = deque(scripts)
        self._pending: deque[bytes] = deque()
        self.requests: list[bytes] = []
        self.closed = False

    def send(self, data: bytes, /) -> int:
        """Record the request and queue the next script's chunks for it."""
        self.requests.append(data)
        seq = struct.unpack_from("=I", data, 8)[0]
        self._pending.extend(self._scripts.popleft()(data[16], seq))
        return len(data)

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
        """Hand over the next queued chunk."""
        chunk = self._pending.popleft()
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        """Note that the counter closed it."""
        self.closed = True


def empty_dump(family: int, seq: int) -> list[bytes]:
    """Answer a dump with nothing but NLMSG_DONE."""
    return [done_message(seq)]


def test_multipart_reply_parsed_across_chunks() -> None:
    """Replies spread over chunks (uniform, mixed, unpadded, stale, DONE last) are all counted once."""
    shutdown_attr = struct.pack("=HHB", 5, 8, 0)  # a 5-byte attribute: the message needs padding

    def ipv4_dump(family: int, seq: int) -> list[bytes]:
        assert family == socket.AF_INET
        uniform = b"".join(diag_message(seq, 1) for _ in range(5))
        mixed = (
            diag_message(seq - 1, 1)  # left over from an older request: ignored
            + padded(diag_message(seq, 8, attrs=shutdown_attr))
            + diag_message(seq, 6)
            + diag_message(seq, 12)  # a request socket counts as SYN_RECV
        )
        # Equal lengths but a stale message in the middle: must not be taken as a uniform run.
        stale_inside = diag_message(seq, 1) + diag_message(seq - 1, 1) + diag_message(seq, 1)
        return [uniform, mixed, uniform[: len(uniform) // 5 * 2], stale_inside, done_message(seq)]

    def ipv6_dump(family: int, seq: int) -> list[bytes]:
        assert family == socket.AF_INET6
        return [diag_message(seq, 10) + diag_message(seq, 5) + done_message(seq)]

    sock = ScriptedSocket([empty_dump, empty_dump, ipv4_dump, ipv6_dump])
    counter = NetlinkTcpCounter(combined=False, socket_factory=lambda: sock)
    counts = counter.count(frozenset({3000}))
    assert dict(counts.by_state) == expected(
        established=9, close_wait=1, time_wait=1, syn_recv=1, listen=1, fin_wait2=1
    )
    assert counts.total == 13
    assert counts.method == "netlink"


def test_requests_carry_the_port_filter_bytecode() -> None:
    """A small port set is sent as an INET_DIAG_REQ_BYTECODE attribute: an 8-byte local-port test per port."""
    sock = ScriptedSocket([empty_dump] * 4)
    counter = NetlinkTcpCounter(combined=False, socket_factory=lambda: sock)
    counter.count(frozenset({3000, 9997}))
    request = sock.requests[-1]
    attr_len, attr_type = struct.unpack_from("=HH", request, 16 + 56)
    assert (attr_type, attr_len) == (1, 4 + 12 + 8)
    assert len(request) == 16 + 56 + attr_len
    ops = [struct.unpack_from("=BBH", request, 16 + 56 + 4 + at) for at in range(0, attr_len - 4, 4)]
    assert ops == [
        (11, 8, 12), (0, 0, 3000), (1, 4, 12),
        (11, 8, 12), (0, 0, 9997),
    ]  # fmt: skip


def test_many_ports_filtered_in_userspace() -> None:
    """Past 64 ports the dump is unfiltered and sockets are matched here on their local port."""
    ports = frozenset(range(1000, 1070))

    def dump(family: int, seq: int) -> list[bytes]:
        if family != socket.AF_INET:
            return [done_message(seq)]
        return [
            diag_message(seq, 1, sport=1005, dport=50000)
            + diag_message(seq, 1, sport=50001, dport=1069)
            + diag_message(seq, 1, sport=7, dport=8)
            + done_message(seq)
        ]

    sock = ScriptedSocket([empty_dump, empty_dump, dump, dump])
    counts = NetlinkTcpCounter(combined=False, socket_factory=lambda: sock).count(ports)
    assert dict(counts.by_state) == expected(established=1)
    assert len(sock.requests[-1]) == 16 + 56  # no bytecode attribute


def test_probe_error_reply_raises_oserror() -> None:
    """An NLMSG_ERROR to the probe makes the constructor raise OSError with the kernel's errno."""
    sock = ScriptedSocket([lambda family, seq: [error_message(seq, -errno.EINVAL)]])
    with pytest.raises(OSError) as raised:
        NetlinkTcpCounter(combined=False, socket_factory=lambda: sock)
    assert raised.value.errno == errno.EINVAL
    assert sock.closed


def test_probe_socket_failure_raises_oserror() -> None:
    """A socket that cannot be opened makes the constructor raise the OSError."""

    def refuse() -> ScriptedSocket:
        raise PermissionError(errno.EACCES, "not allowed")

    with pytest.raises(PermissionError):
        NetlinkTcpCounter(combined=False, socket_factory=refuse)


def test_transient_failure_reopens_socket_and_stays_on_netlink() -> None:
    """A dump that fails once (DONE with an error) is retried on a fresh socket, still via netlink."""

    def established_dump(family: int, seq: int) -> list[bytes]:
        return [diag_message(seq, 1) + done_message(seq)]

    first = ScriptedSocket([empty_dump, empty_dump, lambda family, seq: [done_message(seq, -errno.EINTR)]])
    second = ScriptedSocket([established_dump, established_dump])
    sockets = deque([first, second])
    counter = NetlinkTcpCounter(combined=False, socket_factory=sockets.popleft)
    counts = counter.count(frozenset({3000}))
    assert counts.method == "netlink"
    assert dict(counts.by_state) == expected(established=2)
    assert first.closed
    assert not second.closed
    counter.close()
    assert second.closed


def test_fallback_after_reopen_fails_too() -> None:
    """When the reopened socket also errors, the counter answers from /proc and reports it."""

    def failing(family: int, seq: int) -> list[bytes]:
        return [error_message(seq, -errno.ENOMEM)]

    first = ScriptedSocket([empty_dump, empty_dump, failing])
    second = ScriptedSocket([failing])
    sockets = deque([first, second])
    counter = NetlinkTcpCounter(combined=False, proc_root=FIXTURES / "ipv4_only", socket_factory=sockets.popleft)
    counts = counter.count(frozenset({3000}))
    assert counts.method == "proc"
    assert dict(counts.by_state) == expected(listen=1, established=1)
    assert first.closed and second.closed


# --- the family-less dump ----------------------------------------------------------------------------------

TCPDIAG_GETSOCK = 18


def compat_message(seq: int, state: int, *, family: int = socket.AF_INET, kind: int = TCPDIAG_GETSOCK) -> bytes:
    """Build one reply to the family-less request: same layout, the request's message type."""
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", 3000, 40000) + bytes(64)
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_MULTI, seq, 0) + body


def test_one_dump_request_covers_both_families() -> None:
    """By default one family-less TCPDIAG_GETSOCK dump counts both families; other reply types are ignored."""

    def both_families(family: int, seq: int) -> list[bytes]:
        uniform = b"".join(compat_message(seq, 1) for _ in range(4))
        mixed = (
            compat_message(seq, 1, family=socket.AF_INET6)
            + compat_message(seq, 10, family=socket.AF_INET6)
            + compat_message(seq, 6, kind=20)
        )
        return [uniform, mixed, done_message(seq)]

    sock = ScriptedSocket([empty_dump, both_families])
    counter = NetlinkTcpCounter(socket_factory=lambda: sock)
    counts = counter.count(frozenset({3000}))
    assert counter.combined is True
    assert dict(counts.by_state) == expected(established=5, listen=1)
    request = sock.requests[-1]
    length, kind, flags = struct.unpack_from("=IHH", request, 0)
    assert (length, kind, flags) == (len(request), TCPDIAG_GETSOCK, 0x301)
    assert request[16] == socket.AF_UNSPEC
    states = struct.unpack_from("=I", request, 16 + 52)[0]
    assert states == sum(1 << number for number in range(1, 13) if number != 7)
    attr_len, attr_type = struct.unpack_from("=HH", request, 16 + 60)
    assert (attr_type, len(request)) == (1, 16 + 60 + attr_len)


def test_probe_falls_back_to_a_dump_per_family_when_one_dump_is_refused() -> None:
    """A kernel that answers the family-less request with an error gets v2 dumps per family on a new socket."""
    refusing = ScriptedSocket([lambda family, seq: [error_message(seq, -errno.EINVAL)]])
    per_family = ScriptedSocket([empty_dump, empty_dump, empty_dump, empty_dump])
    sockets = deque([refusing, per_family])
    counter = NetlinkTcpCounter(socket_factory=sockets.popleft)
    counter.count(frozenset({3000}))
    assert counter.combined is False
    assert refusing.closed and not per_family.closed
    assert [(request[16], struct.unpack_from("=H", request, 4)[0]) for request in per_family.requests] == [
        (socket.AF_INET, 20),
        (socket.AF_INET6, 20),
    ] * 2


def test_forced_one_dump_does_not_fall_back() -> None:
    """With combined=True a refused family-less probe is an OSError, not a quiet switch of mode."""
    refusing = ScriptedSocket([lambda family, seq: [error_message(seq, -errno.EINVAL)]])
    with pytest.raises(OSError) as raised:
        NetlinkTcpCounter(combined=True, socket_factory=lambda: refusing)
    assert raised.value.errno == errno.EINVAL
    assert refusing.closed
