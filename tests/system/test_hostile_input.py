"""Hostile input against the running API: oversized bodies, slow clients, a request storm, and bad tokens."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, TCPConnector

import optimizer.api
from optimizer.api import ROUTES
from testbed.harness import TestbedProcess
from tests.harness import ROOT, api_base, api_client, auth, daemon_env, running_daemon

OBSERVE = {"ENABLE_PERFORMANCE_OPTIMIZATION": "false"}
WRITES = [path.replace("{name}", "memory") for method, path, _ in ROUTES if method == "POST"]
READS = [path for method, path, _ in ROUTES if method == "GET"]
BODY_WRITES = ["/performance-optimize", "/strategies/memory/mode", "/alertmanager"]
STORM = 1000
# generous bounds: they only tell "it was served / it was closed" from "it hung"
SERVED_WITHIN = 30.0
CLOSED_WITHIN = 30.0


def error_of(body: bytes) -> dict[str, Any]:
    """The error object of a JSON error body (fails on any other shape)."""
    data = json.loads(body)
    assert set(data) == {"error"}, data
    assert set(data["error"]) == {"code", "message"}, data
    assert all(isinstance(v, str) and v for v in data["error"].values()), data
    return dict(data["error"])


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    return await asyncio.wait_for(reader.read(), CLOSED_WITHIN)


# oversized bodies ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_WRITES)
async def test_oversized_body_gets_413_in_the_error_shape(testbed: TestbedProcess, tmp_path: Path, path: str) -> None:
    """A body over client_max_size (with Content-Length) is refused with 413 body_too_large; nothing runs."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        rounds = daemon.engine.rounds_run
        big = b'{"strategy": "' + b"m" * (daemon.settings.api.client_max_size + 1) + b'"}'
        headers = {**auth(daemon), "Content-Type": "application/json"}
        async with http.post(path, data=big, headers=headers) as resp:
            assert resp.status == 413
            assert resp.content_type == "application/json"
            assert error_of(await resp.read())["code"] == "body_too_large"
        assert daemon.engine.rounds_run == rounds


async def test_oversized_chunked_body_gets_413(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A chunked body (no Content-Length) that grows past client_max_size is cut off with 413 too."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        limit = daemon.settings.api.client_max_size

        async def chunks() -> Any:
            yield b'{"strategy": "'
            for _ in range(limit // 4096 + 2):
                yield b"m" * 4096
            yield b'"}'

        async with http.post("/performance-optimize", data=chunks(), headers=auth(daemon)) as resp:
            assert resp.status == 413
            assert error_of(await resp.read())["code"] == "body_too_large"


async def test_body_just_under_the_limit_is_parsed(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A body just under client_max_size is read and judged on its content (here: unknown strategy, 400)."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        filler = daemon.settings.api.client_max_size - len(b'{"strategy": ""}') - 16
        body = b'{"strategy": "' + b"m" * filler + b'"}'
        async with http.post("/performance-optimize", data=body, headers=auth(daemon)) as resp:
            assert resp.status == 400
            error = error_of(await resp.read())
            assert error["code"] == "unknown_strategy"
            # the message quotes a bounded prefix of the name, not the whole body
            assert len(error["message"]) < 300


# slow clients -------------------------------------------------------------------------------------------------------


async def test_stalled_body_does_not_block_others_and_is_closed(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Headers sent, body stalled: other requests are served meanwhile; the stalled one gets 408 and is closed."""
    env = daemon_env(testbed, tmp_path / "s", **OBSERVE)
    # the stalled body must outlast the others, a round among them: a few seconds on a loaded host
    async with running_daemon(env, api_body_timeout=15.0, api_idle_timeout=60.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.api_port)
        try:
            head = (
                f"POST /performance-optimize HTTP/1.1\r\nHost: 127.0.0.1:{daemon.api_port}\r\n"
                f"Authorization: Bearer {daemon.token}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{"
            )
            writer.write(head.encode())
            await writer.drain()
            rounds = daemon.engine.rounds_run
            async with api_client(daemon) as http:
                for path in ("/health", "/performance-metrics", "/metrics"):
                    resp = await asyncio.wait_for(http.get(path), SERVED_WITHIN)
                    assert resp.status == 200, path
                    resp.release()
                # a write on another connection is served too
                resp = await asyncio.wait_for(http.post("/performance-optimize", headers=auth(daemon)), SERVED_WITHIN)
                assert resp.status == 200
                resp.release()
            assert not reader.at_eof(), "the stalled request was answered before the others were served"
            answer = await read_until_closed(reader)
        finally:
            writer.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 408 Request Timeout"
        assert b"Connection: close" in rest
        assert error_of(rest.partition(b"\r\n\r\n")[2])["code"] == "body_timeout"
        assert daemon.engine.rounds_run == rounds + 1


async def test_unfinished_headers_are_closed_after_the_idle_timeout(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A client that never finishes its headers (slowloris), or sends nothing, is disconnected; others are served."""
    env = daemon_env(testbed, tmp_path / "s", **OBSERVE)
    async with running_daemon(env, api_idle_timeout=2.0) as daemon:
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", daemon.api_port)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", daemon.api_port)
        try:
            slow_writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{daemon.api_port}\r\nX-Slow: a".encode())
            await slow_writer.drain()
            async with api_client(daemon) as http:
                resp = await asyncio.wait_for(http.get("/health"), SERVED_WITHIN)
                assert resp.status == 200
                resp.release()
            assert await read_until_closed(slow_reader) == b""
            assert await read_until_closed(idle_reader) == b""
        finally:
            slow_writer.close()
            idle_writer.close()


def test_daemon_defaults_bound_slow_clients() -> None:
    """Out of the box a stalled body and an unfinished request are both cut off within a minute."""
    assert 0 < optimizer.api.BODY_TIMEOUT_SECONDS <= 60
    assert 0 < optimizer.api.IDLE_TIMEOUT_SECONDS <= 60


# a storm of round requests ------------------------------------------------------------------------------------------


async def test_thousand_concurrent_optimize_requests_run_one_round(testbed: TestbedProcess, tmp_path: Path) -> None:
    """1,000 concurrent POST /performance-optimize: exactly one round runs and every caller gets a valid 200."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon:
        engine = daemon.engine
        real_request_round = engine.request_round
        arrived = 0
        everyone_in = asyncio.Event()

        async def counting_request_round(**kwargs: Any) -> Any:
            # counts the requests that reached the engine, then does exactly what the engine does
            nonlocal arrived
            arrived += 1
            if arrived == STORM:
                everyone_in.set()
            return await real_request_round(**kwargs)

        engine.request_round = counting_request_round  # type: ignore[method-assign]
        rounds = engine.rounds_run
        connector = TCPConnector(limit=0, force_close=True)
        async with ClientSession(base_url=api_base(daemon), connector=connector) as http:

            async def optimize() -> tuple[int, dict[str, Any]]:
                async with http.post("/performance-optimize", headers=auth(daemon), json={}) as resp:
                    return resp.status, await resp.json()

            # The engine's round lock is what a running verification holds: with it taken, the first request's
            # round waits on it and every later request finds that round running, so all of them overlap it.
            await engine._lock.acquire()
            try:
                tasks = [asyncio.create_task(optimize()) for _ in range(STORM)]
                await asyncio.wait_for(everyone_in.wait(), SERVED_WITHIN * 2)
                assert engine.optimizing
                assert engine.rounds_run == rounds
            finally:
                engine._lock.release()
            answers = await asyncio.wait_for(asyncio.gather(*tasks), SERVED_WITHIN * 2)
        assert engine.rounds_run == rounds + 1
        assert [status for status, _ in answers] == [200] * STORM
        run_ids = {body["runId"] for _, body in answers}
        assert engine.last_round is not None and run_ids == {engine.last_round.run_id}
        assert sorted(body["joined"] for _, body in answers) == [False] + [True] * (STORM - 1)
        decisions = {tuple(body["decisions"]) for _, body in answers}
        assert len(decisions) == 1 and len(next(iter(decisions))) == len(engine.strategy_names())
        for _, body in answers:
            assert set(body) == {"message", "worker", "timestamp", "runId", "joined", "decisions"}
            assert body["worker"] == os.getpid()
            assert body["message"] == (
                "Optimization round joined" if body["joined"] else "Optimization round completed"
            )


# authorisation ------------------------------------------------------------------------------------------------------


def bad_authorizations(token: str) -> dict[str, dict[str, str]]:
    """Authorization headers that must all be refused."""
    wrong_same_length = ("0" if token[0] != "0" else "1") + token[1:-1] + ("0" if token[-1] != "0" else "1")
    assert len(wrong_same_length) == len(token) and wrong_same_length != token
    return {
        "absent": {},
        "empty": {"Authorization": ""},
        "scheme only": {"Authorization": "Bearer"},
        "scheme and space": {"Authorization": "Bearer "},
        "wrong scheme": {"Authorization": f"Basic {token}"},
        "token without scheme": {"Authorization": token},
        "wrong, same length": {"Authorization": f"Bearer {wrong_same_length}"},
        "shorter": {"Authorization": f"Bearer {token[:-1]}"},
        "longer": {"Authorization": f"Bearer {token}0"},
        "prefix of it": {"Authorization": f"Bearer {token[:8]}"},
        "another header": {"X-Api-Token": token},
    }


async def test_every_write_refuses_bad_tokens(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Every write route answers 401 unauthorized to a missing, wrong or wrong-length token, and changes nothing."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        rounds = daemon.engine.rounds_run
        assert WRITES and len(WRITES) == len([r for r in ROUTES if r[0] == "POST"])
        for path in WRITES:
            for name, headers in bad_authorizations(daemon.token).items():
                async with http.post(path, json={"mode": "dry_run"}, headers=headers) as resp:
                    assert resp.status == 401, (path, name)
                    assert error_of(await resp.read())["code"] == "unauthorized", (path, name)
        assert daemon.engine.rounds_run == rounds
        assert daemon.engine.runtimes["memory"].mode_override is None
        # the same requests with the right token are not refused, so the refusals above are about the token
        async with http.post("/strategies/memory/mode", json={"mode": "dry_run"}, headers=auth(daemon)) as resp:
            assert resp.status == 200
        assert str(daemon.engine.runtimes["memory"].mode_override) == "dry_run"


async def test_token_is_compared_with_compare_digest(
    testbed: TestbedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every presented token, whatever its length or shared prefix, goes whole through hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("optimizer.api.hmac.compare_digest", recording)
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        token = daemon.token
        presented = [token[:-1] + ("0" if token[-1] != "0" else "1"), "x" * len(token), "x", token + "x", token]
        for given in presented:
            async with http.post("/strategies/memory/reset", headers={"Authorization": f"Bearer {given}"}) as resp:
                assert resp.status == (200 if given == token else 401)
        assert calls == [(g.encode(), token.encode()) for g in presented]


async def test_reads_are_open_on_loopback(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Every GET route answers without any Authorization header."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s", **OBSERVE)) as daemon, api_client(daemon) as http:
        assert {"/health", "/metrics", "/performance-metrics", "/strategies", "/optimizations"} <= set(READS)
        for path in READS:
            async with http.get(path) as resp:
                assert resp.status == 200, path


def test_non_loopback_bind_without_token_exits_78(tmp_path: Path) -> None:
    """`cctv-optimizer run` on a non-loopback address with no token configured exits 78 naming api.listen."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CCTV_OPTIMIZER_") and key not in {"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"}
    }
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "CCTV_OPTIMIZER_API__LISTEN": "0.0.0.0:0",
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "CCTV_OPTIMIZER_API__LISTEN=0.0.0.0:0: a non-loopback address needs a token" in output
    assert not (tmp_path / "state" / "api-token").exists()


def test_writes_list_matches_the_design() -> None:
    """The write routes checked above are the design's writes (a new POST route is covered automatically)."""
    assert set(WRITES) >= {
        "/performance-optimize",
        "/strategies/memory/mode",
        "/strategies/memory/reset",
        "/alertmanager",
    }
