"""The metrics package's one exception."""

from __future__ import annotations


class SamplingError(Exception):
    """A source could not be read; the message says why, in words an operator understands."""
