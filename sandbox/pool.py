"""`SandboxPool`: sandboxes started ahead of time, so a run gets one in milliseconds.

Every sandbox is handed out once and never comes back (the caller closes it): a fresh kernel per
run, no state shared between runs. The pool refills in the background. It lives on the event loop
that started it, so use it from async code (`await rlm.arun(..., pool=pool)`, the harness).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .base import Backend, Sandbox, SandboxError

log = logging.getLogger("rlm.sandbox")


class SandboxPool:
    def __init__(self, backend: Backend = "local", size: int = 4, **options: Any) -> None:
        from . import create_sandbox  # the registry lives in the package

        self._create: Callable[[], Sandbox] = lambda: create_sandbox(backend, **options)
        self.backend = backend
        self.size = size
        self._ready: asyncio.Queue[Sandbox] = asyncio.Queue()
        self._refills: set[asyncio.Task[None]] = set()
        self._closed = False
        self.handed_out = 0

    async def start(self) -> SandboxPool:
        """Fill the pool and wait until every sandbox is ready."""
        await asyncio.gather(*(self._add() for _ in range(self.size)))
        return self

    async def _add(self) -> None:
        sandbox = self._create()
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        if self._closed:
            await sandbox.close()
        else:
            self._ready.put_nowait(sandbox)

    def _refill(self) -> None:
        task = asyncio.get_running_loop().create_task(self._add())
        self._refills.add(task)
        task.add_done_callback(self._refilled)

    def _refilled(self, task: asyncio.Task[None]) -> None:
        self._refills.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("sandbox pool refill failed: %s", task.exception())

    async def acquire(self) -> Sandbox:
        """A started sandbox of its own for the caller, who must close it."""
        if self._closed:
            raise SandboxError("the sandbox pool is closed")
        self._refill()
        self.handed_out += 1
        try:
            return self._ready.get_nowait()
        except asyncio.QueueEmpty:
            return await self._ready.get()  # the refill just scheduled hands one over

    @property
    def ready(self) -> int:
        return self._ready.qsize()

    async def close(self) -> None:
        """Stop refilling and close every sandbox still in the pool, all of them even when this
        close is cancelled on the way (the cancellation is raised once they are closed)."""
        self._closed = True
        for task in list(self._refills):
            task.cancel()
        cancelled: asyncio.CancelledError | None = None
        try:
            await asyncio.gather(*self._refills, return_exceptions=True)
        except asyncio.CancelledError as exc:
            cancelled = exc
        while not self._ready.empty():
            try:
                await self._ready.get_nowait().close()  # finishes its cleanup even when cancelled
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    async def __aenter__(self) -> SandboxPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
