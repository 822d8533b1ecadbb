"""Tests for metrics.serial: work queued on one thread in order, a spill for work that waits, a shut-down pool."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

from metrics.serial import SerialExecutor

WAIT_S = 10.0  # bounds every wait, so a failing test cannot hang


def test_work_runs_in_order_on_one_thread() -> None:
    """Work submitted together runs one item after another, in order, on one thread of the pool."""
    pool = ThreadPoolExecutor(4)
    serial = SerialExecutor(pool)
    gate = threading.Event()
    ran: list[tuple[int, int]] = []
    try:
        first = serial.submit(gate.wait, WAIT_S)

        def record(n: int) -> None:
            ran.append((n, threading.get_ident()))

        futures = [serial.submit(record, n) for n in range(5)]
        gate.set()
        assert first.result(WAIT_S) is True
        for future in futures:
            future.result(WAIT_S)
    finally:
        gate.set()
        pool.shutdown()
    assert [n for n, _thread in ran] == list(range(5))
    assert len({thread for _n, thread in ran}) == 1


def test_a_spill_runs_waiting_work_beside_a_stuck_item() -> None:
    """Work queued behind an item that blocks runs once the queue is spilled; a spill with nothing waiting is a no-op."""
    pool = ThreadPoolExecutor(4)
    serial = SerialExecutor(pool)
    gate = threading.Event()
    try:
        serial.spill()  # nothing waits: no thread is taken
        stuck = serial.submit(gate.wait, WAIT_S)
        behind = serial.submit(lambda: "answered")
        serial.spill()
        assert behind.result(WAIT_S) == "answered"
        assert not stuck.done()
    finally:
        gate.set()
        pool.shutdown()
    assert stuck.result(WAIT_S) is True


def test_an_error_is_the_items_own() -> None:
    """An item that raises fails its own future; the next one still runs."""
    pool = ThreadPoolExecutor(1)
    serial = SerialExecutor(pool)
    try:
        failing = serial.submit(lambda: 1 // 0)
        after = serial.submit(lambda: "fine")
        with pytest.raises(ZeroDivisionError):
            failing.result(WAIT_S)
        assert after.result(WAIT_S) == "fine"
    finally:
        pool.shutdown()


def test_a_shut_down_pool_refuses_work_and_fails_what_waits() -> None:
    """Once the pool takes no more work, submitting raises and nothing is left pending; cancelling empties the queue."""
    pool = ThreadPoolExecutor(1)
    serial = SerialExecutor(pool)
    gate = threading.Event()
    stuck = serial.submit(gate.wait, WAIT_S)
    waiting = serial.submit(lambda: "never")
    serial.shutdown(cancel_futures=True)
    with pytest.raises(CancelledError):
        waiting.result(WAIT_S)
    gate.set()
    assert stuck.result(WAIT_S) is True
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        serial.submit(lambda: "refused")
    serial.spill()  # nothing waits and the pool is gone: still no error
