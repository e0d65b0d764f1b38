"""How many requests one endpoint and model get at once: additive increase, multiplicative decrease
(AIMD, TCP's congestion rule), plus a pause when the server says `Retry-After`. Pure logic with an
injectable clock; `AsyncGate` puts it in front of coroutines.

Example:
    limiter = AIMDLimiter(initial=16, maximum=256)
    ticket = limiter.start()                 # only when limiter.wait_time() == 0
    limiter.succeeded(ticket)                # limit 16 -> 16.0625 (+1 per full window of successes)
    limiter.throttled(ticket, retry_after=2) # limit halves (once per congestion event); no start for 2 s

The limit grows by 1/limit per success, about +1 per round trip of a full window, and halves on a
throttle (429), a server error (5xx) or a timeout. Requests that were already in flight when the limit
was cut carry the old epoch in their ticket: their own throttles are the same congestion event and cut
nothing more, so a burst of 429s from 64 requests halves the limit once, not 64 times.

Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_limiter.py
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Ticket:
    epoch: int  # the limiter's epoch when the request started (bumped at every cut)


class AIMDLimiter:
    def __init__(self, initial: int, minimum: int = 1, maximum: int = 256, decrease: float = 0.5,
                 clock=time.monotonic):
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError(f"need 1 <= minimum ({minimum}) <= initial ({initial}) <= maximum ({maximum})")
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), got {decrease}")
        self.limit = float(initial)
        self.minimum, self.maximum, self.decrease = minimum, maximum, decrease
        self._clock = clock
        self.in_flight = 0
        self.max_in_flight = 0
        self.paused_until = -math.inf
        self.epoch = 0
        self.cuts = 0

    def wait_time(self) -> float | None:
        """0: a request may start now; > 0: the server asked for a pause that long; None: the window is
        full (wait for a request to end)."""
        now = self._clock()
        if now < self.paused_until:
            return self.paused_until - now
        return 0.0 if self.in_flight < math.floor(self.limit) else None

    def start(self) -> Ticket:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return Ticket(self.epoch)

    def succeeded(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)

    def throttled(self, ticket: Ticket, retry_after: float | None = None) -> None:
        """A 429, 5xx or timeout: cut the limit once per congestion event; pause for `retry_after`."""
        self.in_flight -= 1
        if ticket.epoch == self.epoch:
            self.limit = max(float(self.minimum), self.limit * self.decrease)
            self.epoch += 1
            self.cuts += 1
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, self._clock() + retry_after)

    def ended(self, ticket: Ticket) -> None:
        """A request that ended with an answer that says nothing about load (a 400): no change."""
        self.in_flight -= 1


class AsyncGate:
    """An `AIMDLimiter` in front of coroutines: `async with gate.slot() as ticket` waits for the limiter
    to admit one more request. Waiters are woken when a request ends; a pause is slept through. The
    condition is made in the event loop that uses it (a new loop gets a new one)."""

    def __init__(self, limiter: AIMDLimiter):
        self.limiter = limiter
        self._cond: asyncio.Condition | None = None
        self._loop = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:
            self._cond, self._loop = asyncio.Condition(), loop
        return self._cond

    async def acquire(self) -> Ticket:
        cond = self._condition()
        async with cond:
            while True:
                wait = self.limiter.wait_time()
                if wait == 0:
                    return self.limiter.start()
                if wait is None:
                    await cond.wait()
                else:
                    cond.release()  # sleep through the pause without holding the lock
                    try:
                        await asyncio.sleep(wait)
                    finally:
                        await cond.acquire()

    async def release(self, ticket: Ticket, outcome: str, retry_after: float | None = None) -> None:
        """outcome: "ok" (grow), "throttled" (cut, pause), or "neutral"."""
        if outcome == "ok":
            self.limiter.succeeded(ticket)
        elif outcome == "throttled":
            self.limiter.throttled(ticket, retry_after)
        else:
            self.limiter.ended(ticket)
        cond = self._condition()
        async with cond:
            cond.notify_all()
