"""`Session`: follow-up questions about the same data, in one sandbox and one conversation.

    async with rlm.Session(rlm.RLMConfig(model=...), data) as session:
        first = await session.ask("How many users are there?")
        second = await session.ask("And how many of them are admins?")

Each `ask` returns its own `Result`. The REPL keeps every variable between questions; `answer`
starts empty for each question, and `answers` in the REPL holds the earlier questions' answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sandbox import SandboxPool

from .config import RLMConfig
from .controller import Controller
from .conversation import Conversation
from .errors import ConfigError
from .events import OnEvent
from .state import RunState
from .trajectory import Result


class Session:
    """One conversation over `data`; `close()` (or leaving `async with`) frees its sandbox."""

    def __init__(self, config: RLMConfig | None = None, data: Any = None, *, pool: SandboxPool | None = None,
                 on_event: OnEvent | None = None, **settings: Any) -> None:
        self.config = config.model_copy(update=settings) if config else RLMConfig(**settings)
        self.on_event = on_event
        self._conversation = Conversation(self.config, data, pool=pool)
        self._controller = Controller(self.config)
        self._asking = asyncio.Lock()
        self._current: RunState | None = None
        self._closed = False

    @property
    def answers(self) -> list[str]:
        """The answer of every question asked so far, in order."""
        return list(self._conversation.answers)

    async def ask(self, prompt: str) -> Result:
        """Ask a question about the data; the sandbox starts on the first. One at a time."""
        if self._closed:
            raise ConfigError("this session is closed")
        async with self._asking:
            try:
                return await self._controller.ask(self._conversation, prompt, on_event=self.on_event,
                                                  state=self._track)
            finally:
                self._current = None

    def _track(self, run: RunState) -> None:
        self._current = run

    async def interrupt(self) -> None:
        """Stop the current question, not the session: its running code gets KeyboardInterrupt
        and the question ends `interrupted` after this step; the REPL keeps its state."""
        run = self._current
        if run is None:
            return
        run.interrupted = True
        sandbox = self._conversation.sandbox
        if sandbox is not None:
            await sandbox.interrupt()

    async def close(self) -> None:
        self._closed = True
        await self._conversation.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
