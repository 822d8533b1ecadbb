"""The composition root, decision engine, scheduler, state, HTTP API, CLI and lifecycle."""

# The one place the version is written: pyproject.toml reads it from here (hatch's dynamic version), and the
# daemon, the command line and /metrics (cctv_optimizer_build_info) report it.
__version__ = "0.1.0"
