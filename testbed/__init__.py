"""A stand-in for the RAF NET CCTV backend: HTTP API, SQLite file, HLS directory, MediaMTX API.

Start it with `python -m testbed --listen 127.0.0.1:0 --data-dir DIR`; from tests use
`testbed.harness.TestbedProcess`. Stdlib and aiohttp only.
"""

from __future__ import annotations
