"""The SMPP send window (carrierd.smpp.window)."""

from __future__ import annotations

import asyncio

import pytest

from carrierd.smpp.window import LateAnswers, ResponseTimeout, Window, WindowTimeout

# Long enough never to fire in these tests: slots are freed explicitly.
PATIENT_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ConnectionLost(Exception):
    pass


async def settle() -> None:
    """Let every ready task run until they all block again."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_offer_takes_a_slot_and_complete_resolves_the_future() -> None:
    window: Window[str] = Window(2)
    future = await window.offer(1, timeout_s=PATIENT_S)
    assert window.in_flight == 1
    assert 1 in window
    assert window.complete(1, "resp")
    assert await future == "resp"
    assert window.in_flight == 0
    assert window.size == 2


async def test_unknown_or_duplicate_completion_returns_false() -> None:
    window: Window[str] = Window(2)
    await window.offer(1, timeout_s=PATIENT_S)
    assert not window.complete(99, "late")
    assert window.complete(1, "first")
    assert not window.complete(1, "duplicate")
    assert not window.fail(1, RuntimeError("gone"))


async def test_fail_sets_the_exception() -> None:
    window: Window[str] = Window(1)
    future = await window.offer(1, timeout_s=PATIENT_S)
    assert window.fail(1, ConnectionLost())
    with pytest.raises(ConnectionLost):
        await future
    assert window.in_flight == 0


async def test_duplicate_in_flight_sequence_number_is_refused() -> None:
    window: Window[str] = Window(2)
    await window.offer(1, timeout_s=PATIENT_S)
    with pytest.raises(ValueError):
        await window.offer(1, timeout_s=PATIENT_S)


async def test_size_is_never_exceeded_under_concurrency() -> None:
    window: Window[int] = Window(3)
    peak = 0

    async def request(sequence_number: int) -> int:
        nonlocal peak
        future = await window.offer(sequence_number, timeout_s=PATIENT_S)
        peak = max(peak, window.in_flight)
        assert window.in_flight <= window.size
        return await future

    async def responder() -> None:
        answered = 0
        while answered < 50:
            await asyncio.sleep(0)
            for sequence_number in range(1, 51):
                if window.complete(sequence_number, sequence_number * 10):
                    answered += 1
                    break

    results = await asyncio.gather(*(request(n) for n in range(1, 51)), responder())
    assert results[:50] == [n * 10 for n in range(1, 51)]
    assert peak == 3
    assert window.in_flight == 0
    assert window.waiting == 0


async def test_waiting_offers_proceed_in_fifo_order() -> None:
    window: Window[None] = Window(1)
    await window.offer(0, timeout_s=PATIENT_S)
    granted: list[int] = []

    async def request(sequence_number: int) -> None:
        await window.offer(sequence_number, timeout_s=PATIENT_S)
        granted.append(sequence_number)

    tasks = []
    for sequence_number in [5, 3, 8, 1]:
        tasks.append(asyncio.create_task(request(sequence_number)))
        await settle()
    assert window.waiting == 4

    for previous in [0, 5, 3, 8]:
        window.complete(previous, None)
        await settle()
    await asyncio.gather(*tasks)
    assert granted == [5, 3, 8, 1]


async def test_a_new_offer_does_not_overtake_waiting_ones() -> None:
    window: Window[None] = Window(1)
    await window.offer(1, timeout_s=PATIENT_S)
    waiting = asyncio.create_task(window.offer(2, timeout_s=PATIENT_S))
    await settle()
    window.complete(1, None)
    # The freed slot is already promised to sequence 2, before its task even runs.
    newcomer = asyncio.create_task(window.offer(3, timeout_s=PATIENT_S))
    await settle()
    assert waiting.done()
    assert not newcomer.done()
    assert window.in_flight == 1
    window.complete(2, None)
    await settle()
    assert newcomer.done()
    assert window.fail_all(ConnectionLost()) == [3]
    await waiting.result()  # sequence 2 was answered normally
    with pytest.raises(ConnectionLost):
        await newcomer.result()


async def test_offer_times_out_when_no_slot_frees() -> None:
    window: Window[None] = Window(1)
    await window.offer(1, timeout_s=PATIENT_S)
    with pytest.raises(WindowTimeout) as caught:
        await window.offer(2, timeout_s=0.01)
    assert caught.value.sequence_number == 2
    assert window.waiting == 0
    assert window.in_flight == 1
    # The timed-out offer left no trace: the next free slot goes to the next offer.
    window.complete(1, None)
    await window.offer(3, timeout_s=PATIENT_S)
    assert 3 in window


async def test_cancelled_offer_gives_its_slot_to_the_next_waiter() -> None:
    window: Window[None] = Window(1)
    await window.offer(1, timeout_s=PATIENT_S)
    first = asyncio.create_task(window.offer(2, timeout_s=PATIENT_S))
    second = asyncio.create_task(window.offer(3, timeout_s=PATIENT_S))
    await settle()
    # Slot handed to `first`, which is cancelled before it can claim it.
    window.complete(1, None)
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done()
    assert 3 in window
    assert 2 not in window
    assert window.in_flight == 1


async def test_cancelled_waiting_offer_leaves_the_queue() -> None:
    window: Window[None] = Window(1)
    await window.offer(1, timeout_s=PATIENT_S)
    task = asyncio.create_task(window.offer(2, timeout_s=PATIENT_S))
    await settle()
    task.cancel()
    await settle()
    assert window.waiting == 0
    window.complete(1, None)
    await window.offer(4, timeout_s=PATIENT_S)
    assert window.in_flight == 1


async def test_expire_reports_and_fails_exactly_the_old_requests() -> None:
    clock = FakeClock()
    window: Window[str] = Window(10, clock=clock)
    futures = {}
    for sequence_number, offered_at in [(1, 1000.0), (2, 1005.0), (3, 1010.0), (4, 1020.0)]:
        clock.now = offered_at
        futures[sequence_number] = await window.offer(sequence_number, timeout_s=PATIENT_S)

    assert window.next_expiry_at(response_timeout_s=30.0) == 1030.0
    assert window.expire(now_monotonic=1029.9, response_timeout_s=30.0) == []
    assert window.expire(now_monotonic=1040.0, response_timeout_s=30.0) == [1, 2, 3]
    for sequence_number in (1, 2, 3):
        with pytest.raises(ResponseTimeout) as caught:
            await futures[sequence_number]
        assert caught.value.sequence_number == sequence_number
    assert caught.value.waited_s == pytest.approx(30.0)
    assert not futures[4].done()
    assert window.in_flight == 1
    assert window.next_expiry_at(response_timeout_s=30.0) == 1050.0
    # A response arriving after its request expired is a late response.
    assert not window.complete(1, "late")
    assert window.complete(4, "on time")


async def test_expire_frees_slots_for_waiting_offers() -> None:
    clock = FakeClock()
    window: Window[None] = Window(1, clock=clock)
    expired_future = await window.offer(1, timeout_s=PATIENT_S)
    waiting = asyncio.create_task(window.offer(2, timeout_s=PATIENT_S))
    await settle()
    clock.now += 60.0
    assert window.expire(clock.now, response_timeout_s=30.0) == [1]
    await waiting
    assert 2 in window
    with pytest.raises(ResponseTimeout):
        await expired_future


async def test_expire_skips_response_futures_the_caller_cancelled() -> None:
    clock = FakeClock()
    window: Window[None] = Window(1, clock=clock)
    future = await window.offer(1, timeout_s=PATIENT_S)
    future.cancel()
    # Still in flight: the request is on the wire and the SMSC counts it.
    assert window.in_flight == 1
    clock.now += 60.0
    assert window.expire(clock.now, response_timeout_s=30.0) == [1]
    assert window.in_flight == 0


async def test_fail_all_fails_in_flight_and_waiting_offers() -> None:
    window: Window[None] = Window(2)
    in_flight = [await window.offer(n, timeout_s=PATIENT_S) for n in (7, 8)]
    waiting = asyncio.create_task(window.offer(9, timeout_s=PATIENT_S))
    await settle()
    lost = ConnectionLost()
    assert window.fail_all(lost) == [7, 8]
    for future in in_flight:
        with pytest.raises(ConnectionLost):
            await future
    with pytest.raises(ConnectionLost):
        await waiting
    assert window.in_flight == 0
    assert window.waiting == 0
    assert window.next_expiry_at(response_timeout_s=1.0) is None
    # Usable again after a reconnect.
    await window.offer(1, timeout_s=PATIENT_S)
    assert window.in_flight == 1


async def test_fail_all_also_fails_an_offer_granted_but_not_yet_resumed() -> None:
    window: Window[None] = Window(1)
    await window.offer(1, timeout_s=PATIENT_S)
    waiting = asyncio.create_task(window.offer(2, timeout_s=PATIENT_S))
    await settle()
    window.complete(1, None)  # slot handed to sequence 2, its task has not run yet
    assert window.fail_all(ConnectionLost()) == []
    with pytest.raises(ConnectionLost):
        await waiting
    assert window.in_flight == 0
    await window.offer(3, timeout_s=PATIENT_S)
    assert window.in_flight == 1


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Window(0)


async def test_late_answers_are_kept_a_while_and_only_so_many() -> None:
    late: LateAnswers[str] = LateAnswers(keep_s=10.0, max_entries=2)
    first, second = late.remember(1, 0.0), late.remember(2, 1.0)
    third = late.remember(3, 2.0)  # over the bound: the oldest goes
    assert first.cancelled() and len(late) == 2
    assert late.take(2, 3.0) is second and late.take(2, 3.0) is None
    assert late.take(3, 12.5) is None  # remembered at 2.0, kept 10 s
    assert third.cancelled() and len(late) == 0
    fourth = late.remember(4, 20.0)
    late.forget_all()
    assert fourth.cancelled()
