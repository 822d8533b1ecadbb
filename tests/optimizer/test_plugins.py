"""Strategies from plugins: the example under contrib/example-plugin, installed with pip into a directory of its
own and found through its entry point, is built like a built-in (its Options from ``strategies.loadnote.*``,
checked like every setting) and acts in a round."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from config.errors import ConfigError
from config.loader import load_settings
from config.settings import Mode
from metrics.signals import is_known_signal
from metrics.window import Windows
from optimizer import app
from optimizer.cli import EX_CONFIG, check_config
from optimizer.clock import FakeClock
from optimizer.registry import build_strategies, plugin_classes
from strategies.base import Built, StrategyDeps, TriggerSpec
from testbed.harness import TestbedProcess
from tests.harness import daemon_env, running_daemon
from tests.optimizer.fakes import ScriptedStrategy, SnapshotBuilder

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "contrib" / "example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, installed by pip (no index, no build isolation: offline) into its own directory."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        timeout=300,
    )
    return target


@pytest.fixture
def plugin_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin's directory on sys.path for one test (where importlib.metadata looks for entry points)."""
    monkeypatch.syspath_prepend(str(installed))
    yield installed
    for name in [m for m in sys.modules if m.startswith("cctv_optimizer_example")]:
        del sys.modules[name]


def deps() -> StrategyDeps:
    """Readers for building strategies outside a daemon (none of them is used by the example)."""
    return StrategyDeps(backend=None, hls=None, process=None, windows=Windows(10), monotonic=lambda: 0.0)


def test_the_example_is_found_through_its_entry_point(plugin_path: Path) -> None:
    """`loadnote` resolves to the installed LoadNoteStrategy, from the plugin's own directory."""
    found = plugin_classes(["loadnote"])
    assert list(found) == ["loadnote"]
    assert found["loadnote"].__module__ == "cctv_optimizer_example"
    assert Path(sys.modules["cctv_optimizer_example"].__file__ or "").is_relative_to(plugin_path)


def test_a_plugin_gets_its_options_and_mode_from_the_configuration(plugin_path: Path, tmp_path: Path) -> None:
    """CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__* and strategies.loadnote.* in the file reach the plugin's Options,
    mode and enabled included (a plugin used to get no options and a hard-coded mode)."""
    config = tmp_path / "c.yaml"
    config.write_text("strategies:\n  loadnote:\n    load_per_core: 2.5\n")
    loaded = load_settings(
        {
            "CCTV_OPTIMIZER_STRATEGIES__PLUGINS": "loadnote",
            "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__NOTE_FILE": str(tmp_path / "notes.txt"),
            "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__MODE": "dry_run",
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        },
        config,
    )
    built = {b.strategy.name: b for b in build_strategies(loaded.settings, deps())}
    note = built["loadnote"]
    assert note.mode is Mode.DRY_RUN and note.enabled
    assert [(t.signal, t.enter) for t in note.strategy.triggers({})] == [("load_per_core", 2.5)]


def test_a_plugins_wrong_options_are_configuration_errors_naming_each(plugin_path: Path, tmp_path: Path) -> None:
    """A bad value and a misspelt field of the plugin's options: one ConfigError naming both, with the usual
    wording (unit, example, did you mean); options for a plugin that is not listed are unknown settings."""
    loaded = load_settings(
        {
            "CCTV_OPTIMIZER_STRATEGIES__PLUGINS": "loadnote",
            "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__LOAD_PER_CORE": "high",
            "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__NOTE_FIL": "/tmp/x",
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        }
    )
    with pytest.raises(ConfigError) as wrong:
        build_strategies(loaded.settings, deps())
    text = str(wrong.value)
    assert "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__LOAD_PER_CORE=high: expected a number" in text
    assert "strategies.loadnote.note_fil: unknown setting; did you mean note_file?" in text
    with pytest.raises(ConfigError) as unlisted:
        load_settings(
            {
                "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__NOTE_FILE": "/tmp/x",
                "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
            }
        )
    assert "no strategy or plugin 'loadnote'" in str(unlisted.value)


async def test_the_plugin_acts_in_a_round_of_a_running_daemon(
    plugin_path: Path, testbed: TestbedProcess, tmp_path: Path
) -> None:
    """With the load per core over the plugin's line, a round of `loadnote` appends its line and records the
    decision like any other strategy's."""
    notes = tmp_path / "notes.txt"
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_STRATEGIES__PLUGINS="loadnote",
        CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__NOTE_FILE=str(notes),
        CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__LOAD_PER_CORE="1.5",
    )
    clock = FakeClock()
    async with running_daemon(env, clock=clock) as daemon:
        daemon.engine.refresh = None  # plan from the injected sample, not a fresh one
        assert "loadnote" in daemon.engine.runtimes
        snapshots = SnapshotBuilder(clock)
        daemon.engine.on_snapshot(snapshots.build(cpu=0.5, memory=0.1, load=(8.0, 4.0, 2.0)))  # 2 per core on 4
        result = await daemon.engine.request_round(trigger="manual", strategy="loadnote", manual=True)
        row = daemon.store.decision(result.decision_ids[0])
    assert row is not None and (row.strategy, row.action, row.outcome) == ("loadnote", "note", "applied")
    assert notes.read_text().startswith("load per core ")


def test_check_config_checks_a_plugins_options(plugin_path: Path, tmp_path: Path) -> None:
    """check-config loads the plugins and checks their options: a wrong one is a problem (exit 78), the right
    ones pass."""
    env = {
        "CCTV_OPTIMIZER_STRATEGIES__PLUGINS": "loadnote",
        "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__LOAD_PER_CORE": "-1",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
    }
    out = io.StringIO()
    assert check_config(None, env, out, use_env_file=False) == EX_CONFIG
    assert "CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__LOAD_PER_CORE=-1: must be at least" in out.getvalue()
    env["CCTV_OPTIMIZER_STRATEGIES__LOADNOTE__LOAD_PER_CORE"] = "2"
    out = io.StringIO()
    assert check_config(None, env, out, use_env_file=False) == 0, out.getvalue()


def test_every_built_in_trigger_watches_a_known_signal() -> None:
    """The built-ins' triggers (with their default options) all name signals some source or the engine measures."""
    loaded = load_settings({"CCTV_OPTIMIZER_BACKEND__DATABASE": "/nonexistent/cctv.db"}, check_files=False)
    built = build_strategies(loaded.settings, deps())
    names = {spec.signal for b in built for spec in b.strategy.triggers({})}
    assert names and all(is_known_signal(n) for n in names), sorted(n for n in names if not is_known_signal(n))


async def test_a_trigger_on_a_signal_nothing_measures_is_named_at_start(
    testbed: TestbedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strategy watching a misspelt signal (it would never arm) gets a warning at start naming it and the near
    name; the built-ins get none."""
    typo = ScriptedStrategy("typo", triggers=(TriggerSpec(signal="load_per_cor", enter=1.0, exit=0.9),))
    monkeypatch.setattr(
        app, "build_strategies", lambda settings, deps: [*build_strategies(settings, deps), Built(typo, None, True)]
    )
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(daemon_env(testbed, tmp_path / "state")):
            pass
    warned = [(e["strategy"], e["signal"], e["hint"]) for e in logs if e["event"] == "trigger_unknown_signal"]
    assert warned == [("typo", "load_per_cor", "did you mean load_per_core?")]
