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

from carrierd.loops import (
    LoopGaveUp,
    StopRequested,
    backoff_s,
    supervise,
    until_database_answers,
)
from carrierd.store.db import ConnectionBroken, is_database_unreachable, is_transient_db_error

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


def test_an_aborted_transaction_is_transient_but_not_the_database_away() -> None:
    for aborted in (
        asyncpg.exceptions.DeadlockDetectedError(),
        asyncpg.exceptions.SerializationError(),
    ):
        assert is_transient_db_error(aborted)
        assert not is_database_unreachable(aborted)
    assert is_database_unreachable(connection_lost())
    assert is_database_unreachable(ConnectionRefusedError(111, "Connection refused"))


def caused_by(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def in_context_of(exc: BaseException, context: BaseException) -> BaseException:
    exc.__context__ = context
    return exc


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
        FileNotFoundError(2, "No such file or directory"),
        TimeoutError(),
        ConnectionBroken("InternalClientError: cannot switch to state 15"),
        asyncpg.exceptions.PostgresError("the database system is starting up"),
        caused_by(
            asyncpg.exceptions.InterfaceError("pool connection failed"),
            ConnectionResetError(104, "Connection reset by peer"),
        ),
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
        asyncpg.exceptions.InternalClientError("cannot switch to state 15"),
        asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
        ValueError("not a database problem"),
        KeyError("state"),
        # Raised while handling an outage is not the outage: only an
        # explicit cause (raise ... from) is read.
        in_context_of(ValueError("bug in a handler"), ConnectionResetError()),
    ],
)
def test_errors_that_are_not_the_database_being_away(exc: BaseException) -> None:
    assert not is_transient_db_error(exc)


class ScriptedWork:
    """Raises each scripted error in turn, then returns `result`."""

    def __init__(self, errors: list[BaseException], result: str = "done") -> None:
        self._errors = iter(errors)
        self._result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        error = next(self._errors, None)
        if error is not None:
            raise error
        return self._result


async def test_until_database_answers_waits_out_an_outage() -> None:
    work = ScriptedWork([connection_lost() for _ in range(30)])
    waits: list[float] = []
    result = await asyncio.wait_for(
        until_database_answers(
            "test",
            work,
            max_backoff_s=TINY_BACKOFF_S,
            on_wait=lambda exc, wait_s: waits.append(wait_s),
        ),
        HANG_GUARD_S,
    )
    assert result == "done"
    assert work.calls == 31 and len(waits) == 30


async def test_until_database_answers_lets_other_errors_through_at_once() -> None:
    work = ScriptedWork([connection_lost(), KeyError("bug")])
    with pytest.raises(KeyError):
        await until_database_answers("test", work, max_backoff_s=TINY_BACKOFF_S)
    assert work.calls == 2


async def test_until_database_answers_gives_up_after_its_deadline() -> None:
    work = ScriptedWork([connection_lost() for _ in range(1_000_000)])
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await asyncio.wait_for(
            until_database_answers(
                "test", work, give_up_after_s=0.01, max_backoff_s=TINY_BACKOFF_S
            ),
            HANG_GUARD_S,
        )


async def test_until_database_answers_stops_when_asked() -> None:
    stop = asyncio.Event()
    work = ScriptedWork([connection_lost() for _ in range(1_000_000)])

    async def stop_soon() -> None:
        await asyncio.sleep(0.01)
        stop.set()

    stopper = asyncio.ensure_future(stop_soon())
    with pytest.raises(StopRequested):
        await asyncio.wait_for(
            until_database_answers("test", work, stop=stop, max_backoff_s=3600.0), HANG_GUARD_S
        )
    await stopper
