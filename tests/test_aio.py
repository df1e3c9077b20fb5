"""``aio.wait_for`` keeps a cancellation that arrives in the same loop round as the result."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge_gateway import aio


async def _cancelled_as_the_result_arrives(wait_for) -> object:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    task = loop.create_task(wait_for(fut, 5.0))
    await asyncio.sleep(0)  # the task now waits on fut
    fut.set_result("data")  # what a reader callback does when bytes arrive...
    task.cancel()  # ...while shutdown cancels the driver task, in the same round
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


@pytest.mark.parametrize("wait_for", [aio.wait_for, aio.wait_for_by_wait], ids=["this-python", "3.10-form"])
async def test_a_cancellation_in_the_same_round_as_the_result_is_kept(wait_for):
    assert await _cancelled_as_the_result_arrives(wait_for) == "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="fixed in the standard library from 3.12")
async def test_the_standard_wait_for_loses_it_before_3_12():
    """Why aio.wait_for exists (CPython gh-86296): this interpreter's wait_for returns the result instead."""
    assert await _cancelled_as_the_result_arrives(asyncio.wait_for) == "data"


@pytest.mark.parametrize("wait_for", [aio.wait_for, aio.wait_for_by_wait], ids=["this-python", "3.10-form"])
async def test_result_and_timeout(wait_for):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, 7)
    assert await wait_for(fut, 5.0) == 7
    slow = loop.create_future()
    with pytest.raises(asyncio.TimeoutError):
        await wait_for(slow, 0.05)
    assert slow.cancelled(), "the awaited future is cancelled on timeout"


async def _swallows_cancellations(times: int, log: list) -> None:
    for _ in range(times):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append("swallowed")
    await asyncio.sleep(30)


async def test_cancel_and_wait_cancels_again_what_outlives_its_cancellation(caplog):
    loop = asyncio.get_running_loop()
    seen: list = []
    plain = loop.create_task(asyncio.sleep(30), name="plain")
    once = loop.create_task(_swallows_cancellations(1, seen), name="swallows-once")
    await asyncio.sleep(0)
    left = await aio.cancel_and_wait([plain, once], grace=0.1)
    assert left == [] and plain.cancelled() and once.cancelled() and seen == ["swallowed"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["tasks still running 0.1 s after their cancellation, cancelling again: swallows-once"]


async def test_cancel_and_wait_gives_up_after_its_attempts(caplog):
    loop = asyncio.get_running_loop()
    seen: list = []
    stubborn = loop.create_task(_swallows_cancellations(5, seen), name="stubborn")
    await asyncio.sleep(0)
    left = await aio.cancel_and_wait([stubborn], grace=0.05, attempts=3)
    assert left == [stubborn] and seen == ["swallowed"] * 3
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1] == \
        "giving up on tasks that ignore cancellation: stubborn"
    assert await aio.cancel_and_wait([stubborn], grace=0.05, attempts=5) == [] and stubborn.cancelled()
    assert seen == ["swallowed"] * 5


class _Lost(Exception):
    pass


async def _fail_after(delay: float, log: list, name: str) -> None:
    await asyncio.sleep(delay)
    log.append(name)
    raise _Lost(name)


async def _run_until_cancelled(log: list, name: str) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        log.append(f"{name} cancelled")
        raise


async def test_run_together_raises_the_first_failure_itself_and_cancels_the_rest():
    log: list = []
    with pytest.raises(_Lost) as info:
        await aio.run_together([_run_until_cancelled(log, "a"), _fail_after(0.01, log, "b"),
                                _fail_after(5.0, log, "c")], ["a", "b", "c"])
    assert str(info.value) == "b" and sorted(log) == ["a cancelled", "b"]
    assert [t for t in asyncio.all_tasks() if t.get_name() in ("a", "c")] == []


async def test_run_together_cancelled_from_outside_cancels_every_task():
    log: list = []
    outer = asyncio.ensure_future(aio.run_together([_run_until_cancelled(log, "a"),
                                                    _run_until_cancelled(log, "b")]))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert sorted(log) == ["a cancelled", "b cancelled"]


async def test_run_together_returns_when_all_end_well():
    done: list = []

    async def ok(i):
        await asyncio.sleep(0.01 * i)
        done.append(i)

    assert await aio.run_together([ok(2), ok(1)]) is None and done == [1, 2]
    assert await aio.run_together([]) is None
