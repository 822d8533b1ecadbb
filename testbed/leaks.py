"""A deliberate CLOSE_WAIT leak: client sockets whose peer has closed but which are never closed here."""

from __future__ import annotations

import socket
import time
from pathlib import Path

CLOSE_WAIT_HEX = "08"


def count_close_wait(remote_port: int, *, proc_root: Path = Path("/proc")) -> int:
    """Sockets in CLOSE_WAIT whose remote port is `remote_port` (from /proc/net/tcp and tcp6)."""
    total = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_root / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != CLOSE_WAIT_HEX:
                continue
            _, _, port_hex = fields[2].rpartition(":")
            if int(port_hex, 16) == remote_port:
                total += 1
    return total


class CloseWaitLeak:
    """Holds client connections to a server that has closed its side (blocking calls)."""

    def __init__(self) -> None:
        """No sockets held."""
        self._sockets: list[socket.socket] = []

    @property
    def held(self) -> int:
        """Number of sockets being held open."""
        return len(self._sockets)

    def open(self, host: str, port: int, count: int, *, timeout: float = 5.0) -> int:
        """Open `count` connections, ask the server to close each, and keep our end; return how many."""
        request = f"GET /v3/paths/list HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        opened = 0
        deadline = time.monotonic() + timeout
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            self._sockets.append(sock)
            opened += 1
            sock.sendall(request)
            # Read to end of stream: EOF means the server's FIN arrived, so our side is in CLOSE_WAIT.
            while True:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                if not sock.recv(65536):
                    break
        return opened

    def release(self) -> int:
        """Close every held socket; return how many were closed."""
        count = len(self._sockets)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        return count
