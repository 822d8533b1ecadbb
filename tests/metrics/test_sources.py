"""The Source contract: a source defined only here, added to the list, is built, sampled, shown and fails like the
built-in ones; and nothing but the list names the sources."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

import pytest

from config.settings import Settings
from config.units import Unit
from metrics.errors import SamplingError
from metrics.sampler import Sampler
from metrics.signals import table
from metrics.snapshot import Snapshot
from metrics.source import AsyncSource, BlockingSource, Reading, Signal, Source, SourceDeps, Sources
from metrics.sources import SOURCE_NAMES, SOURCES, TcpSource, build_sources
from optimizer.executors import SAMPLER_THREADS
from tests.metrics.test_sampler import FakeTcp

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 0.2
GATE_LIMIT_S = 10.0
SETTLE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunQueueSample:
    """The running-process count of /proc/loadavg's fourth field (``running/total``)."""

    running: int

    def signal_values(self, wall_time: float) -> Mapping[str, float]:
        """Its one signal."""
        del wall_time
        return MappingProxyType({"toy_running_processes": float(self.running)})


class RunQueueSource(BlockingSource[RunQueueSample]):
    """A source that exists only in this test module: /proc/loadavg's running processes, read in a thread."""

    name = "toy"
    signals = (Signal("toy_running_processes", "Running processes", Unit.COUNT, ""),)
    # the file it reads: a test points a subclass at a file of its own
    file = Path("/proc/loadavg")
    # set by a test to hold the read until it is opened
    gate: threading.Event | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls = 0

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self:
        """Always read."""
        del settings, deps
        return cls(cls.file)

    def read(self, at: Reading) -> RunQueueSample:
        """One reading of the file."""
        del at
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(GATE_LIMIT_S)
        try:
            fields = self.path.read_text(encoding="ascii").split()
        except OSError as exc:
            raise SamplingError(f"{self.path} unreadable: {exc.strerror}") from exc
        return RunQueueSample(running=int(fields[3].split("/")[0]))


@dataclass(frozen=True, slots=True)
class Echo:
    """What the dependent toy saw of the first toy's part."""

    seen: RunQueueSample | None


class EchoSource(AsyncSource[Echo]):
    """A toy on the event loop that needs the first toy: it runs after it and reads its part."""

    name = "echo"
    needs = ("toy",)

    @classmethod
    def from_config(cls, settings: Settings, deps: SourceDeps) -> Self:
        """Always read."""
        del settings, deps
        return cls()

    async def read(self, at: Reading) -> Echo:
        """Hand back the toy's part of this sample."""
        await asyncio.sleep(0)
        return Echo(at.part(RunQueueSource))


@pytest.fixture
def toy(tmp_path: Path) -> type[RunQueueSource]:
    """The toy source, reading a loadavg file of this test's own (three processes running)."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.58 0.59 3/467 12345\n", encoding="ascii")

    class Toy(RunQueueSource):
        file = loadavg

    return Toy


def toy_sampler(*extra: type[Source[Any]]) -> tuple[Sampler, Sources]:
    """A sampler over the real list plus ``extra``, built the way the daemon builds its own (no database, no
    backend: the host and TCP sources are the built-ins left)."""
    sources = build_sources(Settings(), SourceDeps(tcp_counter=FakeTcp()), (*SOURCES, *extra))
    return Sampler(sources, source_timeout_seconds=TIMEOUT_S), sources


def down(snap: Snapshot) -> dict[str, str | None]:
    """Sources that are down, with their error."""
    return {name: status.error for name, status in snap.sources.items() if not status.up}


async def test_a_toy_source_added_to_the_list_is_sampled_and_shown(toy: type[RunQueueSource]) -> None:
    """Built from the configuration, read, its status among the others', its part and its signal in the snapshot."""
    sampler, sources = toy_sampler(toy)
    assert {"host", "tcp"} < set(sources.names)  # the built-ins this configuration leaves in, and the toy, last
    assert sources.names[-1] == "toy"
    snap = await sampler.sample()
    assert down(snap) == {}
    assert set(snap.sources) == set(sources.names)
    assert snap.part(RunQueueSource) == RunQueueSample(running=3)
    assert snap.signals()["toy_running_processes"] == 3.0
    assert {row.name for row in toy.signals} <= set(snap.signals())
    assert snap.host is not None and snap.part(RunQueueSource) is snap.parts["toy"]


async def test_a_toy_source_that_fails_is_down_alone(toy: type[RunQueueSource]) -> None:
    """A SamplingError is the status's error; the part is missing, its signal too, the other sources answer."""
    sampler, _ = toy_sampler(toy)
    toy.file.unlink()
    snap = await sampler.sample()
    assert down(snap) == {"toy": f"{toy.file} unreadable: No such file or directory"}
    assert snap.part(RunQueueSource) is None
    assert "toy_running_processes" not in snap.signals()
    assert snap.host is not None and snap.tcp is not None


async def test_a_toy_source_that_hangs_times_out_and_is_not_started_twice(toy: type[RunQueueSource]) -> None:
    """A read past the timeout is timed out, the next sample skips it while it runs, then it is read again."""
    sampler, sources = toy_sampler(toy)
    built = sources.find(toy)
    assert built is not None
    built.gate = threading.Event()
    try:
        first = await sampler.sample()
        second = await sampler.sample()
    finally:
        built.gate.set()
    assert down(first) == {"toy": f"timed out after {TIMEOUT_S:g} s"}
    assert down(second).get("toy") == "previous read still running"
    assert built.calls == 1
    deadline = time.monotonic() + SETTLE_S
    while not (snap := await sampler.sample()).sources["toy"].up:
        assert time.monotonic() < deadline, snap.sources["toy"].error
        await asyncio.sleep(0.01)
    assert snap.part(RunQueueSource) == RunQueueSample(running=3)


async def test_a_source_runs_after_what_it_needs_and_reads_its_part(toy: type[RunQueueSource]) -> None:
    """The dependent toy runs in a later phase and sees the first toy's part of the same sample; when that one is
    down it still runs, and sees nothing. (TCP, whose process source is not configured here, runs at once.)"""
    sampler, sources = toy_sampler(EchoSource, toy)
    phase = {s.name: n for n, sources_in in enumerate(sources.phases) for s in sources_in}
    assert (phase["host"], phase["tcp"], phase["toy"], phase["echo"]) == (0, 0, 0, 1)
    snap = await sampler.sample()
    assert snap.part(EchoSource) == Echo(RunQueueSample(running=3))
    toy.file.unlink()
    snap = await sampler.sample()
    assert down(snap) == {"toy": f"{toy.file} unreadable: No such file or directory"}
    assert snap.part(EchoSource) == Echo(None)


class Closing(EchoSource):
    """A toy that records its close, or fails it."""

    name = "closing"
    fail = False

    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        """Count the close, then fail if asked to."""
        self.closed += 1
        if self.fail:
            raise OSError("already gone")


@dataclass
class ClosableTcp(FakeTcp):
    """A TCP counter with a close, like the netlink one."""

    closed: int = 0

    def close(self) -> None:
        """Count the close."""
        self.closed += 1


async def test_closing_the_sampler_closes_what_each_source_opened_itself() -> None:
    """Every source is closed, also after one fails to; a TCP counter is closed by the source that made it, never
    when it was handed in."""

    class Other(Closing):
        name = "other"

    failing, fine = Closing(), Other()
    failing.fail = True
    made, given = ClosableTcp(), ClosableTcp()
    own = TcpSource(made, owns_counter=True)
    shared = build_sources(Settings(), SourceDeps(tcp_counter=given)).find(TcpSource)
    assert shared is not None
    await Sampler(Sources([failing, fine, own]), source_timeout_seconds=TIMEOUT_S).close()
    await Sampler(Sources([shared]), source_timeout_seconds=TIMEOUT_S).close()
    assert (failing.closed, fine.closed, made.closed, given.closed) == (1, 1, 1, 0)


def test_a_sources_declared_signals_join_the_table_under_its_name() -> None:
    """The rows a source declares are in the signal table built with it, labelled with its name."""
    rows = {row.name: row for row in table((*SOURCES, RunQueueSource))}
    assert rows["toy_running_processes"] == Signal("toy_running_processes", "Running processes", Unit.COUNT, "toy")


def test_sources_with_the_same_name_needing_each_other_or_a_missing_one_are_refused(tmp_path: Path) -> None:
    """A list that cannot be sampled is refused when it is built, not on the first sample."""
    toy = RunQueueSource(tmp_path)
    with pytest.raises(ValueError, match="named more than once: toy"):
        Sources([toy, RunQueueSource(tmp_path)])

    class Chicken(EchoSource):
        name = "chicken"
        needs = ("egg",)

    class Egg(EchoSource):
        name = "egg"
        needs = ("chicken",)

    with pytest.raises(ValueError, match="in a circle: chicken -> egg -> chicken"):
        Sources([Chicken(), Egg()])

    class Orphan(EchoSource):
        name = "orphan"
        needs = ("toys",)

    with pytest.raises(ValueError, match="do not exist: orphan needs toys"):
        build_sources(Settings(), SourceDeps(), (*SOURCES, RunQueueSource, Orphan))


def test_the_sampler_has_a_thread_for_each_blocking_source() -> None:
    """The pool the blocking reads run on follows from the list."""
    assert SAMPLER_THREADS == sum(1 for s in SOURCES if issubclass(s, BlockingSource)) >= 1


def source_name_lists(path: Path) -> list[int]:
    """Lines of ``path`` where a tuple, list, set or dict's keys spell out half the source names or more.

    A list of the snapshot's typed fields (``backend``, not ``process``) is not one: a new source adds no field.
    """
    names = set(SOURCE_NAMES)
    fields = {f.name for f in dataclasses.fields(Snapshot)}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.expr):
            continue
        items: list[ast.expr | None] = []
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = list(node.elts)
        elif isinstance(node, ast.Dict):
            items = list(node.keys)
        spelt = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
        if 2 * len(spelt & names) >= len(names) and not ("backend" in spelt and spelt <= fields):
            found.append(node.lineno)
    return found


def test_no_module_lists_the_source_names_by_hand() -> None:
    """Everything that names every source takes the names from ``SOURCES`` (``SOURCE_NAMES``), so a new source is
    one module and one entry there."""
    files = [
        p
        for d in ("config", "metrics", "strategies", "optimizer", "testbed", "tests", "bench")
        for p in (ROOT / d).rglob("*.py")
    ]
    assert len(files) > 100
    offenders = {str(p.relative_to(ROOT)): lines for p in files if (lines := source_name_lists(p))}
    assert offenders == {}


def test_the_hand_list_check_finds_a_hand_list(tmp_path: Path) -> None:
    """The check above is not green because it cannot see one."""
    bad = tmp_path / "bad.py"
    half = SOURCE_NAMES[: (len(SOURCE_NAMES) + 1) // 2]
    bad.write_text(
        f"SHOWN = {SOURCE_NAMES!r}\n"
        f"SOME = {half[:-1]!r}\n"
        f"D = {dict.fromkeys(half, 1)!r}\n"
        'FIELDS = ("host", "backend", "tcp", "probe", "cache", "own")\n'
    )
    assert source_name_lists(bad) == [1, 3]
