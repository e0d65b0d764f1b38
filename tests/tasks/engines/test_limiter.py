"""Proves the AIMD limiter's rule on a fake clock: the window admits `limit` requests, grows by about
one per window of successes up to its maximum, halves once per congestion event (requests that were
in flight before a cut do not cut again), never drops below its minimum, and pauses for Retry-After;
and that `AsyncGate` holds coroutines to that window in a real event loop."""
from __future__ import annotations

import asyncio

import pytest

from tasks.engines.limiter import AIMDLimiter, AsyncGate


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_window_admits_limit_requests_then_waits():
    limiter = AIMDLimiter(initial=3, clock=Clock())
    tickets = [limiter.start() for _ in range(3) if limiter.wait_time() == 0]
    assert len(tickets) == 3 and limiter.wait_time() is None and limiter.max_in_flight == 3
    limiter.succeeded(tickets[0])
    assert limiter.wait_time() == 0


def test_additive_increase_is_about_one_per_window_and_capped():
    limiter = AIMDLimiter(initial=4, maximum=6, clock=Clock())
    for _ in range(4):
        limiter.succeeded(limiter.start())
    assert 4.9 < limiter.limit < 5.0  # 4 + 1/4 + 1/4.25 + ...: a bit under +1 for one window
    for _ in range(100):
        limiter.succeeded(limiter.start())
    assert limiter.limit == 6


def test_one_congestion_event_halves_once():
    limiter = AIMDLimiter(initial=16, clock=Clock())
    burst = [limiter.start() for _ in range(16)]
    for ticket in burst:  # all 16 come back 429: one event
        limiter.throttled(ticket)
    assert limiter.limit == 8 and limiter.cuts == 1 and limiter.in_flight == 0
    late = limiter.start()  # started after the cut: a new event when it is throttled
    limiter.throttled(late)
    assert limiter.limit == 4 and limiter.cuts == 2


def test_the_limit_never_drops_below_its_minimum():
    limiter = AIMDLimiter(initial=2, minimum=1, clock=Clock())
    for _ in range(5):
        limiter.throttled(limiter.start())
    assert limiter.limit == 1 and limiter.wait_time() == 0


def test_retry_after_pauses_every_start():
    clock = Clock()
    limiter = AIMDLimiter(initial=8, clock=clock)
    limiter.throttled(limiter.start(), retry_after=2.0)
    assert limiter.wait_time() == pytest.approx(2.0)
    clock.now += 1.5
    assert limiter.wait_time() == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.wait_time() == 0


def test_a_neutral_end_changes_nothing():
    limiter = AIMDLimiter(initial=5, clock=Clock())
    limiter.ended(limiter.start())
    assert limiter.limit == 5 and limiter.in_flight == 0


@pytest.mark.parametrize("args", [dict(initial=0), dict(initial=3, minimum=4), dict(initial=9, maximum=8),
                                  dict(initial=2, decrease=1.0)])
def test_bad_settings_are_refused(args):
    with pytest.raises(ValueError):
        AIMDLimiter(**args)


def test_the_gate_keeps_coroutines_inside_the_window():
    gate = AsyncGate(AIMDLimiter(initial=3, maximum=3))
    peak, now = [0], [0]

    async def request():
        ticket = await gate.acquire()
        now[0] += 1
        peak[0] = max(peak[0], now[0])
        await asyncio.sleep(0.01)
        now[0] -= 1
        await gate.release(ticket, "ok")

    async def main():
        await asyncio.gather(*(request() for _ in range(20)))

    asyncio.run(main())
    assert peak[0] == 3 and gate.limiter.in_flight == 0
    asyncio.run(main())  # a second event loop gets its own condition
    assert gate.limiter.in_flight == 0
