"""Chaos matrix: the daemon under faults of the backend, its database, the HLS directory, its state and signals."""
