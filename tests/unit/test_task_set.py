"""TaskSet: tasks tracked while they run, a crash reported, close cancels all."""

from __future__ import annotations

import asyncio

import pytest

from covey.core.runtime import TaskSet


async def test_close_cancels_running_tasks_of_the_set_and_its_children() -> None:
    root = TaskSet("root")
    child = root.child("child")
    forever = [root.spawn(asyncio.Event().wait()), child.spawn(asyncio.Event().wait())]
    await asyncio.sleep(0)
    assert len(root) == 2
    await root.close()
    assert all(t.cancelled() for t in forever)
    assert len(root) == 0
    with pytest.raises(RuntimeError, match="closed"):
        child.spawn(asyncio.sleep(0))


async def test_close_lets_tasks_finish_within_the_grace() -> None:
    tasks = TaskSet("graceful")
    done = tasks.spawn(asyncio.sleep(0.01, result="finished"))
    await tasks.close(grace=5)
    assert done.result() == "finished"


async def test_a_crashed_task_is_reported_to_the_owner_through_its_parent() -> None:
    crashes: list[BaseException] = []
    root = TaskSet("root", on_crash=crashes.append)

    async def boom() -> None:
        raise ValueError("loop broke")

    task = root.child("loops").spawn(boom())
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert [type(c) for c in crashes] == [ValueError]


async def test_a_cancelled_task_is_not_a_crash() -> None:
    crashes: list[BaseException] = []
    tasks = TaskSet("t", on_crash=crashes.append)
    task = tasks.spawn(asyncio.Event().wait())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert crashes == [] and len(tasks) == 0
