"""The configuration package's one exception, listing every problem at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with the configuration: which setting, why, and where the value came from."""

    path: str
    message: str
    source: str
    # how the operator wrote it (``CPU_THRESHOLD``, or the YAML key) and the value given, when there was one
    name: str | None = None
    value: str | None = None

    def __str__(self) -> str:
        head = f"{self.name}={self.value}" if self.name is not None and self.value is not None else self.path
        return f"{head}: {self.message} ({self.source})"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` names each setting that is wrong."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))
