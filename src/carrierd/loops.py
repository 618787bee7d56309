"""One error policy for every background loop.

A loop is a `step` called again and again until its stop event is set; the
step says how long to wait before the next call. `supervise` owns what
happens when a step raises:

- the database is away (`is_transient_db_error`): wait and retry with
  exponential backoff, forever. A failover or a restarting PostgreSQL is
  weather, not a bug; every daemon on the database would otherwise exit
  at once and systemd would restart them all into the same outage.
- anything else: log it with its traceback and go on after the same
  backoff, since one bad row or one odd answer should not stop the work of
  every other one. After `max_consecutive_failures` such failures with no
  success between them the step is broken, not unlucky: `LoopGaveUp` ends
  the loop, the daemon stops on purpose and systemd restarts it.

A success resets both counts.

`until_database_answers` is the same policy for one piece of work that
must be done before going on (startup, `carrierd migrate`): it retries while
the database is away, optionally up to a deadline, and lets anything else
through at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from carrierd.store.db import is_transient_db_error

log = structlog.get_logger("carrierd.loops")

FIRST_BACKOFF_S = 0.1
# The longest wait between two tries of a loop: also how late a daemon
# notices that the database is back.
MAX_BACKOFF_S = 5.0
# Only keeps 2**n finite; the cap on seconds is what matters.
_MAX_BACKOFF_EXPONENT = 60


T = TypeVar("T")


class StopRequested(Exception):
    """The wait for the database ended because the daemon is stopping."""


class LoopGaveUp(Exception):
    """A loop's step failed too many times in a row (not for the database)."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(f"loop {name!r} gave up after {failures} consecutive failures")
        self.name = name
        self.failures = failures


def backoff_s(failures: int, max_backoff_s: float) -> float:
    """The wait after the `failures`-th failure in a row (1 for the first):
    0.1 s, 0.2 s, 0.4 s... capped at `max_backoff_s`."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    exponent = min(failures - 1, _MAX_BACKOFF_EXPONENT)
    return min(max_backoff_s, FIRST_BACKOFF_S * 2.0**exponent)


async def wait_or_stop(stop: asyncio.Event, wait_s: float) -> None:
    """Sleep `wait_s` seconds, or less if `stop` is set meanwhile."""
    if wait_s <= 0:
        # Still yield once: a step that always has more work must not starve
        # the rest of the event loop.
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), wait_s)


async def supervise(
    name: str,
    step: Callable[[], Awaitable[float]],
    stop: asyncio.Event,
    *,
    max_backoff_s: float = MAX_BACKOFF_S,
    max_consecutive_failures: int = 20,
) -> None:
    """Call `step` until `stop` is set; see the module docstring."""
    if max_consecutive_failures < 1:
        raise ValueError(f"max_consecutive_failures must be >= 1, got {max_consecutive_failures}")
    failures_in_a_row = 0  # of either kind: drives the backoff
    step_failures = 0  # not the database's fault: drives giving up
    while not stop.is_set():
        try:
            wait_s = await step()
        except Exception as exc:
            failures_in_a_row += 1
            wait_s = backoff_s(failures_in_a_row, max_backoff_s)
            if is_transient_db_error(exc):
                log.warning(
                    "loop_waiting_for_database",
                    name=name,
                    attempt=failures_in_a_row,
                    retry_in_s=wait_s,
                    error=repr(exc),
                )
            else:
                step_failures += 1
                log.exception(
                    "loop_step_failed", name=name, attempt=step_failures, retry_in_s=wait_s
                )
                if step_failures >= max_consecutive_failures:
                    raise LoopGaveUp(name, step_failures) from exc
        else:
            failures_in_a_row = step_failures = 0
        await wait_or_stop(stop, wait_s)


async def until_database_answers(
    name: str,
    work: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event | None = None,
    give_up_after_s: float | None = None,
    max_backoff_s: float = MAX_BACKOFF_S,
    on_wait: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run `work` until it succeeds, waiting out the database being away.

    Any other error is raised at once. With `give_up_after_s` the last
    transient error is raised once that many seconds have passed; with
    `stop`, StopRequested is raised as soon as it is set. `on_wait` hears of
    each failure and the wait before the next try.
    """
    started_s = time.monotonic()
    failures = 0
    while True:
        if stop is not None and stop.is_set():
            raise StopRequested(name)
        try:
            return await work()
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            failures += 1
            wait_s = backoff_s(failures, max_backoff_s)
            if give_up_after_s is not None:
                left_s = give_up_after_s - (time.monotonic() - started_s)
                if left_s <= 0:
                    raise
                wait_s = min(wait_s, left_s)
            log.warning(
                "waiting_for_database",
                name=name,
                attempt=failures,
                retry_in_s=round(wait_s, 3),
                error=repr(exc),
            )
            if on_wait is not None:
                on_wait(exc, wait_s)
        if stop is None:
            await asyncio.sleep(wait_s)
        else:
            await wait_or_stop(stop, wait_s)
