"""A CPU-burning stand-in for a recorder `ffmpeg`, run as a script with argv[0] set to "ffmpeg".

Stdlib only and self-contained: it is started as `ffmpeg <this file> <ffmpeg-like options> OUTPUT`
through the Python executable, so /proc/PID/cmdline reads like the real recorder's. It exits by
itself when its parent (the testbed, TESTBED_RECORDER_PARENT) goes away, when the output's directory disappears, or after
TESTBED_RECORDER_MAX_SECONDS (at most 900 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

HARD_LIMIT_SECONDS = 900.0
PR_SET_NAME = 15


def _set_process_name(name: bytes) -> None:
    """Make /proc/PID/comm read `name`, so tools that show the short name see ffmpeg."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        # Cosmetic only: the command line is what detection relies on.
        return


def _limit_seconds() -> float:
    """Lifetime from the environment, capped at the hard limit."""
    try:
        wanted = float(os.environ.get("TESTBED_RECORDER_MAX_SECONDS", HARD_LIMIT_SECONDS))
    except ValueError:
        wanted = HARD_LIMIT_SECONDS
    return max(0.0, min(wanted, HARD_LIMIT_SECONDS))


def main() -> int:
    """Burn CPU and grow the output file until a stop condition holds."""
    _set_process_name(b"ffmpeg")
    # The spawner names itself: if it died before we got here we are already orphaned.
    try:
        parent = int(os.environ["TESTBED_RECORDER_PARENT"])
    except (KeyError, ValueError):
        parent = os.getppid()
    output = sys.argv[-1]
    deadline = time.monotonic() + _limit_seconds()
    next_write = 0.0
    counter = 0
    while time.monotonic() < deadline:
        # About 20 ms of pure arithmetic between checks keeps one core busy yet reacts fast.
        burst_end = time.monotonic() + 0.02
        while time.monotonic() < burst_end:
            counter = (counter * 1103515245 + 12345) & 0x7FFFFFFF
        if os.getppid() != parent:
            return 0
        now = time.monotonic()
        if now >= next_write:
            next_write = now + 1.0
            try:
                with open(output, "ab") as handle:
                    handle.write(counter.to_bytes(4, "big") * 256)
            except OSError:
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
