"""Run the testbed as a subprocess from tests: `with TestbedProcess(tmp_path) as tb: ...`.

Blocking (urllib) on purpose, so it works the same from plain and asyncio tests. Example::

    with TestbedProcess(tmp_path, "--cameras", "2") as tb:
        tb.scenario("stuck_sessions", count=5, age_seconds=600)
        assert tb.state()["stale_active_sessions"] == 5
        session = tb.login()
        stats = tb.request("GET", "/api/cache/stats", token=session.token).json()
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
STDERR_LINES_KEPT = 2000


class TestbedError(RuntimeError):
    """The testbed process did not start, answer or stop as expected."""

    __test__ = False  # not a pytest test class despite the name


def wait_until(check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll `check` until it returns a truthy value (returned) or `timeout` passes (TimeoutError)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout:g} s")
        pause.wait(interval)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    """An HTTP answer: status, headers (in order, repeated names kept) and body."""

    status: int
    header_pairs: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitive."""
        wanted = name.lower()
        return next((value for key, value in self.header_pairs if key.lower() == wanted), None)

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies set by Set-Cookie headers, name to value."""
        jar: SimpleCookie = SimpleCookie()
        for key, value in self.header_pairs:
            if key.lower() == "set-cookie":
                jar.load(value)
        return {name: morsel.value for name, morsel in jar.items()}

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSession:
    """Tokens from a successful login, plus a CSRF value to double-submit."""

    token: str
    refresh_token: str
    csrf: str


def _pairs(message: Message) -> tuple[tuple[str, str], ...]:
    """Header pairs of an urllib response."""
    return tuple((key, value) for key, value in message.items())


class TestbedProcess:
    """`python -m testbed` in a subprocess, started by the constructor and stopped by close()."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        launcher: Callable[[list[str]], list[str]] | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        """Start the testbed, read its environment line and wait until /health answers.

        ``launcher`` turns the command line into the one to run (say, as another user); ``environ`` replaces the
        process environment it starts from.
        """
        self.data_dir = Path(data_dir).resolve()
        self.stop_timeout = stop_timeout
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._threads: list[threading.Thread] = []
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        env = dict(os.environ if environ is None else environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "testbed",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.data_dir),
            *extra_args,
        ]
        if launcher is not None:
            command = launcher(command)
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        try:
            self._drain(self.process.stderr, self._stderr.append)
            line = self._first_line(startup_timeout)
            self._drain(self.process.stdout, lambda _line: None)
            self.env: dict[str, str] = dict(pair.split("=", 1) for pair in line.split())
            self.url = self.env["CCTV_OPTIMIZER_BACKEND__URL"]
            wait_until(self._healthy, timeout=startup_timeout)
        except BaseException:
            self.close()
            raise

    # ----- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> TestbedProcess:
        """Already started by the constructor."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the process."""
        self.close()

    def close(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; return the exit code."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout)
        for thread in self._threads:
            thread.join(timeout=self.stop_timeout)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        return process.returncode

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has ended, else None."""
        return self.process.poll()

    def stderr_text(self) -> str:
        """What the testbed logged on stderr so far (last lines)."""
        return "".join(self._stderr)

    def _drain(self, stream: Any, sink: Callable[[str], None]) -> None:
        """Read a pipe line by line in a daemon thread so it never fills up."""

        def pump() -> None:
            with contextlib.suppress(ValueError, OSError):
                for raw in iter(stream.readline, b""):
                    sink(raw.decode("utf-8", errors="replace"))

        thread = threading.Thread(target=pump, name="testbed-pipe", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _first_line(self, timeout: float) -> str:
        """The first stdout line, read without blocking past `timeout`."""
        stdout = self.process.stdout
        assert stdout is not None
        fd = stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TestbedError(f"no environment line within {timeout:g} s\n{self.stderr_text()}")
                if not selector.select(remaining):
                    continue
                # One byte at a time so nothing after the first line is consumed here.
                chunk = os.read(fd, 1)
                if not chunk:
                    self.process.wait(timeout=self.stop_timeout)
                    raise TestbedError(
                        f"testbed exited with {self.process.returncode} before printing its environment\n"
                        f"{self.stderr_text()}"
                    )
                buffer += chunk
        return buffer.decode("utf-8").strip()

    def _healthy(self) -> bool:
        """True once GET /health answers 200."""
        if self.process.poll() is not None:
            raise TestbedError(f"testbed exited with {self.process.returncode}\n{self.stderr_text()}")
        try:
            return self.request("GET", "/health", timeout=2.0).status == 200
        except OSError:
            return False

    # ----- what the environment line says ----------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the testbed process."""
        return self.process.pid

    @property
    def database(self) -> Path:
        """The SQLite file."""
        return Path(self.env["CCTV_OPTIMIZER_BACKEND__DATABASE"])

    @property
    def hls_dir(self) -> Path:
        """The HLS directory."""
        return Path(self.env["CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY"])

    @property
    def mediamtx_url(self) -> str:
        """Base URL of the MediaMTX API stand-in."""
        return self.env["CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL"]

    @property
    def admin_password(self) -> str:
        """The admin password from the password file."""
        return Path(self.env["CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE"]).read_text(encoding="utf-8").strip()

    @property
    def api_key(self) -> str | None:
        """The API key when the testbed was started with --api-key."""
        path = self.env.get("CCTV_OPTIMIZER_BACKEND__API_KEY_FILE")
        return Path(path).read_text(encoding="utf-8").strip() if path else None

    # ----- HTTP ------------------------------------------------------------------------------

    def request(  # noqa: PLR0913 -- the backend's own call shape
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
        token: str | None = None,
        csrf: str | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        """Send one request; `token` adds a Bearer header, `csrf` the cookie and header pair."""
        all_headers = {"User-Agent": "testbed-harness/1", **(headers or {})}
        all_cookies = dict(cookies or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if csrf is not None:
            all_cookies["csrf_token"] = csrf
            all_headers["X-CSRF-Token"] = csrf
        if all_cookies:
            all_headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in all_cookies.items())
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request((base_url or self.url) + path, data=data, headers=all_headers, method=method)
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                return HttpResponse(status=answer.status, header_pairs=_pairs(answer.headers), body=answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return HttpResponse(status=error.code, header_pairs=_pairs(error.headers), body=error.read())

    def login(self, *, password: str | None = None, username: str = "admin") -> AdminSession:
        """Log in (once; never in a loop) and return the tokens with a fresh CSRF value."""
        answer = self.request(
            "POST",
            "/api/auth/login",
            json_body={"username": username, "password": password or self.admin_password},
            headers=self._api_key_header(),
        )
        if answer.status != 200:
            raise TestbedError(f"login failed with {answer.status}: {answer.body!r}")
        data = answer.json()["data"]
        return AdminSession(token=data["token"], refresh_token=data["refreshToken"], csrf=secrets.token_hex(32))

    def _api_key_header(self) -> dict[str, str]:
        """X-API-Key when one is configured."""
        key = self.api_key
        return {"X-API-Key": key} if key else {}

    # ----- control -------------------------------------------------------------------------

    def scenario(self, name: str, **params: Any) -> dict[str, Any]:
        """POST /_testbed/scenario/{name}; raise TestbedError unless it succeeded."""
        answer = self.request("POST", f"/_testbed/scenario/{name}", json_body=params, timeout=90.0)
        result: dict[str, Any] = answer.json()
        if answer.status != 200:
            raise TestbedError(f"scenario {name} failed with {answer.status}: {result}")
        return result

    def state(self, *, stale_age: float | None = None) -> dict[str, Any]:
        """GET /_testbed/state (optionally with another stale age for HLS files)."""
        query = f"?stale_age={stale_age:g}" if stale_age is not None else ""
        answer = self.request("GET", f"/_testbed/state{query}")
        if answer.status != 200:
            raise TestbedError(f"state failed with {answer.status}: {answer.body!r}")
        result: dict[str, Any] = answer.json()
        return result


def child_pids(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, from /proc (Linux)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            # The command name may contain spaces or parentheses: parse after the last ')'.
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def pids_alive(pids: Iterable[int]) -> list[int]:
    """Those of `pids` that still exist and are not zombies."""
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(pid)
    return alive


TestbedFactory = Callable[..., TestbedProcess]
"""A callable that starts a TestbedProcess with the given extra arguments (for fixtures)."""
