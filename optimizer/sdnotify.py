"""The sd_notify(3) protocol: readiness, status, watchdog and lifecycle messages to systemd."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType

__all__ = ["SystemdNotifier"]

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _socket_address(raw: str | None) -> str | None:
    """Turn a NOTIFY_SOCKET value into an AF_UNIX address, or None when it is not one we can use."""
    if not raw:
        return None
    if raw.startswith("@"):
        # Linux abstract namespace: systemd writes the leading NUL as '@'.
        return "\0" + raw[1:] if len(raw) > 1 else None
    if raw.startswith("/"):
        return raw
    # Relative paths are invalid per sd_notify(3); other schemes (vsock:) are not for this daemon.
    return None


def _format_value(value: object) -> str:
    """Render one field value; a newline would end the field early and inject another, so it is flattened."""
    text = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return text.replace("\r", " ").replace("\n", " ")


class SystemdNotifier:
    """Sends sd_notify(3) datagrams to the socket systemd names in NOTIFY_SOCKET.

    The environment is read once, at construction. Outside systemd (no NOTIFY_SOCKET) every method is a
    no-op returning False. Sending never raises and never blocks: a failure returns False and the caller
    decides whether to log it. Field names are checked, because a wrong one is a programming error.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from ``environ`` (default: os.environ)."""
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._pid = os.getpid() if pid is None else pid
        self._monotonic_ns = monotonic_ns
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when a usable notify socket was given, i.e. the daemon runs under systemd Type=notify."""
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=value`` lines; True when systemd's socket accepted it."""
        for name in fields:
            if not _FIELD_NAME.match(name):
                raise ValueError(f"invalid sd_notify field name: {name!r}")
        if self._address is None or not fields:
            return False
        message = "".join(f"{name}={_format_value(value)}\n" for name, value in fields.items())
        try:
            sock = self._connect()
            # MSG_DONTWAIT: a stalled systemd must never stall the event loop; a full queue is a failed send.
            sock.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self._address)
        except OSError:
            self.close()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up (or a reload) has finished, optionally with a status line."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Ping the service watchdog; call it from the loop whose liveness it should prove."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the daemon is shutting down."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """Tell systemd a configuration reload started; send ``ready()`` again when it is done."""
        # MONOTONIC_USEC lets systemd tell this reload apart from an earlier one (sd_notify(3)).
        usec = self._monotonic_ns() // 1000
        if status is None:
            return self.notify(RELOADING=1, MONOTONIC_USEC=usec)
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec=), or None when no watchdog is set for us."""
        if self._watchdog_usec is None:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid is not None:
            # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited it is not.
            try:
                if int(self._watchdog_pid) != self._pid:
                    return None
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; a later message opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> SystemdNotifier:
        """Use as a context manager that closes the socket on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the socket."""
        self.close()

    def _connect(self) -> socket.socket:
        """Return the datagram socket, creating it on first use."""
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return self._socket
