"""The `Sandbox` protocol callers use, its result type, its limits and its errors.

A sandbox owns one persistent Jupyter kernel behind an isolation boundary. The one
implementation is `sandbox.kernel.KernelSandbox`; backends differ only in their `Provisioner`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .rpc import Reply

#: The backends `create_sandbox` knows: `unsafe-local` is the documented no-isolation opt-in.
Backend = Literal["local", "unsafe-local", "docker"]
#: The kernels a sandbox can run: ipykernel (IPython's features) or `sandbox/lean_kernel.py`
#: (the Jupyter protocol without IPython: a faster start and round trip).
Kernel = Literal["ipykernel", "lean"]
#: Serves one request the kernel sent over its stdin channel (see `sandbox.rpc`).
RequestHandler = Callable[[dict[str, Any]], Awaitable[Reply]]


class SandboxError(Exception):
    """Base class of every sandbox failure."""


class SandboxConfigError(SandboxError, ValueError):
    """Options a sandbox cannot run with (an unknown backend, limits too small to work)."""


class SandboxUnavailable(SandboxError):
    """The backend cannot run here (missing binary, daemon, image), or its engine failed."""


class SandboxStartError(SandboxError):
    """The kernel did not come up."""


class SandboxCrashed(SandboxError):
    """The kernel process died; its state is gone until `restart()`."""


class SandboxProtocolError(SandboxCrashed):
    """The kernel broke the message protocol or a transport limit; its channel was cut, so it
    is treated as crashed and must be restarted."""


@dataclass(frozen=True)
class KernelLimits:
    """Bounds on everything a kernel sends back to the host, whatever code runs inside it.

    The controller holds at most eight messages of a sandbox at once (four queued, one being
    read per channel), each within its byte limit and, parsed, within `sandbox.kernel`'s limit
    on JSON items.
    """

    #: One message on the shell, stdin or control channel: replies, user expressions, RPC requests.
    message_bytes: int = 16 << 20
    #: One output (iopub) message: stream text, display data and their updates.
    output_message_bytes: int = 8 << 20
    #: Output messages folded into one execution's result; later ones are read and dropped.
    output_messages: int = 10_000
    #: Tail of the kernel process's own stdout/stderr kept for start-up diagnostics.
    raw_output_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        floors = {"message_bytes": 64 << 10, "output_message_bytes": 64 << 10,  # a kernel_info reply fits
                  "output_messages": 1, "raw_output_bytes": 1 << 10}
        low = [f"{name} >= {floor:,}" for name, floor in floors.items() if getattr(self, name) < floor]
        if low:
            raise SandboxConfigError(f"KernelLimits too small: need {', '.join(low)}")


def valid_text(text: str) -> str:
    """`text` with any lone surrogate replaced: what a kernel sends can hold them (a JSON escape
    such as \\ud800 decodes to one), and no UTF-8 request, file or JSON dump can carry them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


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
    #: Output messages past `KernelLimits.output_messages`, read and dropped unseen.
    messages_dropped: int = 0
    duration: float = 0.0
    expressions: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


def readable_dir(path: Path) -> Path:
    """Make a new directory the sandbox's unprivileged user can read (0755 whatever the umask)."""
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return path


class Delivery:
    """A fresh directory the host fills and the sandbox reads: files the host hands over (data,
    wheels) never live where the sandbox can write, so no planted link can redirect them."""

    def __init__(self, host: Path) -> None:
        self.host = readable_dir(host)  # bound at the same path inside

    def write(self, name: str, chunks: Iterable[bytes]) -> str:
        """Create `name` (exclusively, never through a link) from `chunks`; returns its path
        inside the sandbox."""
        fd = os.open(self.host / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o644)  # whatever the umask
            for chunk in chunks:
                f.write(chunk)
        return str(self.host / name)


class Sandbox(abc.ABC):
    """A persistent, isolated Python kernel: what the controller and the pool rely on.

    Use as an async context manager: `async with create_sandbox("local") as sb: await sb.execute("1+1")`.
    """

    #: What the kernel may send back; see `KernelLimits`.
    limits: KernelLimits

    @property
    @abc.abstractmethod
    def workdir(self) -> str:
        """The kernel's working directory, as the kernel sees it (its own writable space)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Acquire everything the sandbox needs, start the kernel and wait until it answers."""

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
        """Interrupt the running cell (KeyboardInterrupt in the kernel); the kernel stays."""

    @abc.abstractmethod
    async def restart(self) -> None:
        """Replace the kernel with a fresh one; all kernel state is lost."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the kernel and everything it started; remove private files. Idempotent."""

    @abc.abstractmethod
    def delivery(self) -> Delivery:
        """A new, empty directory the host writes into and the kernel reads (read-only); files
        have the same path inside the sandbox as on the host."""

    @property
    def oom_killed(self) -> bool:
        """Whether the host's record says the memory limit killed a process of this sandbox."""
        return False

    async def __aenter__(self) -> Sandbox:
        try:
            await self.start()
        except BaseException:
            await self.close()  # nothing a failed start made may outlive it
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
