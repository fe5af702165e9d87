"""Sub-LLM tools: Python callables offered to sub-LLMs (never to the root model) as OpenAI
function tools, and the conversation in which a sub-LLM calls them."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, get_type_hints

from .models import Completion

#: One chat completion of `messages`, offering `tools`.
Complete = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], Awaitable[Completion]]

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """An OpenAI function-tool schema from a Python callable's signature and docstring."""
    hints = get_type_hints(fn)
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        properties[name] = {"type": _JSON_TYPES.get(hints.get(name, str), "string")}
        if param.default is inspect.Parameter.empty:
            required.append(name)
    return {
        "type": "function",
        "function": {
            "name": fn.__name__,
            "description": inspect.getdoc(fn) or fn.__name__,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


class Toolbox:
    """The tools of one run, by name, with their schemas."""

    def __init__(self, tools: Sequence[Callable[..., Any]]) -> None:
        self._tools = {fn.__name__: fn for fn in tools}
        self.schemas = [tool_schema(fn) for fn in tools]

    async def call(self, name: str, arguments: str) -> str:
        """Run one tool call; its failure is the sub-LLM's to read, never an exception here."""
        fn = self._tools.get(name)
        if fn is None:
            return f"error: no tool named {name!r}"
        try:
            kwargs = json.loads(arguments or "{}")
            if inspect.iscoroutinefunction(fn):
                value = await fn(**kwargs)
            else:  # a blocking tool must not stall the event loop serving the other sub-calls
                value = await asyncio.to_thread(fn, **kwargs)
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"
        return value if isinstance(value, str) else json.dumps(value, default=str)

    async def converse(self, complete: Complete, prompt: str | list[dict[str, Any]],
                       max_turns: int) -> tuple[str, int, bool]:
        """Ask `prompt` through `complete`, running the tools the model calls, for up to
        `max_turns` replies. Returns the last content, the number of tool calls, and whether
        the model finished."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        calls = 0
        content = ""
        for _ in range(max_turns):
            completion = await complete(messages, self.schemas or None)
            content = completion.content
            if not completion.tool_calls:
                return content, calls, True
            messages.append(completion.as_message())
            for call in completion.tool_calls:
                calls += 1
                output = await self.call(call["function"]["name"], call["function"]["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        return content, calls, False
