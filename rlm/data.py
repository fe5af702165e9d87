"""`DataFile`: how a run's data reaches the kernel as `context`, never passing through a prompt."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from sandbox import Sandbox

from .errors import ConfigError

DataKind = Literal["none", "text", "bytes", "json", "path"]
_WRITE_CHUNK = 1 << 24
_FILE_NAMES = {"text": "context.txt", "bytes": "context.bin", "json": "context.json"}


class DataFile:
    """Where the run's data lives for the kernel: a file delivered read-only, or a read-only mount."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.kind: DataKind
        self.mounts: list[Path] = []
        self._where: str | None = None
        if data is None:
            self.kind, self.size = "none", 0
        elif isinstance(data, os.PathLike):
            path = Path(data).resolve()
            if not path.exists():
                raise ConfigError(f"data path {path} does not exist")
            self.mounts.append(path)
            self.kind = "path" if path.is_dir() else "text"
            self.size = 0 if path.is_dir() else path.stat().st_size
        elif isinstance(data, str):
            self.kind, self.size = "text", len(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self.kind, self.size = "bytes", len(data)
        else:
            try:
                self._json = json.dumps(data)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"data must be str, bytes, a path or JSON-serializable: {exc}") from exc
            self.kind, self.size = "json", len(self._json)

    def location(self, sandbox: Sandbox) -> str | None:
        """The data's path inside the sandbox (None without data); delivers it on the first call.

        The file goes into a delivery directory only the host writes, so a kernel restored after
        a crash reads the same file again and nothing it planted can redirect the write.
        """
        if self.kind == "none":
            return None
        if self.mounts:
            return str(self.mounts[0])  # mounted at the same path
        if self._where is None:
            self._where = sandbox.delivery().write(_FILE_NAMES[self.kind], self._chunks())
        return self._where

    def _chunks(self) -> Iterable[bytes]:
        if self.kind == "text":  # encoded a slice at a time: bounded extra memory for huge text
            return (self.data[i : i + _WRITE_CHUNK].encode("utf-8") for i in range(0, len(self.data), _WRITE_CHUNK))
        if self.kind == "bytes":
            return [bytes(self.data)]
        return [self._json.encode("utf-8")]

    def preview_source(self) -> Any:
        """What the system prompt previews: the data, or the head of a mounted file."""
        if self.mounts and self.kind == "text":
            with open(self.mounts[0], encoding="utf-8", errors="replace") as f:
                return f.read(4096)
        if self.kind == "path":
            return self.mounts[0]
        return self.data
