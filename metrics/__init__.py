"""Read-only sources: host, backend process, TCP, HTTP probe, cache, SQLite, HLS, MediaMTX; snapshots and windows."""
