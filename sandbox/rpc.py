"""Requests from kernel code to the host over the Jupyter stdin channel: no socket, no network.

Kernel code calls `request(method, params, max_bytes)`, which sends one `input()` prompt starting
with `PREFIX`; the host answers with a `Reply`. This module is standard library only: the host
imports it, and every kernel gets it as the module `sandbox_rpc` (see `module_code`).
"""

from __future__ import annotations

import builtins
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Prefix of stdin prompts that carry a request; the host answers any other `input()` with ''.
PREFIX = "\x00rlm-rpc:"
#: Room left in a request for the message's own envelope (headers, signature).
ENVELOPE_BYTES = 64 << 10
#: The name this module has inside every kernel.
KERNEL_MODULE = "sandbox_rpc"

_lock = threading.Lock()


@dataclass(frozen=True)
class Reply:
    """The answer to one request: a result, or an error message."""

    result: Any = None
    error: str | None = None

    @classmethod
    def failed(cls, message: str) -> Reply:
        return cls(error=message)

    def to_json(self) -> str:
        if self.error is not None:
            return json.dumps({"ok": False, "error": self.error})
        return json.dumps({"ok": True, "result": self.result})

    @classmethod
    def from_json(cls, text: str) -> Reply:
        message = json.loads(text)
        if isinstance(message, dict) and message.get("ok") is True:
            return cls(result=message.get("result"))
        error = message.get("error") if isinstance(message, dict) else None
        return cls(error=error if isinstance(error, str) else "request refused")


def json_bytes(text: str) -> int:
    """The bytes `text` takes as a JSON string, as the Jupyter message carries it."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "replace"))


def request(method: str, params: dict[str, Any], max_bytes: int) -> Any:
    """Send one request from kernel code and return the host's result; `max_bytes` is what the
    host reads of one message. A refusal raises RuntimeError with the host's message."""
    prompt = PREFIX + json.dumps({"method": method, **params}, ensure_ascii=False)
    if json_bytes(prompt) > max_bytes:
        raise ValueError(f"request too large for the sandbox's channel ({max_bytes:,} bytes)")
    with _lock:  # one stdin request at a time, even from threads
        text = builtins.input(prompt)
    reply = Reply.from_json(text)
    if reply.error is not None:
        raise RuntimeError(reply.error)
    return reply.result


def module_code(name: str, source: str, imports: dict[str, str] | None = None) -> str:
    """Kernel code that makes `source` the module `name` (kept out of the user's namespace);
    `imports` binds names in it to modules already in the kernel, e.g. {"rpc": KERNEL_MODULE}."""
    bindings = "".join(f"_m.{alias} = _s.modules[{module!r}]\n" for alias, module in (imports or {}).items())
    # registered before it runs: dataclasses look their module up in sys.modules
    return (f"import sys as _s, types as _t\n_m = _s.modules[{name!r}] = _t.ModuleType({name!r})\n{bindings}"
            f"exec(compile({source!r}, {name!r}, 'exec'), _m.__dict__)\ndel _s, _t, _m\n")


def kernel_code() -> str:
    """Kernel code that installs this module as `KERNEL_MODULE`."""
    return module_code(KERNEL_MODULE, Path(__file__).read_text(encoding="utf-8"))
