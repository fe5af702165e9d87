"""ZMTP 3.0 client connections to a kernel the host does not trust, with hard size limits.

libzmq buffers whole multipart messages (any number of frames) on its own I/O thread before
the application sees them, so a hostile kernel could grow controller memory without bound.
Here the controller reads every frame header itself and cuts the connection before reading a
message past its limit; what the kernel cannot send waits in the kernel's own memory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Sequence
from typing import Literal

from .base import SandboxCrashed, SandboxProtocolError

SocketType = Literal["DEALER", "SUB"]

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | _LONG]) + len(body).to_bytes(8, "big") + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value


class Connection:
    """One ZMTP connection speaking as a DEALER or a SUB socket (subscribed to everything)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_message_bytes: int, max_frames: int) -> None:
        self._reader, self._writer = reader, writer
        self.max_message_bytes = max_message_bytes
        self.max_frames = max_frames

    @classmethod
    async def open(
        cls, dir_fd: int, name: str, socket_type: SocketType, *,
        identity: bytes = b"", max_message_bytes: int, max_frames: int = 64,
    ) -> Connection:
        """Connect to the unix socket `name` in the directory `dir_fd`, following no link.

        The socket's inode is opened with O_PATH | O_NOFOLLOW relative to the directory and
        connected through /proc/self/fd, so a symlink planted in its place is refused, not followed.
        """
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            raise SandboxProtocolError(f"kernel socket {name}: {exc.strerror}") from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise SandboxProtocolError(f"kernel socket {name} is not a socket")
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{fd}")
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        connection = cls(reader, writer, max_message_bytes=max_message_bytes, max_frames=max_frames)
        try:
            await connection._handshake(socket_type, identity)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _handshake(self, socket_type: SocketType, identity: bytes) -> None:
        # Each step waits for the peer's: libzmq drops a connection whose messages arrive
        # together with its greeting.
        self._writer.write(_GREETING)
        await self._writer.drain()
        greeting = await self._read(64)
        if greeting[:1] != b"\xff" or greeting[9:10] != b"\x7f" or greeting[10] < 3:
            raise SandboxProtocolError("the kernel's socket does not speak ZMTP 3")
        ready = b"\x05READY" + _property(b"Socket-Type", socket_type.encode())
        if socket_type == "DEALER":
            ready += _property(b"Identity", identity)
        await self.send([ready], flags=_COMMAND)
        flags, body = await self._read_frame(self.max_message_bytes)
        if not flags & _COMMAND or not body.startswith(b"\x05READY"):
            raise SandboxProtocolError("the kernel refused the ZMTP handshake")
        if socket_type == "SUB":
            await self.send([b"\x01"])  # ZMTP 3.0: a subscription to every topic is a message

    async def _read(self, size: int) -> bytes:
        try:
            return await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise SandboxCrashed("the kernel closed its socket") from exc

    async def _read_frame(self, limit: int) -> tuple[int, bytes]:
        flags = (await self._read(1))[0]
        size = int.from_bytes(await self._read(8 if flags & _LONG else 1), "big")
        if size > limit:
            self.close()
            raise SandboxProtocolError(
                f"the kernel sent a message over the {self.max_message_bytes:,}-byte limit; its channel was cut"
            )
        return flags, await self._read(size)

    async def recv(self) -> list[bytes]:
        """The next whole message; never reads more than `max_message_bytes` of it."""
        frames: list[bytes] = []
        total = 0
        while True:
            flags, body = await self._read_frame(self.max_message_bytes - total)
            if flags & _COMMAND:
                if frames:
                    raise SandboxProtocolError("the kernel sent a command inside a message")
                continue  # heartbeats and other commands carry no message
            frames.append(body)
            total += len(body)
            if not flags & _MORE:
                return frames
            if len(frames) >= self.max_frames:
                self.close()
                raise SandboxProtocolError(f"the kernel sent a message of over {self.max_frames} parts")

    async def send(self, frames: Sequence[bytes], *, flags: int = 0, timeout: float | None = None) -> None:
        """Send one message; a kernel that does not take it within `timeout` seconds (it stopped
        reading) gets its channel cut."""
        last = len(frames) - 1
        for index, body in enumerate(frames):
            self._writer.write(_frame(body, flags | (_MORE if index < last else 0)))
        if not self._writer.transport.get_write_buffer_size():
            return  # all of it went out at once, as small messages do: nothing to wait for
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError:
            self.close()
            raise SandboxProtocolError(f"the kernel took no message for {timeout:g}s; its channel was cut") from None
        except ConnectionError as exc:
            raise SandboxCrashed("the kernel closed its socket") from exc

    def close(self) -> None:
        self._writer.close()
