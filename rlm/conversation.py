"""`Conversation`: what outlives one question. One sandbox and its REPL, the data, the messages
the root model sees (compacted or not), the whole transcript, and the answers given so far: a
run is a conversation of one question, a `Session` asks several."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from sandbox import Sandbox, SandboxPool, create_sandbox

from . import prompts
from .config import RLMConfig
from .data import DataFile
from .packages import PackageInstaller
from .repl import Repl

Message = dict[str, Any]


class Conversation:
    """A root conversation over one REPL. `start()` acquires the sandbox; `close()` frees it."""

    def __init__(self, config: RLMConfig, data: Any = None, *, pool: SandboxPool | None = None) -> None:
        self.config = config
        self.data_file = DataFile(data)  # ConfigError for data it cannot take, before anything starts
        self.pool = pool
        self.sandbox: Sandbox | None = None
        self.repl: Repl | None = None
        #: What the root model sees: the system prompt, questions, replies and feedback, with
        #: older turns replaced by a summary after a compaction.
        self.messages: list[Message] = []
        #: Every message ever, never compacted; `history` in the REPL after a compaction.
        self.transcript: list[Message] = []
        #: The final `answer["content"]` of each question asked so far.
        self.answers: list[str] = []
        self.installer = PackageInstaller(config.allow_pip, config.wheelhouse, config.request_timeout)
        self._closing = contextlib.AsyncExitStack()

    @property
    def started(self) -> bool:
        return self.repl is not None

    async def start(self, budget_text: str) -> None:
        """Start the sandbox, install the runtime and the data, and write the system prompt."""
        sandbox = await self._acquire()
        self._closing.push_async_callback(sandbox.close)
        self.sandbox, self.repl = sandbox, Repl(sandbox, self.data_file, self.config)
        packages = await self.repl.install()
        context = self.data_file.describe(self.config.preview_chars)
        self.append({"role": "system", "content": prompts.system_prompt(self.config, context, packages, budget_text)})

    async def _acquire(self) -> Sandbox:
        """From the warm pool when there is one and the data needs no mount (mounts are fixed
        when a sandbox starts), else a new sandbox."""
        if self.pool is not None and not self.data_file.mounts:
            return await self.pool.acquire()
        options = dict(self.config.sandbox_options)
        options["mounts"] = [*options.get("mounts", ()), *self.data_file.mounts]
        sandbox = create_sandbox(self.config.sandbox, **options)
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    def append(self, message: Message) -> None:
        """Add a message to what the model sees and to the transcript (one object: a note added
        to it later is in both)."""
        self.messages.append(message)
        self.transcript.append(message)

    def note(self, text: str) -> None:
        """Add a note to the last feedback message (tool results get their own user message)."""
        if self.messages[-1]["role"] == "user":
            self.messages[-1]["content"] += "\n" + text
        else:
            self.append({"role": "user", "content": text})

    def transcript_json(self) -> bytes:
        return json.dumps(self.transcript).encode("utf-8")

    async def close(self) -> None:
        await self._closing.aclose()
        self.repl = None
