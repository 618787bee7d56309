"""supervise with fake steps. The backoff cap is tiny so that no test waits;
nothing here asserts on wall-clock time (the outer wait_for only keeps a
broken loop from hanging the suite)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import structlog
from structlog.testing import capture_logs

from carrierd.loops import LoopGaveUp, backoff_s, supervise
from carrierd.store.db import is_transient_db_error

TINY_BACKOFF_S = 1e-4
HANG_GUARD_S = 10.0


class ScriptedStep:
    """Raises or returns each scripted outcome in turn, then sets `stop`."""

    def __init__(self, stop: asyncio.Event, outcomes: list[BaseException | float]) -> None:
        self._stop = stop
        self._outcomes: Iterator[BaseException | float] = iter(outcomes)
        self.calls = 0

    async def __call__(self) -> float:
        self.calls += 1
        outcome = next(self._outcomes, None)
        if outcome is None:
            self._stop.set()
            return 0.0
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def run(
    step: Callable[[], Awaitable[float]], stop: asyncio.Event, **options: Any
) -> list[dict[str, Any]]:
    options.setdefault("max_backoff_s", TINY_BACKOFF_S)
    with capture_logs() as logs:
        await asyncio.wait_for(supervise("test", step, stop, **options), HANG_GUARD_S)
    return logs


@pytest.fixture(autouse=True)
def _plain_structlog() -> Iterator[None]:
    # capture_logs needs structlog's defaults, whatever another test set up.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def connection_lost() -> BaseException:
    return asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    )


async def test_calls_the_step_until_stop_is_set() -> None:
    stop = asyncio.Event()
    step = ScriptedStep(stop, [0.0, TINY_BACKOFF_S, 0.0])
    logs = await run(step, stop)
    assert step.calls == 4
    assert logs == []


async def test_a_long_wait_ends_as_soon_as_stop_is_set() -> None:
    stop = asyncio.Event()
    step = ScriptedStep(stop, [3600.0])

    async def stop_soon() -> None:
        await asyncio.sleep(0)
        stop.set()

    stopper = asyncio.ensure_future(stop_soon())
    await run(step, stop)
    await stopper
    assert step.calls == 1


async def test_the_database_being_away_never_ends_the_loop() -> None:
    stop = asyncio.Event()
    outages: list[BaseException | float] = [connection_lost() for _ in range(50)]
    step = ScriptedStep(stop, outages)
    logs = await run(step, stop, max_consecutive_failures=3)
    assert step.calls == 51
    waits = [entry for entry in logs if entry["event"] == "loop_waiting_for_database"]
    assert [entry["attempt"] for entry in waits] == list(range(1, 51))
    assert all(entry["name"] == "test" for entry in waits)
    assert all(0 < entry["retry_in_s"] <= TINY_BACKOFF_S for entry in waits)
    assert not [entry for entry in logs if entry["event"] == "loop_step_failed"]


async def test_other_failures_are_logged_and_retried_then_the_loop_gives_up() -> None:
    stop = asyncio.Event()
    step = ScriptedStep(stop, [ValueError(f"bug {n}") for n in range(10)])
    with pytest.raises(LoopGaveUp) as raised:
        await run(step, stop, max_consecutive_failures=4)
    assert step.calls == 4
    assert raised.value.name == "test" and raised.value.failures == 4
    assert isinstance(raised.value.__cause__, ValueError)
    assert not stop.is_set()


async def test_each_failure_is_logged_with_its_traceback() -> None:
    stop = asyncio.Event()
    step = ScriptedStep(stop, [KeyError("row"), 0.0])
    logs = await run(step, stop)
    [failed] = [entry for entry in logs if entry["event"] == "loop_step_failed"]
    assert failed["name"] == "test"
    assert failed["exc_info"] is True
    assert failed["log_level"] == "error"


async def test_a_success_resets_the_count_towards_giving_up() -> None:
    stop = asyncio.Event()
    bugs: list[BaseException | float] = [RuntimeError("bug") for _ in range(3)]
    step = ScriptedStep(stop, [*bugs, 0.0, *bugs, 0.0, *bugs])
    await run(step, stop, max_consecutive_failures=4)
    assert step.calls == 12


async def test_database_outages_between_failures_do_not_reset_the_count() -> None:
    stop = asyncio.Event()
    step = ScriptedStep(
        stop, [RuntimeError("bug"), connection_lost(), RuntimeError("bug"), connection_lost()]
    )
    with pytest.raises(LoopGaveUp):
        await run(step, stop, max_consecutive_failures=2)
    assert step.calls == 3


async def test_cancellation_is_not_a_failure() -> None:
    stop = asyncio.Event()

    async def cancelled() -> float:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run(cancelled, stop)


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_the_cap() -> None:
    assert [backoff_s(n, 5.0) for n in range(1, 9)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )
    assert backoff_s(10_000, 5.0) == 5.0
    with pytest.raises(ValueError):
        backoff_s(0, 5.0)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.DeadlockDetectedError(),
        asyncpg.exceptions.SerializationError(),
        asyncpg.exceptions.CannotConnectNowError(),
        asyncpg.exceptions.AdminShutdownError(),
        asyncpg.exceptions.ConnectionDoesNotExistError(),
        asyncpg.exceptions.InterfaceError("cannot perform operation: connection is closed"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
    ],
)
def test_transient_database_errors(exc: BaseException) -> None:
    assert is_transient_db_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UndefinedColumnError(),
        asyncpg.exceptions.UniqueViolationError(),
        asyncpg.exceptions.InterfaceError("pool is closed"),
        asyncpg.exceptions.InterfaceError(
            "cannot perform operation: another operation is in progress"
        ),
        ValueError("not a database problem"),
        KeyError("state"),
    ],
)
def test_errors_that_are_not_the_database_being_away(exc: BaseException) -> None:
    assert not is_transient_db_error(exc)
