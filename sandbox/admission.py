"""Admission control: process-wide bounds on sandboxes starting at once and alive at once; the
rest wait their turn in order. Every way to get a sandbox (`rlm.arun`, sessions, pools) passes.

A kernel start is CPU-bound, so starting more at once than the machine has cores slows every
start and starves the controller serving the runs already going. `limit_sandboxes` changes the
bounds; `alive` is unbounded by default because a run that holds its sandbox while nested runs
start theirs (`max_depth > 1`) deadlocks under a bound smaller than its whole call tree.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque

from .base import SandboxConfigError


class Slots:
    """A counting semaphore shared by every thread and event loop of the process (an
    `asyncio.Semaphore` belongs to one loop). `limit=None` admits everyone at once."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.limit is None or self.in_use < self.limit:
                self.in_use += 1
                return
            turn: asyncio.Future[None] = loop.create_future()
            self._waiting.append((loop, turn))
        try:
            await turn
        except asyncio.CancelledError:
            with self._lock:
                granted = (loop, turn) not in self._waiting
                if not granted:
                    self._waiting.remove((loop, turn))
            if granted:  # the slot was on its way to us: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Free one slot, handing it straight to the longest waiter when there is one."""
        with self._lock:
            while self._waiting:
                loop, turn = self._waiting.popleft()
                try:
                    loop.call_soon_threadsafe(self._hand_over, turn)
                    return
                except RuntimeError:  # that waiter's loop is closed: nobody to hand it to
                    continue
            self.in_use -= 1

    def _hand_over(self, turn: asyncio.Future[None]) -> None:
        if turn.done():  # cancelled after it was granted; acquire() releases it
            return
        turn.set_result(None)


def _cores() -> int:
    return len(os.sched_getaffinity(0))


#: Kernels starting at once: a start uses most of a core for its duration.
starting = Slots(_cores())
#: Sandboxes started and not yet closed.
alive = Slots(None)


def limit_sandboxes(*, starting_at_once: int | None = None, alive_at_once: int | None = None) -> None:
    """Set the process-wide bounds: `starting_at_once` defaults to the cores this process may
    use, `alive_at_once` to no bound (see the module's note). Applies to acquisitions from now on."""
    for name, value in (("starting_at_once", starting_at_once), ("alive_at_once", alive_at_once)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SandboxConfigError(f"{name} must be a positive int or None, not {value!r}")
    starting.limit = starting_at_once or _cores()
    alive.limit = alive_at_once
