"""``wait_for`` that never swallows a cancellation, a shutdown that does not wait for ever on one, and
sibling tasks that end together.

Before Python 3.12, ``asyncio.wait_for`` returns the inner result when the task is
cancelled in the same loop round as that result arrives (CPython gh-86296): the
cancellation is lost. A task cancelled at shutdown then keeps running, and the
shutdown that awaits it waits for ever. 3.11's ``asyncio.timeout`` and 3.12's
``wait_for`` (built on it) keep the cancellation; on 3.10 ``asyncio.wait`` does.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Awaitable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def wait_for(aw: Awaitable[T], timeout: float) -> T:
    """``asyncio.wait_for(aw, timeout)``: the result, or ``asyncio.TimeoutError`` (``aw`` then cancelled)."""
    if sys.version_info >= (3, 12):
        return await asyncio.wait_for(aw, timeout)
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await aw
    return await wait_for_by_wait(aw, timeout)


async def wait_for_by_wait(aw: Awaitable[T], timeout: float) -> T:
    """The 3.10 form of :func:`wait_for`, on ``asyncio.wait`` (it runs, and is tested, on any version)."""
    fut = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({fut}, timeout=timeout)
    except BaseException:
        fut.cancel()
        raise
    if not done:
        fut.cancel()
        await asyncio.wait({fut})
        raise asyncio.TimeoutError
    return fut.result()


async def cancel_and_wait(tasks, grace: float = 5.0, attempts: int = 3) -> list[asyncio.Task]:
    """Cancel ``tasks`` and wait for them, cancelling again any that outlive ``grace`` s.

    A task that catches its cancellation (third-party code, or an old ``wait_for``) would
    otherwise hold a shutdown for ever. Returns the tasks still running after ``attempts``.
    """
    pending = [t for t in tasks if not t.done()]
    for attempt in range(attempts):
        if not pending:
            break
        if attempt:
            log.error("tasks still running %.1f s after their cancellation, cancelling again: %s",
                      grace, ", ".join(t.get_name() for t in pending))
        for t in pending:
            t.cancel()
        _, still = await asyncio.wait(pending, timeout=grace)
        pending = [t for t in pending if t in still]
    if pending:
        log.error("giving up on tasks that ignore cancellation: %s", ", ".join(t.get_name() for t in pending))
    for t in tasks:  # retrieve what the ended ones raised, as gather(return_exceptions=True) did
        exc = t.exception() if t.done() and not t.cancelled() else None
        if exc is not None:
            log.debug("task %s ended with %r", t.get_name(), exc)
    return pending


async def run_together(coros, names=()) -> None:
    """Run ``coros`` as tasks until all have ended; the first to fail cancels the rest, and its exception is raised.

    What ``asyncio.TaskGroup`` does from 3.11, but on 3.10 too, and raising the exception itself
    rather than an ``ExceptionGroup``, which is what a driver's supervisor handles. Cancelling the
    caller cancels every task, and waits for them.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    for task, name in zip(tasks, names):
        task.set_name(name)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        await cancel_and_wait(tasks)
    failed = [t for t in tasks if not t.cancelled() and t.exception() is not None]
    if failed:
        raise failed[0].exception()
