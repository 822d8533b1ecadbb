"""The daemon keeps its start-up objects out of later garbage collections, so a full collection stays short."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from testbed.harness import TestbedProcess
from tests.harness import daemon_env, running_daemon


def walked_by_collections(obj: object) -> bool:
    """Whether the cyclic collector's generations (not the frozen set) hold ``obj``."""
    return any(o is obj for o in gc.get_objects())


async def test_start_up_objects_are_frozen_while_running_and_handed_back_at_stop(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """After start the engine and strategies are outside every generation; after stop they are collected again."""
    async with running_daemon(daemon_env(testbed, tmp_path / "state")) as daemon:
        engine = daemon.engine
        strategy = next(iter(engine.runtimes.values())).strategy
        assert gc.get_freeze_count() > 0
        assert not walked_by_collections(engine)
        assert not walked_by_collections(strategy)
    assert gc.get_freeze_count() == 0
    assert walked_by_collections(engine)
    assert walked_by_collections(strategy)


async def test_a_full_collection_while_running_still_frees_new_cyclic_garbage(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A cycle made after start is freed by the memory strategy's kind of collect: freezing keeps nothing new alive."""

    class Node:
        """A self-referencing object only the cyclic collector can free."""

        def __init__(self) -> None:
            self.me = self

    async with running_daemon(daemon_env(testbed, tmp_path / "state")):
        node = Node()
        gone = weakref.ref(node)
        del node
        assert gone() is not None  # the cycle keeps it alive until a collection
        gc.collect()
        assert gone() is None
