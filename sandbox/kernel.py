"""Jupyter messaging shared by every backend, and the kernel lifecycle built on it.

`KernelSession` speaks the Jupyter protocol to one running kernel (execute, interrupt, stdin
RPC, bounded output capture). `KernelSandbox` adds what every backend needs on top: timeouts
that interrupt then restart, crash detection, fresh connection files per launch. A backend only
says how to launch, probe and kill the kernel process.
"""

from __future__ import annotations

import abc
import ast
import asyncio
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from .base import (
    ExecutionResult,
    Output,
    RequestHandler,
    Sandbox,
    SandboxCrashed,
    SandboxStartError,
)
from .runtime import RPC_PREFIX

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_POLL_SECONDS = 0.25
_LOST_IDLE_GRACE = 2.0


class KernelSession:
    """Messaging with one running kernel; knows nothing of how the kernel process lives."""

    def __init__(self, connection_info: dict[str, Any]) -> None:
        self.client = AsyncKernelClient()
        self.client.load_connection_info(connection_info)
        self.client.start_channels()

    async def wait_ready(self, timeout: float, alive: Callable[[], bool]) -> None:
        """Block until the kernel answers kernel_info on shell *and* iopub.

        Waiting for iopub too matters: a SUB socket that has not joined yet silently drops the
        first messages, and an execute whose status messages are lost would never finish.
        `alive()` lets a dead launch fail fast.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise SandboxStartError("kernel process exited during start-up")
            msg_id = self.client.kernel_info()
            replied = heard = False
            round_end = time.monotonic() + 1.0
            while not (replied and heard) and time.monotonic() < round_end:
                if not replied:
                    replied = await self._received(self.client.get_shell_msg, msg_id, 0.1)
                if not heard:
                    heard = await self._received(self.client.get_iopub_msg, msg_id, 0.1)
            if replied and heard:
                await self._drain(self.client.get_iopub_msg)
                await self._drain(self.client.get_shell_msg)
                return
        raise SandboxStartError(f"kernel did not answer within {timeout:.0f}s")

    @staticmethod
    async def _received(get: Callable[..., Any], msg_id: str, timeout: float) -> bool:
        try:
            msg = await get(timeout=timeout)
        except Exception:  # queue.Empty: nothing yet
            return False
        return msg["parent_header"].get("msg_id") == msg_id

    @staticmethod
    async def _drain(get: Callable[..., Any]) -> None:
        while True:
            try:
                await get(timeout=0.02)
            except Exception:
                return

    async def interrupt(self) -> None:
        msg = self.client.session.msg("interrupt_request", {})
        self.client.control_channel.send(msg)

    async def execute(
        self,
        code: str,
        *,
        deadline: float | None,
        on_request: RequestHandler | None,
        user_expressions: dict[str, str] | None,
        max_output_chars: int,
        alive: Callable[[], bool],
    ) -> tuple[ExecutionResult, bool]:
        """Run one cell. Returns the result and whether the kernel reached idle before `deadline`.

        Raises `SandboxCrashed` when `alive()` turns false mid-cell.
        """
        started = time.monotonic()
        stdout, stderr = Output(max_output_chars), Output(max_output_chars)
        result = ExecutionResult()
        msg_id = self.client.execute(
            code, allow_stdin=True, user_expressions=user_expressions or {}, stop_on_error=False
        )
        iopub, stdin, shell = (
            self.client.iopub_channel.socket, self.client.stdin_channel.socket, self.client.shell_channel.socket
        )
        poller = zmq.asyncio.Poller()
        for socket in (iopub, stdin, shell):
            poller.register(socket, zmq.POLLIN)
        idle = False
        reply: dict[str, Any] | None = None
        replied_at = 0.0
        # Done when iopub says idle and shell has replied; a reply with no idle after a grace
        # period means iopub lost the status message, and waiting longer would hang forever.
        while not (idle and reply is not None):
            if reply is not None and time.monotonic() - replied_at > _LOST_IDLE_GRACE:
                idle = True
                break
            wait = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - time.monotonic())
            if wait <= 0:
                break
            events = dict(await poller.poll(int(wait * 1000)))
            if not events:
                if not alive():
                    raise SandboxCrashed("the kernel process died")
                continue
            if stdin in events:
                request = await self.client.get_stdin_msg(timeout=0)
                remaining = None if deadline is None else deadline - time.monotonic()
                answer = await _serve_stdin(request["content"], on_request, remaining, stderr)
                if answer is None:
                    break  # the deadline passed while a request was being served
                self.client.input(answer)
            if iopub in events:
                msg = await self.client.get_iopub_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    idle = _collect(msg, result, stdout, stderr) or idle
            if shell in events:
                msg = await self.client.get_shell_msg(timeout=0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply, replied_at = msg, time.monotonic()
        finished = idle and reply is not None
        if finished:
            result.expressions = _expressions(reply["content"].get("user_expressions", {}))
        result.stdout, result.stderr = stdout.render(), stderr.render()
        result.chars_cut = stdout.dropped + stderr.dropped
        result.duration = time.monotonic() - started
        return result, finished

    async def finish(self, grace: float) -> bool:
        """After an interrupt, wait up to `grace` seconds for the kernel to go idle."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                msg = await self.client.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:
                return False
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                if msg["parent_header"].get("msg_type") == "execute_request":
                    await self._drain(self.client.get_shell_msg)
                    return True
        return False

    def close(self) -> None:
        self.client.stop_channels()


async def _serve_stdin(
    content: dict[str, Any],
    on_request: RequestHandler | None,
    remaining: float | None,
    stderr: Output,
) -> str | None:
    """Answer one stdin prompt: an RPC request goes to `on_request`; a plain `input()` gets ''."""
    prompt = content.get("prompt", "")
    if not prompt.startswith(RPC_PREFIX):
        stderr.write("[sandbox] input() is not available in this REPL; it returned ''.\n")
        return ""
    try:
        request = json.loads(prompt[len(RPC_PREFIX) :])
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
    except ValueError as exc:
        return json.dumps({"ok": False, "error": f"malformed request: {exc}"})
    if on_request is None:
        return json.dumps({"ok": False, "error": "no request handler is attached to this sandbox"})
    try:
        reply = await asyncio.wait_for(on_request(request), remaining)
    except TimeoutError:
        return None
    return json.dumps(reply)


def _collect(msg: dict[str, Any], result: ExecutionResult, stdout: Output, stderr: Output) -> bool:
    """Fold one iopub message into the result; True when the cell is finished."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        (stdout if content.get("name") == "stdout" else stderr).write(content.get("text", ""))
    elif kind in ("execute_result", "display_data"):
        text = content.get("data", {}).get("text/plain")
        if text is not None:
            stdout.write(text + "\n")
    elif kind == "error":
        result.error_name = content.get("ename")
        result.error = _ANSI.sub("", "\n".join(content.get("traceback", [])))
    elif kind == "status":
        return content.get("execution_state") == "idle"
    return False


def _expressions(raw: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if value.get("status") != "ok":
            values[name] = None
            continue
        text = value.get("data", {}).get("text/plain", "")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text
    return values


class KernelSandbox(Sandbox):
    """A `Sandbox` whose kernel runs as some process the subclass launches.

    Subclasses implement `_launch`, `_alive` and `_kill`; everything else is shared.
    """

    #: How long an interrupted cell may take to stop before the kernel is restarted.
    interrupt_grace: float = 3.0

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.root = Path(tempfile.mkdtemp(prefix="rlm-"))
        self.ipcdir = self.root / "ipc"
        self.workdir = self.root / "work"
        self.ipcdir.mkdir()
        self.workdir.mkdir()
        self._session: KernelSession | None = None
        self._launches = 0
        self._closed = False

    @abc.abstractmethod
    def _launch(self, connection_file: Path) -> None:
        """Start the kernel process reading `connection_file`."""

    async def _launch_async(self, connection_file: Path) -> None:
        """`_launch` from the event loop; a backend whose launch blocks (an HTTP API) overrides
        this to run it in a thread."""
        self._launch(connection_file)

    @abc.abstractmethod
    def _alive(self) -> bool:
        """Whether the kernel process still runs."""

    @abc.abstractmethod
    def _kill(self) -> None:
        """Kill the kernel process and everything it started."""

    def _cleanup(self) -> None:
        """Release per-sandbox resources after the last kill."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _startup_log(self) -> str:
        """What the kernel process printed, shown when it fails to start."""
        return ""

    def kernel_args(self, connection_file: Path) -> list[str]:
        """The kernel's command line after the interpreter."""
        return ["-m", "ipykernel_launcher", "-f", str(connection_file),
                "--HistoryManager.enabled=False", "--IPKernelApp.quiet=True"]

    def kernel_environment(self) -> dict[str, str]:
        """The kernel's whole environment, built from nothing: no host secret reaches it."""
        return {"HOME": str(self.workdir), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                "IPYTHONDIR": "/tmp/.ipython", "MPLBACKEND": "Agg"}

    async def start(self) -> None:
        if self._closed:
            raise SandboxStartError("this sandbox is closed")
        self._launches += 1
        # A fresh IPC name per launch: a restarted kernel never meets its predecessor's sockets.
        connection_file = self.ipcdir / f"kernel-{self._launches}.json"
        # Kept in memory: the kernel rewrites the file while starting, so reading it back races.
        _, info = write_connection_file(
            str(connection_file), transport="ipc", ip=str(self.ipcdir / f"k{self._launches}")
        )
        connection_file.chmod(0o644)
        try:
            await self._launch_async(connection_file)
            await self._wait_for_sockets(info)
            self._session = KernelSession(info)
            await self._session.wait_ready(self.startup_timeout, self._alive)
        except SandboxStartError as exc:
            log = self._startup_log()
            await self._stop_kernel()
            raise SandboxStartError(f"{exc}\n--- kernel log ---\n{log}" if log else str(exc)) from None
        except BaseException:
            await self._stop_kernel()
            raise

    async def _wait_for_sockets(self, info: dict[str, Any]) -> None:
        """Wait until the kernel has bound all its IPC sockets.

        Connecting earlier makes ZeroMQ retry each socket on its own timer, so the shell can be up
        while stdin still is not: an input_request sent then is dropped and the cell never ends.
        """
        paths = [Path(f"{info['ip']}-{info[name]}") for name in
                 ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
        deadline = time.monotonic() + self.startup_timeout
        checked = 0.0
        while not all(p.exists() for p in paths):
            now = time.monotonic()
            if now > deadline:
                raise SandboxStartError(f"kernel did not open its sockets within {self.startup_timeout:.0f}s")
            if now - checked >= _POLL_SECONDS:  # `_alive` may be a round trip to the Docker engine
                if not self._alive():
                    raise SandboxStartError("kernel process exited during start-up")
                checked = now
            await asyncio.sleep(0.01)

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_request: RequestHandler | None = None,
        user_expressions: dict[str, str] | None = None,
        max_output_chars: int = 1_000_000,
    ) -> ExecutionResult:
        if self._session is None:
            raise SandboxCrashed("the kernel is not running; call restart()")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            result, finished = await self._session.execute(
                code,
                deadline=deadline,
                on_request=on_request,
                user_expressions=user_expressions,
                max_output_chars=max_output_chars,
                alive=self._alive,
            )
        except SandboxCrashed:
            await self._stop_kernel()
            raise
        if finished:
            return result
        result.timed_out = True
        await self._session.interrupt()
        if not await self._session.finish(self.interrupt_grace):
            await self.restart()
            result.restarted = True
        return result

    async def interrupt(self) -> None:
        if self._session is not None:
            await self._session.interrupt()

    async def restart(self) -> None:
        await self._stop_kernel()
        await self.start()

    async def _stop_kernel(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._kill()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_kernel()
        self._cleanup()
