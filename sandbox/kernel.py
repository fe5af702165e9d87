"""Jupyter messaging, and the one kernel lifecycle every backend shares.

`KernelSession` speaks the Jupyter protocol to one running kernel (execute, interrupt, stdin
requests, bounded output capture). `KernelSandbox` is the sandbox built on it: timeouts that
interrupt then restart, crash detection, fresh connection files per launch. How the kernel
process runs is its `Provisioner`'s business (`sandbox.local`, `sandbox.docker`).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_args

from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

from . import admission, rpc
from .base import (
    Delivery,
    ExecutionResult,
    Kernel,
    KernelLimits,
    Output,
    RequestHandler,
    Sandbox,
    SandboxConfigError,
    SandboxCrashed,
    SandboxProtocolError,
    SandboxStartError,
    SandboxUnavailable,
    readable_dir,
    valid_text,
)
from .cleanup import private_root, reap_orphans_once, remove_tree
from .provisioner import Launch, Provisioner
from .rpc import Reply
from .wire import Connection

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
log = logging.getLogger("rlm.sandbox")

_POLL_SECONDS = 0.25
_LOST_IDLE_GRACE = 2.0
_CHANNELS = ("shell", "iopub", "stdin", "control")
#: Most JSON containers and elements one message may hold (see `_json_items`).
_MAX_JSON_ITEMS = 250_000
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
#: How long a kernel may leave a message we send unread before its channel counts as broken.
_SEND_SECONDS = 30.0

#: Kernel-side sources, run from files the host writes in each launch's IPC directory.
_GUARD_SOURCE = (Path(__file__).with_name("guard.py")).read_text()
_LEAN_SOURCE = (Path(__file__).with_name("lean_kernel.py")).read_text()
#: What a kernel runs before serving (the guard for ipykernel, the RPC module for both).
_START_FILE = "start.py"
_LEAN_FILE = "lean_kernel.py"
KERNELS: tuple[Kernel, ...] = get_args(Kernel)


class KernelSession:
    """Messaging with one running kernel; knows nothing of how the kernel process lives.

    Speaks the Jupyter protocol over `wire` connections with hard limits. One reader task per
    channel feeds a small shared queue, so unread messages wait in the kernel, not here.
    """

    def __init__(self, connection_info: dict[str, Any], ipc_fd: int, limits: KernelLimits) -> None:
        self.info = connection_info
        self.ipc_fd = ipc_fd
        self.limits = limits
        self.session = Session(key=connection_info["key"].encode(),
                               signature_scheme=connection_info["signature_scheme"])
        self._channels: dict[str, Connection] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._incoming: asyncio.Queue[tuple[str, dict[str, Any]] | SandboxCrashed] = asyncio.Queue(4)

    @staticmethod
    def socket_names(info: dict[str, Any]) -> list[str]:
        """The kernel's IPC socket file names, relative to its IPC directory."""
        base = os.path.basename(info["ip"])
        return [f"{base}-{info[f'{channel}_port']}" for channel in _CHANNELS]

    async def connect(self) -> None:
        identity = self.session.bsession
        for channel, name in zip(_CHANNELS, self.socket_names(self.info), strict=True):
            output = channel == "iopub"
            self._channels[channel] = await Connection.open(
                self.ipc_fd, name, "SUB" if output else "DEALER", identity=identity,
                max_message_bytes=self.limits.output_message_bytes if output else self.limits.message_bytes,
            )
        self._readers = [asyncio.create_task(self._read(channel)) for channel in self._channels]

    async def _read(self, channel: str) -> None:
        """Feed one channel's messages to the queue; whatever ends the channel is queued too, so
        the reader of the queue always learns of it."""
        try:
            await self._read_messages(self._channels[channel], channel)
        except SandboxCrashed as exc:  # closed, or a limit broken: the channel is over
            await self._incoming.put(exc)
        except Exception as exc:
            self._channels[channel].close()
            await self._incoming.put(SandboxProtocolError(f"reading the kernel's {channel} channel failed: {exc!r}"))

    async def _read_messages(self, connection: Connection, channel: str) -> None:
        while True:
            frames = await connection.recv()
            if _json_items(frames) > _MAX_JSON_ITEMS:
                connection.close()
                raise SandboxProtocolError(
                    f"the kernel sent a message of over {_MAX_JSON_ITEMS:,} JSON items; its channel was cut")
            try:
                _, message_frames = self.session.feed_identities(frames)
                message = self.session.deserialize(message_frames)
            except Exception:  # unsigned, garbled or not Jupyter at all: not ours to parse further
                continue
            if not _well_formed(message):
                continue
            await self._incoming.put((channel, message))

    async def _send(self, channel: str, msg_type: str, content: dict[str, Any],
                    parent: dict[str, Any] | None = None, deadline: float | None = None) -> str:
        message = self.session.msg(msg_type, content, parent=parent)
        timeout = _SEND_SECONDS if deadline is None else max(1.0, min(_SEND_SECONDS, deadline - time.monotonic()))
        await self._channels[channel].send(self.session.serialize(message), timeout=timeout)
        return str(message["header"]["msg_id"])

    async def _next(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The next message from any channel, or None after `timeout` seconds."""
        try:
            item = await asyncio.wait_for(self._incoming.get(), max(timeout, 0))
        except TimeoutError:
            return None
        if isinstance(item, SandboxCrashed):
            raise item
        return item

    async def wait_ready(self, timeout: float, alive: Callable[[], bool]) -> None:
        """Block until the kernel answers kernel_info on shell *and* iopub.

        Waiting for iopub too matters: a subscription that has not taken effect yet drops the
        first messages, and an execute whose status messages are lost would never finish.
        `alive()` lets a dead launch fail fast.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise SandboxStartError("kernel process exited during start-up")
            msg_id = await self._send("shell", "kernel_info_request", {})
            replied = heard = False
            round_end = min(deadline, time.monotonic() + 1.0)
            while not (replied and heard) and time.monotonic() < round_end:
                try:
                    got = await self._next(round_end - time.monotonic())
                except SandboxCrashed as exc:
                    raise SandboxStartError(f"kernel channel failed during start-up: {exc}") from None
                if got is not None and got[1]["parent_header"].get("msg_id") == msg_id:
                    replied |= got[0] == "shell"
                    heard |= got[0] == "iopub"
            if replied and heard:
                return
        raise SandboxStartError(f"kernel did not answer within {timeout:.0f}s")

    async def interrupt(self) -> None:
        await self._send("control", "interrupt_request", {})

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

        Raises `SandboxCrashed` when `alive()` turns false mid-cell, `SandboxProtocolError` when
        the kernel breaks a limit of its channel.
        """
        started = time.monotonic()
        stdout, stderr = Output(max_output_chars), Output(max_output_chars)
        result = ExecutionResult()
        msg_id = await self._send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": False,
            "user_expressions": user_expressions or {}, "allow_stdin": True, "stop_on_error": False,
        }, deadline=deadline)
        idle = False
        reply: dict[str, Any] | None = None
        replied_at = 0.0
        outputs = 0
        # Done when iopub says idle and shell has replied; a reply with no idle after a grace
        # period means iopub lost the status message, and waiting longer would hang forever.
        while not (idle and reply is not None):
            if reply is not None and time.monotonic() - replied_at > _LOST_IDLE_GRACE:
                idle = True
                break
            wait = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - time.monotonic())
            if wait <= 0:
                break
            got = await self._next(wait)
            if got is None:
                if not alive():
                    raise SandboxCrashed("the kernel process died")
                continue
            channel, msg = got
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if channel == "stdin" and msg["msg_type"] == "input_request":
                remaining = None if deadline is None else deadline - time.monotonic()
                answer = await _serve_stdin(msg["content"], on_request, remaining, stderr)
                if answer is None:
                    break  # the deadline passed while a request was being served
                await self._send("stdin", "input_reply", {"value": answer}, parent=msg["header"], deadline=deadline)
            elif channel == "iopub":
                if msg["msg_type"] == "status":
                    idle = idle or msg["content"].get("execution_state") == "idle"
                elif outputs < self.limits.output_messages:
                    outputs += 1
                    _collect(msg, result, stdout, stderr)
                else:
                    result.messages_dropped += 1
            elif channel == "shell":
                reply, replied_at = msg, time.monotonic()
        finished = idle and reply is not None
        if finished:
            assert reply is not None
            result.expressions = _expressions(reply["content"].get("user_expressions", {}))
        if result.messages_dropped:
            stderr.write(f"[sandbox] {result.messages_dropped:,} output messages past the limit of "
                         f"{self.limits.output_messages:,} per execution were dropped.\n")
        result.stdout, result.stderr = stdout.render(), stderr.render()
        result.chars_cut = stdout.dropped + stderr.dropped
        result.duration = time.monotonic() - started
        return result, finished

    async def finish(self, grace: float) -> bool:
        """After an interrupt, wait up to `grace` seconds for the kernel to go idle."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            got = await self._next(deadline - time.monotonic())
            if got is None:
                return False
            channel, msg = got
            if (channel == "iopub" and msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"
                    and msg["parent_header"].get("msg_type") == "execute_request"):
                return True
        return False

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        try:
            await asyncio.gather(*self._readers, return_exceptions=True)
        finally:  # cancelled while waiting for the readers: the sockets still close
            for connection in self._channels.values():
                connection.close()
            self._channels.clear()


async def _serve_stdin(
    content: dict[str, Any],
    on_request: RequestHandler | None,
    remaining: float | None,
    stderr: Output,
) -> str | None:
    """Answer one stdin prompt: a request (see `sandbox.rpc`) goes to `on_request`; a plain
    `input()` gets ''. None when the deadline passed while the request was served."""
    prompt = content.get("prompt")
    if not isinstance(prompt, str) or not prompt.startswith(rpc.PREFIX):
        stderr.write("[sandbox] input() is not available in this REPL; it returned ''.\n")
        return ""
    try:
        request = json.loads(prompt[len(rpc.PREFIX) :])
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
    except (ValueError, RecursionError) as exc:
        return Reply.failed(f"malformed request: {exc}").to_json()
    if on_request is None:
        return Reply.failed("no request handler is attached to this sandbox").to_json()
    try:
        reply = await asyncio.wait_for(on_request(request), remaining)
    except TimeoutError:
        return None
    return reply.to_json()


def _json_items(frames: list[bytes]) -> int:
    """Containers and elements in a message's JSON, counted outside its strings without parsing:
    parsed, each costs some 30 to 60 bytes of controller memory against a few bytes on the wire."""
    def count(data: bytes) -> int:
        return data.count(b"[") + data.count(b"{") + data.count(b",")

    items = sum(count(frame) for frame in frames)
    if items <= _MAX_JSON_ITEMS:
        return items  # cheap and enough: what strings hold can only make the count smaller
    return sum(count(_JSON_STRING.sub(b"", frame)) for frame in frames)


def _well_formed(message: dict[str, Any]) -> bool:
    """Whether a deserialized message has the shape the rest of this module reads."""
    return (isinstance(message.get("header"), dict) and isinstance(message.get("parent_header"), dict)
            and isinstance(message.get("content"), dict) and isinstance(message.get("msg_type"), str))


def _text(value: Any) -> str:
    return valid_text(value) if isinstance(value, str) else ""


def _collect(msg: dict[str, Any], result: ExecutionResult, stdout: Output, stderr: Output) -> None:
    """Fold one output message into the result (fields of the wrong type count as empty)."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        (stdout if content.get("name") == "stdout" else stderr).write(_text(content.get("text")))
    elif kind in ("execute_result", "display_data"):
        data = content.get("data")
        text = data.get("text/plain") if isinstance(data, dict) else None
        if isinstance(text, str):
            stdout.write(valid_text(text) + "\n")
    elif kind == "error":
        result.error_name = _text(content.get("ename")) or "Error"
        lines = content.get("traceback")
        lines = [line for line in lines if isinstance(line, str)] if isinstance(lines, list) else []
        result.error = _ANSI.sub("", valid_text("\n".join(lines)))


#: The repr of a str holding no quote or backslash: read back without parsing.
_PLAIN_STR = re.compile(r"'[^'\\\n]*'")
#: Longest expression text parsed as a literal: an AST costs some 350 bytes per byte of source,
#: and the text is the kernel's to choose.
_MAX_LITERAL_CHARS = 64 << 10


def _expressions(raw: Any) -> dict[str, Any]:
    """User-expression values: literals parsed back into Python values, bounded in cost; a plain
    str of any length as itself; anything else as its text."""
    values: dict[str, Any] = {}
    for name, value in raw.items() if isinstance(raw, dict) else ():
        data = value.get("data") if isinstance(value, dict) and value.get("status") == "ok" else None
        text = data.get("text/plain") if isinstance(data, dict) else None
        if not isinstance(text, str):
            values[name] = None
        elif _PLAIN_STR.fullmatch(text):
            values[name] = valid_text(text[1:-1])
        elif len(text) <= _MAX_LITERAL_CHARS:
            try:
                values[name] = ast.literal_eval(text)
            except Exception:  # not a literal (or a hostile one nested past the parser's depth)
                values[name] = valid_text(text)
        else:
            values[name] = valid_text(text)
    return values


class KernelSandbox(Sandbox):
    """A `Sandbox` whose kernel process a `Provisioner` runs; everything else is shared.

    Host side, per sandbox: a private directory (`root`, never bound writable) holding the
    inbox (deliveries, bound read-only) and one fresh IPC directory per launch. Once a kernel
    runs, the host touches its IPC directory only through a directory fd without following
    links, and removes it only after the kernel and everything it started are dead.
    """

    #: How long an interrupted cell may take to stop before the kernel is restarted.
    interrupt_grace: float = 3.0
    #: The kernel a sandbox runs when none is named: the lean one, a third of ipykernel's CPU
    #: per start and a fifth of its round trip; "ipykernel" for IPython's magics and display.
    default_kernel: Kernel = "lean"

    def __init__(self, provisioner: Provisioner, *, startup_timeout: float = 60.0,
                 limits: KernelLimits | Mapping[str, int] | None = None, kernel: Kernel | None = None) -> None:
        self.kernel: Kernel = kernel or self.default_kernel
        if self.kernel not in KERNELS:
            raise SandboxConfigError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        self.provisioner = provisioner
        self.startup_timeout = startup_timeout
        # a mapping too, so that limits can come from JSON (the CLI, saved configs)
        self.limits = limits if isinstance(limits, KernelLimits) else KernelLimits(**(limits or {}))
        self.root: Path | None = None
        self.ipcdir: Path | None = None
        self._ipc_fd: int | None = None
        self._session: KernelSession | None = None
        self._launches = 0
        self._deliveries = 0
        self._closed = False
        self._admitted = False  # holds a slot of `admission.alive`

    @property
    def workdir(self) -> str:
        return self.provisioner.workdir

    @property
    def inbox(self) -> Path:
        if self.root is None:
            raise SandboxStartError("the sandbox has not started")
        return self.root / "inbox"

    @property
    def oom_killed(self) -> bool:
        return self.provisioner.oom_killed

    def delivery(self) -> Delivery:
        self._deliveries += 1
        return Delivery(self.inbox / str(self._deliveries))

    async def start(self) -> None:
        if self._closed:
            raise SandboxStartError("this sandbox is closed")
        admitted_now = not self._admitted
        if admitted_now:
            await admission.alive.acquire()  # held until close(), across restarts
            self._admitted = True
        try:
            await self._start()
        except BaseException:
            if admitted_now:
                self._admitted = False
                admission.alive.release()
            raise

    async def _start(self) -> None:
        if self.root is None:
            if not shutil.rmtree.avoids_symlink_attacks:  # the cleanup relies on it
                raise SandboxUnavailable("this platform's shutil.rmtree can follow symlinks")
            reap_orphans_once()
            self.root = private_root()
            try:
                readable_dir(self.inbox)
                await self.provisioner.prepare(self.root)
            except BaseException:  # nothing a failed acquisition made may outlive it
                remove_tree(self.root)
                self.root = None
                raise
        self._launches += 1
        # A fresh IPC directory per launch, made before any kernel runs: nothing the previous
        # kernel planted can be in it, so writing the connection file there is safe.
        ipcdir = self.ipcdir = self.root / f"ipc-{self._launches}"
        ipcdir.mkdir(mode=0o700)
        connection_file = ipcdir / "kernel.json"
        # Kept in memory: the kernel rewrites the file while starting, so reading it back races.
        _, written = write_connection_file(str(connection_file), transport="ipc", ip=str(ipcdir / "k"),
                                           key=secrets.token_hex(32).encode())
        info = dict(written)
        connection_file.chmod(0o644)
        # Run as files, not as a cell: a cell's output capture would undo the guard's stream patch.
        chunk = max(1024, self.limits.output_message_bytes // 16)
        for name, source in _launch_files(self.kernel, chunk).items():
            (ipcdir / name).write_text(source)
            (ipcdir / name).chmod(0o644)
        self.provisioner.grant(ipcdir)
        self._ipc_fd = os.open(ipcdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        launch = Launch(args=_kernel_args(self.kernel, connection_file, chunk), environment=self._environment(),
                        ipcdir=ipcdir, inbox=self.inbox, log_bytes=self.limits.raw_output_bytes)
        try:
            await admission.starting.acquire()
            try:
                await self.provisioner.launch(launch)
                await self._wait_for_sockets(info)
                self._session = KernelSession(info, self._ipc_fd, self.limits)
                await self._session.connect()
                await self._session.wait_ready(self.startup_timeout, self.provisioner.alive)
            finally:
                admission.starting.release()
            self._seal_ipc(connection_file.name)
        except (SandboxStartError, SandboxCrashed) as exc:
            message = str(exc) if isinstance(exc, SandboxStartError) else f"could not connect to the kernel: {exc}"
            output = self.provisioner.log()
            await self._stop_kernel()
            raise SandboxStartError(f"{message}\n--- kernel log ---\n{output}" if output else message) from None
        except BaseException:
            await self._stop_kernel()
            raise

    def _environment(self) -> dict[str, str]:
        return {"HOME": self.workdir, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                "IPYTHONDIR": "/tmp/.ipython", "MPLBACKEND": "Agg", **self.provisioner.environment()}

    async def _wait_for_sockets(self, info: dict[str, Any]) -> None:
        """Wait until the kernel has bound all its IPC sockets.

        Connecting earlier would race the kernel: the shell can be up while stdin still is not,
        and an input_request sent then is dropped and the cell never ends.
        """
        # the heartbeat's too: it must be bound before the directory is sealed
        names = [*KernelSession.socket_names(info), f"{os.path.basename(info['ip'])}-{info['hb_port']}"]
        deadline = time.monotonic() + self.startup_timeout
        checked = 0.0
        while not all(self._is_socket(name) for name in names):
            now = time.monotonic()
            if now > deadline:
                raise SandboxStartError(f"kernel did not open its sockets within {self.startup_timeout:.0f}s")
            if now - checked >= _POLL_SECONDS:  # `alive` may be a round trip to the Docker engine
                if not self.provisioner.alive():
                    raise SandboxStartError("kernel process exited during start-up")
                checked = now
            await asyncio.sleep(0.01)

    def _seal_ipc(self, *files: str) -> None:
        """Take the IPC directory back before any of the kernel's users' code runs: it is on host
        disk, so a kernel able to create files there could fill it. Its sockets stay usable
        (connecting needs no write access to the directory). Through the directory fd only."""
        assert self._ipc_fd is not None
        for name in (*files, _START_FILE, _LEAN_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._ipc_fd)  # unlink never follows a link
        if os.geteuid() == 0:
            os.fchown(self._ipc_fd, 0, 0)
        os.fchmod(self._ipc_fd, 0o755)

    def _is_socket(self, name: str) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(name, dir_fd=self._ipc_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    async def _crash(self, exc: SandboxCrashed) -> SandboxCrashed:
        """The crash as the caller should see it: a closed channel means the kernel is dying, so
        give it a moment and say whether it died, and whether the memory limit killed it."""
        if type(exc) is not SandboxCrashed:
            return exc
        deadline = time.monotonic() + 2.0
        while self.provisioner.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.provisioner.alive():
            return SandboxCrashed("the kernel closed its channel")
        if self.oom_killed:
            return SandboxCrashed("the kernel process died: killed by the sandbox's memory limit")
        return SandboxCrashed("the kernel process died")

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
                valid_text(code),
                deadline=deadline,
                on_request=on_request,
                user_expressions=user_expressions,
                max_output_chars=max_output_chars,
                alive=self.provisioner.alive,
            )
        except SandboxCrashed as exc:
            crash = await self._crash(exc)
            await self._stop_kernel()
            raise crash from None
        if finished:
            return result
        result.timed_out = True
        try:
            await self._session.interrupt()
            stopped = await self._session.finish(self.interrupt_grace)
        except SandboxCrashed:
            stopped = False
        if not stopped:
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
        # Teardown often runs while its task is being cancelled (a caller's timeout, Ctrl-C):
        # the kill runs to its end and the removal follows it in `finally`, so no cancellation
        # can leave the kernel or its files behind.
        session, self._session = self._session, None
        try:
            if session is not None:
                await session.close()
        finally:
            await _to_the_end(self.provisioner.kill)
            if self._ipc_fd is not None:
                os.close(self._ipc_fd)
                self._ipc_fd = None
                assert self.ipcdir is not None
                remove_tree(self.ipcdir)  # the kernel is dead: nothing writes here now

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stop_kernel()
        finally:
            try:
                if self.root is not None:
                    self.provisioner.cleanup()
                    remove_tree(self.root)
            finally:
                if self._admitted:
                    self._admitted = False
                    admission.alive.release()


async def _to_the_end(function: Callable[[], None]) -> None:
    """`function()` on a worker thread, awaited to its end even when the caller is cancelled
    meanwhile (that cancellation is raised afterwards). A kill waits for the kernel to die, some
    10-20 ms locally and a round trip to the engine for Docker: not on the event loop's thread,
    where every other run would wait too."""
    done = asyncio.ensure_future(asyncio.to_thread(function))
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(done)
            break
        except asyncio.CancelledError as exc:
            if done.done():  # the kill is over: nothing left to wait for
                raise
            cancelled = exc
    if cancelled is not None:
        raise cancelled


#: `python -m ipykernel_launcher` without importing debugpy, about a third of a kernel's import
#: time, for a debugger no client of ours uses; the guard lets user code import it again.
_LAUNCHER = ("import runpy, sys; sys.modules['debugpy'] = None\n"
             "runpy.run_module('ipykernel_launcher', run_name='__main__', alter_sys=True)")


def _launch_files(kernel: Kernel, chunk: int) -> dict[str, str]:
    """The files a launch of `kernel` runs, by name in its IPC directory; `chunk` is the most
    characters one output message may carry."""
    if kernel == "lean":  # bounds output itself: no guard
        return {_LEAN_FILE: _LEAN_SOURCE, _START_FILE: rpc.kernel_code()}
    return {_START_FILE: f"{_GUARD_SOURCE}\n_rlm_guard({chunk})\ndel _rlm_guard, _rlm_quiet_input\n{rpc.kernel_code()}"}


def _kernel_args(kernel: Kernel, connection_file: Path, chunk: int) -> list[str]:
    """The kernel's command line after the interpreter."""
    start = connection_file.parent / _START_FILE
    if kernel == "lean":
        return [str(connection_file.parent / _LEAN_FILE), str(connection_file), str(chunk), str(start)]
    return ["-c", _LAUNCHER, "-f", str(connection_file),
            "--HistoryManager.enabled=False", "--IPKernelApp.quiet=True", f"--IPKernelApp.exec_files={start}"]
