"""The dashboard page served at ``GET /``: one self-contained HTML file with inline CSS, JS and SVG charts."""

from __future__ import annotations

from importlib.resources import files


def load_dashboard() -> bytes:
    """The dashboard page's bytes, read from the installed package."""
    return files(__name__).joinpath("index.html").read_bytes()
