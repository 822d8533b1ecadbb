"""The small actions that write: SQLite checkpoints, segment pruning, cache calls, renice, session expiry."""
