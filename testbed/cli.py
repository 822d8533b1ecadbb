"""Entry point of `python -m testbed`: start the stand-in backend and print its environment line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from testbed.backend import build_app
from testbed.runtime import Testbed
from testbed.settings import Settings, parse_settings

log = logging.getLogger("testbed")


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; 0 on a clean stop, 1 when start-up fails."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    testbed = Testbed(settings)
    try:
        await testbed.start(build_app(testbed))
    except OSError as exc:
        log.error("start-up failed: %s", exc)
        await testbed.stop()
        return 1
    # The first stdout line is the contract with whoever started us: flush it at once.
    sys.stdout.write(testbed.env_line() + "\n")
    sys.stdout.flush()
    await stop.wait()
    log.info("signal received, stopping")
    await testbed.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, set up stderr logging and serve."""
    settings = parse_settings(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s testbed[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    if not settings.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return asyncio.run(serve(settings))
