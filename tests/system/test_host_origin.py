"""Host and Origin checks against the running API: a page from another site can neither read nor write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.api import ROUTES, HostPolicy
from testbed.harness import TestbedProcess
from tests.harness import api_client, auth, daemon_env, running_daemon

OBSERVE = {"ENABLE_PERFORMANCE_OPTIMIZATION": "false"}
READS = [path for method, path, _ in ROUTES if method == "GET"]


async def test_a_foreign_host_gets_421_on_every_read(testbed: TestbedProcess, tmp_path: Path) -> None:
    """DNS rebinding: a page at attacker.example resolving to 127.0.0.1 sends its own name as Host."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        for path in READS:
            async with http.get(path, headers={"Host": f"attacker.example:{daemon.api_port}"}) as resp:
                assert resp.status == 421, path
                assert json.loads(await resp.read())["error"]["code"] == "misdirected_request"
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        # another port on a local name is another origin too
        async with http.get("/health", headers={"Host": f"127.0.0.1:{daemon.api_port + 1}"}) as resp:
            assert resp.status == 421


async def test_own_names_are_served(testbed: TestbedProcess, tmp_path: Path) -> None:
    """The listen address, localhost and ::1 with the port, and the client's own default Host, all get 200."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        port = daemon.api_port
        for host in (None, f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            headers = {"Host": host} if host else {}
            async with http.get("/health", headers=headers) as resp:
                assert resp.status == 200, host
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_a_configured_name_is_served(testbed: TestbedProcess, tmp_path: Path) -> None:
    """api.allowed_hosts: a name without a port is allowed on any port (a reverse proxy's)."""
    env = daemon_env(testbed, tmp_path / "s", CCTV_OPTIMIZER_API__ALLOWED_HOSTS="cctv.example", **OBSERVE)
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        for host in ("cctv.example", "cctv.example:443", f"cctv.example:{daemon.api_port}"):
            async with http.get("/performance-metrics", headers={"Host": host}) as resp:
                assert resp.status == 200, host
        async with http.get("/performance-metrics", headers={"Host": "other.example"}) as resp:
            assert resp.status == 421


async def test_a_cross_origin_write_gets_403_and_changes_nothing(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A form posted from another site (with the token even) is refused; the same write from the dashboard works."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        rounds = daemon.engine.rounds_run
        for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{daemon.api_port + 1}"):
            headers = {**auth(daemon), "Origin": origin}
            async with http.post("/performance-optimize", headers=headers) as resp:
                assert resp.status == 403, origin
                assert json.loads(await resp.read())["error"]["code"] == "cross_origin"
        headers = {**auth(daemon), "Sec-Fetch-Site": "cross-site"}
        async with http.post("/strategies/memory/reset", headers=headers) as resp:
            assert resp.status == 403
        assert daemon.engine.rounds_run == rounds
        same = {**auth(daemon), "Origin": f"http://127.0.0.1:{daemon.api_port}", "Sec-Fetch-Site": "same-origin"}
        async with http.post("/performance-optimize", headers=same) as resp:
            assert resp.status == 200
        assert daemon.engine.rounds_run == rounds + 1
        # a cross-origin read is not a write: the Host check alone decides it
        async with http.get("/health", headers={"Origin": "http://attacker.example"}) as resp:
            assert resp.status == 200
            assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize(
    ("listen", "port", "host", "allowed"),
    [
        ("127.0.0.1", 9877, "127.0.0.1:9877", True),
        ("127.0.0.1", 9877, "127.0.0.1", False),
        ("127.0.0.1", 80, "127.0.0.1", True),
        ("127.0.0.1", 9877, "10.0.0.5:9877", False),
        ("0.0.0.0", 9877, "10.0.0.5:9877", True),
        ("0.0.0.0", 9877, "evil.example:9877", False),
        ("::1", 9877, "[::1]:9877", True),
        ("::1", 9877, "[::1]:bad", False),
        ("127.0.0.1", 9877, "", False),
        ("127.0.0.1", 9877, "127.0.0.1:9877@evil.example", False),
    ],
)
def test_host_policy(listen: str, port: int, host: str, allowed: bool) -> None:
    """The listen address with its port, localhost, and any address when listening on all of them."""
    assert HostPolicy(listen, port).allows(host) is allowed
