"""Typed events a run emits as it happens, for UIs, logs and chat: `on_event=` takes them one at
a time, `rlm.arun_events` yields them. Every event says which run (`depth`) and turn it is of."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from .trajectory import Result, TokenUsage


class _Event(BaseModel):
    depth: int = 0
    turn: int = 0


class TurnStarted(_Event):
    kind: Literal["turn_started"] = "turn_started"


class ModelReplied(_Event):
    """The root model's reply, before its code runs."""

    kind: Literal["model_reply"] = "model_reply"
    content: str
    usage: TokenUsage


class CodeRan(_Event):
    """One code block and what the REPL gave back (as the model will read it)."""

    kind: Literal["execution"] = "execution"
    code: str
    output: str
    error: str | None = None


class SubCallDone(_Event):
    kind: Literal["sub_call"] = "sub_call"
    prompt: str  # its head
    completion: str  # its head
    error: str | None = None
    latency: float = 0.0


class Compacted(_Event):
    """Older turns of the root conversation were replaced (see `Result.compactions`)."""

    kind: Literal["compaction"] = "compaction"
    tokens_before: int
    tokens_after: int


class Finished(_Event):
    kind: Literal["finished"] = "finished"
    result: Result


RunEvent = Annotated[TurnStarted | ModelReplied | CodeRan | SubCallDone | Compacted | Finished,
                     Field(discriminator="kind")]
#: Receives a run's events in order; it runs on the run's event loop, so it must not block.
OnEvent = Callable[[RunEvent], None]

_HEAD = 500


def head(text: str) -> str:
    """What an event carries of a long text: its head and its length."""
    return text if len(text) <= _HEAD else f"{text[:_HEAD]}… [{len(text):,} characters]"


async def stream(start: Callable[[OnEvent], Coroutine[Any, Any, Result]]) -> AsyncIterator[RunEvent]:
    """The events of the run `start(on_event)` begins, ending with its `Finished`; leaving the
    loop early cancels the run (which closes its sandbox). A run that raises (a bad setting)
    raises here."""
    queue: asyncio.Queue[RunEvent | Exception | None] = asyncio.Queue()

    async def run() -> None:
        try:
            await start(queue.put_nowait)
        except Exception as exc:  # handed to the reader, who raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    task = asyncio.ensure_future(run())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
