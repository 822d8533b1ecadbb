"""Configuration loading: defaults, YAML, environment, precedence, validation and secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, Mode, load_settings, read_secret
from config.loader import iter_leaves, parse_listen


def test_defaults_match_the_specification() -> None:
    """With nothing configured, the specification's defaults apply."""
    s = load_settings({}).settings
    assert s.enable_performance_optimization is True
    assert s.optimization_interval == 30000
    assert s.memory_threshold == 0.8
    assert s.cpu_threshold == 0.9
    assert s.gc_threshold == 0.7
    assert (s.enable_gc, s.enable_connection_pooling, s.enable_caching) == (True, True, True)
    assert s.log_level == "info"
    assert s.api.listen == "127.0.0.1:9877"
    assert s.backend.url == "http://127.0.0.1:3000"
    assert s.backend.hls_directory == Path("/dev/shm/mediamtx-live")
    assert s.backend.mediamtx_url == "http://127.0.0.1:9997"
    assert s.sample_interval == 5000
    assert s.state_directory == Path("state")


@pytest.mark.parametrize(
    ("env", "attr", "expected"),
    [
        ({"ENABLE_PERFORMANCE_OPTIMIZATION": "false"}, "enable_performance_optimization", False),
        ({"OPTIMIZATION_INTERVAL": "10000"}, "optimization_interval", 10000),
        ({"MEMORY_THRESHOLD": "0.5"}, "memory_threshold", 0.5),
        ({"CPU_THRESHOLD": "0.75"}, "cpu_threshold", 0.75),
        ({"GC_THRESHOLD": "0.6"}, "gc_threshold", 0.6),
        ({"ENABLE_GC": "no"}, "enable_gc", False),
        ({"ENABLE_CONNECTION_POOLING": "0"}, "enable_connection_pooling", False),
        ({"ENABLE_CACHING": "off"}, "enable_caching", False),
        ({"LOG_LEVEL": "DEBUG"}, "log_level", "debug"),
        ({"CCTV_OPTIMIZER_SAMPLE_INTERVAL": "2000"}, "sample_interval", 2000),
    ],
)
def test_specification_variables(env: dict[str, str], attr: str, expected: object) -> None:
    """Each specification variable sets its setting by its exact name."""
    loaded = load_settings(env)
    assert getattr(loaded.settings, attr) == expected
    assert loaded.sources[attr] == f"env {next(iter(env))}"


@pytest.mark.parametrize(
    ("env", "getter", "expected"),
    [
        ({"CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:9999"}, lambda s: s.api.listen, "127.0.0.1:9999"),
        ({"CCTV_OPTIMIZER_BACKEND__URL": "http://127.0.0.1:4000"}, lambda s: s.backend.url, "http://127.0.0.1:4000"),
        ({"CCTV_OPTIMIZER_BACKEND__DATABASE": "/x/cctv.db"}, lambda s: s.backend.database, Path("/x/cctv.db")),
        ({"CCTV_OPTIMIZER_BACKEND__PROCESS": "port:3000"}, lambda s: s.backend.process, "port:3000"),
        ({"CCTV_OPTIMIZER_STATE__DIRECTORY": "/var/lib/x"}, lambda s: s.state_directory, Path("/var/lib/x")),
        ({"STATE_DIRECTORY": "/var/lib/cctv-optimizer"}, lambda s: s.state_directory, Path("/var/lib/cctv-optimizer")),
        (
            {"CCTV_OPTIMIZER_BACKEND__HOT_ENDPOINTS": "/a, /b"},
            lambda s: s.backend.hot_endpoints,
            ("/a", "/b"),
        ),
        (
            {"CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": "1_048_576"},
            lambda s: s.strategies.database.wal_limit_bytes,
            1048576,
        ),
        ({"CCTV_OPTIMIZER_ENGINE__MODE": "dry_run"}, lambda s: s.engine.mode, Mode.DRY_RUN),
        (
            {"CCTV_OPTIMIZER_STRATEGIES__CPU__MODE": "observe"},
            lambda s: s.strategies.cpu.mode,
            Mode.OBSERVE,
        ),
    ],
)
def test_sectioned_variables(env: dict[str, str], getter: object, expected: object) -> None:
    """CCTV_OPTIMIZER_<SECTION>__<KEY> variables set nested settings."""
    assert callable(getter)
    assert getter(load_settings(env).settings) == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"OPTIMIZATION_INTERVAL": "abc"},
            "OPTIMIZATION_INTERVAL=abc: expected a whole number of milliseconds (e.g. 30000 for 30 s)",
        ),
        (
            {"OPTIMIZATION_INTERVAL": "10"},
            "OPTIMIZATION_INTERVAL=10: must be at least 1000 milliseconds (e.g. 10000 for 10 s)",
        ),
        ({"MEMORY_THRESHOLD": "1.5"}, "MEMORY_THRESHOLD=1.5: must be a ratio from 0.05 to 1, e.g. 0.8 for 80 %"),
        ({"CPU_THRESHOLD": "nan"}, "CPU_THRESHOLD=nan: expected a finite ratio, e.g. 0.9 for 90 %"),
        ({"ENABLE_GC": "maybe"}, "ENABLE_GC=maybe: expected true or false"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL=loud: expected one of debug, info, warning, error"),
        (
            {"CCTV_OPTIMIZER_ENGINE__MODE": "yolo"},
            "CCTV_OPTIMIZER_ENGINE__MODE=yolo: expected one of observe, dry_run, enforce",
        ),
        ({"CCTV_OPTIMIZER_BOGUS": "1"}, "CCTV_OPTIMIZER_BOGUS: unknown setting"),
        ({"CCTV_OPTIMIZER_API__LISTEN": "nonsense"}, "CCTV_OPTIMIZER_API__LISTEN=nonsense: expected host:port"),
        (
            {"CCTV_OPTIMIZER_API__LISTEN": "0.0.0.0:9877"},
            "CCTV_OPTIMIZER_API__LISTEN=0.0.0.0:9877: a non-loopback address needs a token",
        ),
        (
            {"CCTV_OPTIMIZER_BACKEND__URL": "ftp://x"},
            "CCTV_OPTIMIZER_BACKEND__URL=ftp://x: expected an http:// or https:// URL",
        ),
        ({"CCTV_OPTIMIZER_BACKEND__PROCESS": "pidfile"}, "CCTV_OPTIMIZER_BACKEND__PROCESS=pidfile: expected pid:FILE"),
        (
            {"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": "/"},
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=/: / contains the system directory",
        ),
        (
            {"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": "/etc"},
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=/etc: /etc is the system directory",
        ),
        (
            {"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": "/var/"},
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=/var/: /var is /var, far too broad",
        ),
        (
            {"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": "relative/x"},
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=relative/x: must be an absolute path",
        ),
        (
            {"CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED": "9", "CCTV_OPTIMIZER_DETECTION__WINDOW_SAMPLES": "5"},
            "CCTV_OPTIMIZER_DETECTION__SAMPLES_REQUIRED=9: must not exceed detection.window_samples (5)",
        ),
        (
            {"CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_COMMAND": "pm2 reload x"},
            "CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_COMMAND=pm2 reload x: a backend restart command needs the explicit opt-in",
        ),
    ],
)
def test_bad_values_are_named_with_their_source(env: dict[str, str], fragment: str) -> None:
    """A bad value produces a problem naming the setting, why, and the variable it came from."""
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    text = "\n".join(str(p) for p in err.value.problems)
    assert fragment in text
    assert "(env " in text


def test_every_problem_is_reported_at_once() -> None:
    """Several bad values give several problems in one error."""
    with pytest.raises(ConfigError) as err:
        load_settings({"CPU_THRESHOLD": "2", "MEMORY_THRESHOLD": "x", "CCTV_OPTIMIZER_NOPE": "1"})
    paths = {p.path for p in err.value.problems}
    assert paths == {"cpu_threshold", "memory_threshold", "CCTV_OPTIMIZER_NOPE"}


def test_yaml_file_then_environment_wins(tmp_path: Path) -> None:
    """YAML overrides defaults; the environment overrides YAML; sources say which."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "optimization_interval: 15000\n"
        "memory_threshold: 0.6\n"
        "backend:\n  url: http://127.0.0.1:3100\n"
        "strategies:\n  database:\n    wal_limit_bytes: 2097152\n"
    )
    loaded = load_settings({"MEMORY_THRESHOLD": "0.55"}, cfg)
    s = loaded.settings
    assert s.optimization_interval == 15000
    assert s.memory_threshold == 0.55
    assert s.backend.url == "http://127.0.0.1:3100"
    assert s.strategies.database.wal_limit_bytes == 2097152
    assert loaded.sources["optimization_interval"] == f"file {cfg}"
    assert loaded.sources["memory_threshold"] == "env MEMORY_THRESHOLD"
    assert loaded.sources["cpu_threshold"] == "default"


def test_yaml_path_from_environment(tmp_path: Path) -> None:
    """CCTV_OPTIMIZER_CONFIG names the YAML file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cpu_threshold: 0.7\n")
    assert load_settings({"CCTV_OPTIMIZER_CONFIG": str(cfg)}).settings.cpu_threshold == 0.7


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("backend:\n  nope: 1\n", "backend.nope: unknown setting"),
        ("cpu_threshold: [1, 2]\n", "cpu_threshold=[1, 2]: expected a ratio, e.g. 0.9 for 90 %"),
        ("- a\n- b\n", "config: the top level must be a mapping"),
        ("a: [unclosed\n", "config: not valid YAML at line"),
        ("enable_gc: 3\n", "enable_gc=3: expected true or false"),
        ("backend:\n  hot_endpoints: 7\n", "backend.hot_endpoints=7: expected a list of text"),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    """Bad YAML content is reported with the file as its source."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings({}, cfg)
    rendered = "\n".join(str(p) for p in err.value.problems)
    assert fragment in rendered
    assert f"(file {cfg})" in rendered


def test_missing_yaml_file(tmp_path: Path) -> None:
    """A missing config file is a clear problem, not a traceback."""
    with pytest.raises(ConfigError) as err:
        load_settings({}, tmp_path / "absent.yaml")
    assert "cannot read the file" in str(err.value)


def test_database_that_is_not_sqlite(tmp_path: Path) -> None:
    """A database path pointing at a non-SQLite file is refused."""
    bogus = tmp_path / "cctv.db"
    bogus.write_text("hello, not a database at all")
    with pytest.raises(ConfigError) as err:
        load_settings({"CCTV_OPTIMIZER_BACKEND__DATABASE": str(bogus)})
    assert f"CCTV_OPTIMIZER_BACKEND__DATABASE={bogus}: is not a SQLite database file" in str(err.value)


def test_hls_directory_overlapping_state_is_refused(tmp_path: Path) -> None:
    """The pruner must never be pointed at the daemon's own state."""
    with pytest.raises(ConfigError) as err:
        load_settings(
            {
                "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
                "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(tmp_path),
            }
        )
    assert f"{tmp_path} contains the state directory {tmp_path / 'state'}" in str(err.value)


def test_non_loopback_listen_with_token_is_allowed(tmp_path: Path) -> None:
    """A token makes a non-loopback bind acceptable."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    env = {"CCTV_OPTIMIZER_API__LISTEN": "0.0.0.0:9877", "CCTV_OPTIMIZER_API__TOKEN_FILE": str(token)}
    assert load_settings(env).settings.api.listen == "0.0.0.0:9877"


def test_observe_mode_when_optimization_disabled() -> None:
    """ENABLE_PERFORMANCE_OPTIMIZATION=false means observe."""
    s = load_settings({"ENABLE_PERFORMANCE_OPTIMIZATION": "false"}).settings
    assert s.effective_mode is Mode.OBSERVE
    assert load_settings({}).settings.effective_mode is Mode.ENFORCE


def test_read_secret_from_file_and_credential(tmp_path: Path) -> None:
    """Secrets come from their file, else from the systemd credential directory."""
    f = tmp_path / "pw"
    f.write_text("hunter2\n")
    assert read_secret(f, {}, "backend-admin-password") == "hunter2"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-token").write_text("tok\n")
    assert read_secret(None, {"CREDENTIALS_DIRECTORY": str(creds)}, "api-token") == "tok"
    assert read_secret(None, {}, "api-token") is None


def test_read_secret_errors_never_show_contents(tmp_path: Path) -> None:
    """An empty or unreadable secret is an error that names the file but not any content."""
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError) as err:
        read_secret(empty, {}, "api-token")
    assert "is empty" in str(err.value)
    with pytest.raises(ConfigError):
        read_secret(tmp_path / "missing", {}, "api-token")


def test_every_leaf_has_a_unique_environment_name() -> None:
    """No two settings share a variable name."""
    names = [leaf.env for leaf in iter_leaves()]
    assert len(names) == len(set(names))
    assert "OPTIMIZATION_INTERVAL" in names
    assert "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES" in names


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9877", ("127.0.0.1", 9877)), ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    """host:port parsing accepts IPv4, bracketed IPv6 and localhost."""
    assert parse_listen(text) == expected
