"""The composition root, decision engine, scheduler, state, HTTP API, CLI and lifecycle."""
