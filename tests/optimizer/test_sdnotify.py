"""Tests for the sd_notify client, against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer.sdnotify import SystemdNotifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, str(path)
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, with the '@name' form systemd puts in NOTIFY_SOCKET."""
    name = f"cctv-optimizer-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def recv(sock: socket.socket) -> bytes:
    """Receive one datagram (bounded by the socket timeout)."""
    return sock.recv(4096)


def time_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, read the way systemd does."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_ready_sends_exact_datagram(receiver: tuple[socket.socket, str]) -> None:
    """ready() sends exactly READY=1 to a filesystem socket."""
    sock, address = receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled is True
        assert notifier.ready() is True
        assert recv(sock) == b"READY=1\n"


def test_ready_with_status(receiver: tuple[socket.socket, str]) -> None:
    """ready(status) carries READY=1 and STATUS in one datagram."""
    sock, address = receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.ready("mode=enforce") is True
        assert recv(sock) == b"READY=1\nSTATUS=mode=enforce\n"


def test_abstract_socket(abstract_receiver: tuple[socket.socket, str]) -> None:
    """An '@name' NOTIFY_SOCKET reaches the abstract-namespace socket."""
    sock, address = abstract_receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.watchdog() is True
        assert recv(sock) == b"WATCHDOG=1\n"


def test_each_message_kind(receiver: tuple[socket.socket, str]) -> None:
    """status, watchdog and stopping send their documented fields, in order."""
    sock, address = receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.status("round 3: 1 change") is True
        assert recv(sock) == b"STATUS=round 3: 1 change\n"
        assert notifier.watchdog() is True
        assert recv(sock) == b"WATCHDOG=1\n"
        assert notifier.stopping() is True
        assert recv(sock) == b"STOPPING=1\n"
        assert notifier.stopping("draining") is True
        assert recv(sock) == b"STOPPING=1\nSTATUS=draining\n"


def test_reloading_carries_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    """reloading() sends RELOADING=1 with MONOTONIC_USEC from the monotonic clock in microseconds."""
    sock, address = receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}, monotonic_ns=lambda: 123_456_789_999) as notifier:
        assert notifier.reloading() is True
        assert recv(sock) == b"RELOADING=1\nMONOTONIC_USEC=123456789\n"
        assert notifier.reloading("reloading config") is True
        assert recv(sock) == b"RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading config\n"


def test_reloading_default_clock_is_clock_monotonic(receiver: tuple[socket.socket, str]) -> None:
    """Without an injected clock MONOTONIC_USEC is CLOCK_MONOTONIC, the clock systemd compares it with."""
    sock, address = receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        before = time_usec()
        assert notifier.reloading() is True
        after = time_usec()
    fields = dict(line.split("=", 1) for line in recv(sock).decode().splitlines())
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_notify_arbitrary_fields_and_newlines(receiver: tuple[socket.socket, str]) -> None:
    """notify(**fields) keeps argument order and flattens newlines so a value cannot inject a field."""
    sock, address = receiver
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.notify(STATUS="a\nREADY=1", ERRNO=5, READY=True) is True
        assert recv(sock) == b"STATUS=a READY=1\nERRNO=5\nREADY=1\n"


def test_invalid_field_name_is_rejected() -> None:
    """A malformed field name is a programming error, reported even outside systemd."""
    notifier = SystemdNotifier({})
    with pytest.raises(ValueError, match="field name"):
        notifier.notify(ready=1)


@pytest.mark.parametrize(
    "environ",
    [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"NOTIFY_SOCKET": "@"}],
    ids=["unset", "empty", "relative", "bare-at"],
)
def test_noop_outside_systemd(environ: dict[str, str]) -> None:
    """Without a usable NOTIFY_SOCKET every message is a no-op that returns False."""
    notifier = SystemdNotifier(environ)
    assert notifier.enabled is False
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert notifier.notify(READY=1) is False


def test_send_error_returns_false_and_recovers(tmp_path: Path) -> None:
    """A socket nobody listens on gives False, not an exception; a later listener gets the next message."""
    path = tmp_path / "late.sock"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready() is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        assert notifier.watchdog() is True
        assert recv(sock) == b"WATCHDOG=1\n"
    finally:
        sock.close()
        notifier.close()


def test_full_receiver_queue_does_not_block(receiver: tuple[socket.socket, str]) -> None:
    """When systemd stops reading, sends fail fast with False instead of blocking the caller."""
    _, address = receiver
    results = []
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        # The receiver's queue holds a bounded number of datagrams (net.unix.max_dgram_qlen, 512 by default).
        for _ in range(5000):
            results.append(notifier.status("x" * 1000))
            if not results[-1]:
                break
    assert results[0] is True
    assert results[-1] is False


def test_environment_is_read_once(receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """NOTIFY_SOCKET is taken from os.environ at construction; later changes do not redirect messages."""
    sock, address = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with SystemdNotifier() as notifier:
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert notifier.ready() is True
        assert recv(sock) == b"READY=1\n"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "90000000"}, 45.0),
        ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": "4242"}, 45.0),
        ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["usec", "own-pid", "other-pid", "bad-pid", "zero", "negative", "garbage", "unset"],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """watchdog_interval() is half of WATCHDOG_USEC in seconds, only for the process WATCHDOG_PID names."""
    assert SystemdNotifier(environ, pid=4242).watchdog_interval() == expected


def test_watchdog_interval_defaults_to_own_pid() -> None:
    """Without an injected pid the WATCHDOG_PID check compares with this process's pid."""
    environ = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(environ).watchdog_interval() == 1.5
