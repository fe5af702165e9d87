"""The `Sandbox` protocol every backend implements, its result type and its errors.

A sandbox owns one persistent Jupyter kernel behind an isolation boundary. Lifecycle
(start, restart, close) lives here; messaging lives in `sandbox.kernel.KernelSession`,
which every backend reuses, much as jupyter_client splits KernelManager from KernelClient.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Serves one request the kernel sent over its stdin channel; returns the JSON-able reply.
RequestHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class SandboxError(Exception):
    """Base class of every sandbox failure."""


class SandboxUnavailable(SandboxError):
    """The backend cannot run on this machine (missing binary, daemon, image...)."""


class SandboxStartError(SandboxError):
    """The kernel did not come up."""


class SandboxCrashed(SandboxError):
    """The kernel process died; its state is gone until `restart()`."""


@dataclass
class Output:
    """Captured text with bounded memory: keeps a head and a tail, counts what it dropped."""

    limit: int
    head: str = ""
    tail: str = ""
    total: int = 0

    def write(self, text: str) -> None:
        self.total += len(text)
        half = self.limit // 2
        if len(self.head) < half:
            room = half - len(self.head)
            self.head += text[:room]
            text = text[room:]
        if text:
            self.tail = (self.tail + text)[-(self.limit - half) :]

    @property
    def dropped(self) -> int:
        """Characters not in `render()` (the cut marker's own length included)."""
        return self.total - len(self._parts()[0]) - len(self._parts()[1])

    def _parts(self) -> tuple[str, str]:
        if self.total <= self.limit:
            return self.head + self.tail, ""
        # Make room for the marker so the rendered text never exceeds `limit`.
        budget = max(0, self.limit - 48)
        return self.head[: budget // 2], self.tail[len(self.tail) - (budget - budget // 2) :]

    def render(self) -> str:
        head, tail = self._parts()
        if self.total <= self.limit:
            return head
        return f"{head}\n[... {self.dropped:,} characters cut ...]\n{tail}"


@dataclass
class ExecutionResult:
    """What one `execute` produced. `error` holds the traceback text of a failed cell."""

    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    error_name: str | None = None
    timed_out: bool = False
    restarted: bool = False
    chars_cut: int = 0
    duration: float = 0.0
    expressions: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


class Sandbox(abc.ABC):
    """A persistent, isolated Python kernel.

    Use as an async context manager: `async with LocalSandbox(...) as sb: await sb.execute("1+1")`.
    """

    #: Host directory shared with the kernel read-write; data files are written here.
    workdir: Path

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the kernel and wait until it answers."""

    @abc.abstractmethod
    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_request: RequestHandler | None = None,
        user_expressions: dict[str, str] | None = None,
        max_output_chars: int = 1_000_000,
    ) -> ExecutionResult:
        """Run `code`. On timeout the kernel is interrupted, then restarted if it stays busy.

        Raises `SandboxCrashed` if the kernel died during the cell.
        """

    @abc.abstractmethod
    async def interrupt(self) -> None:
        """Interrupt the running cell (KeyboardInterrupt in the kernel)."""

    @abc.abstractmethod
    async def restart(self) -> None:
        """Replace the kernel with a fresh one; all kernel state is lost."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the kernel and everything it started; remove private files. Idempotent."""

    def path_in_sandbox(self, host_path: Path) -> str:
        """Where a file under `workdir` (or a read-only mount) appears inside the sandbox."""
        return str(host_path)

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
