"""Serves the requests kernel code sends (`llm_batch`, `pip_install`) for one run: a table of
handlers, each validating its request, enforcing the run's budgets and depth, and replying.

The broker only sees JSON requests coming out of the sandbox, so it treats them as hostile:
anything malformed or over budget gets an error reply, never an exception in the controller.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError, validate_call
from pydantic_core import to_jsonable_python

from sandbox import Reply, valid_text

from .errors import BudgetExhausted, RLMError
from .events import SubCallDone, head
from .models import Completion, ModelClient
from .state import RunState
from .tools import Toolbox
from .trajectory import FunctionCall, Result, SubCall

log = logging.getLogger("rlm")

#: Runs `prompt` as a nested RLM one level below `parent`; supplied by the controller for depth > 1.
SpawnChild = Callable[[str, RunState], Awaitable[Result]]
Handler = Callable[[dict[str, Any]], Awaitable[Reply]]


class Broker:
    """The controller's side of the sandbox's request channel, for one run."""

    def __init__(self, run: RunState, client: ModelClient, *, spawn_child: SpawnChild | None = None) -> None:
        config = run.config
        self.run = run
        self.client = client
        self.spawn_child = spawn_child
        self.toolbox = Toolbox(config.sub_tools)
        self.functions = {fn.__name__: validate_call(fn) for fn in config.repl_functions}
        self.handlers: dict[str, Handler] = {"llm_batch": self.llm_batch, "pip_install": self.pip_install,
                                             "call": self.call}

    async def handle(self, request: dict[str, Any]) -> Reply:
        """Answer one request from the kernel."""
        method = request.get("method")
        handler = self.handlers.get(method) if isinstance(method, str) else None
        if handler is None:
            return Reply.failed(f"unknown request {method!r}"[:200])
        return await handler(request)

    async def call(self, request: dict[str, Any]) -> Reply:
        """Run one of the user's `repl_functions` on the host: arguments validated against its
        annotations, a timeout, the result as JSON; counted as a sub-call against the budget."""
        run = self.run
        name, args, kwargs = request.get("function"), request.get("args", []), request.get("kwargs", {})
        fn = self.functions.get(name) if isinstance(name, str) else None
        if fn is None:
            return Reply.failed(f"no REPL function named {str(name)[:100]!r}")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return Reply.failed(f"{name}: arguments must be a list and keyword arguments a dict")
        refusal = run.budget.take_sub_calls(1)
        if refusal is not None:
            run.refused = True
            return Reply.failed(refusal)
        record = FunctionCall(turn=run.turn, depth=run.depth, function=str(name),
                              arguments=head(json.dumps([args, kwargs], default=str)))
        run.result.function_calls.append(record)
        started = time.monotonic()
        timeout = run.config.repl_function_timeout
        try:
            if inspect.iscoroutinefunction(fn):
                value = await asyncio.wait_for(fn(*args, **kwargs), timeout)
            else:  # a blocking function must not stall the loop serving everything else
                value = await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout)
            result = to_jsonable_python(value)
        except ValidationError as exc:
            record.error = f"{name}: invalid arguments: {exc}"
        except TimeoutError:
            record.error = f"{name} did not return within {timeout:g}s"
        except Exception as exc:  # the user's function failed: the REPL gets the message
            record.error = f"{name} raised {type(exc).__name__}: {exc}"
        record.latency = time.monotonic() - started
        if record.error is not None:
            return Reply.failed(record.error)
        record.result = head(json.dumps(result))
        return Reply(result=result)

    async def pip_install(self, request: dict[str, Any]) -> Reply:
        conversation = self.run.conversation
        if conversation.sandbox is None:
            return Reply.failed("no sandbox to deliver packages to")
        return await conversation.installer.install(request.get("packages"), conversation.sandbox.delivery)

    async def llm_batch(self, request: dict[str, Any]) -> Reply:
        config = self.run.config
        prompts = request.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return Reply.failed("llm_batch needs a list of strings")
        if len(prompts) > config.max_batch_prompts:
            return Reply.failed(f"llm_batch takes at most {config.max_batch_prompts:,} prompts per call")
        prompts = [valid_text(p) for p in prompts]  # the request's JSON may spell lone surrogates
        too_long = [i for i, p in enumerate(prompts) if len(p) > config.max_prompt_chars]
        if too_long:
            return Reply.failed(f"prompts longer than {config.max_prompt_chars:,} characters at positions "
                                f"{too_long[:10]}")
        if config.max_depth == 0:
            return Reply.failed("llm_batch is disabled in this run (max_depth=0): solve it with code alone")
        refusal = self.run.budget.take_sub_calls(len(prompts))
        if refusal is not None:
            self.run.refused = True
            return Reply.failed(refusal)
        return Reply(result=await asyncio.gather(*(self._one(prompt) for prompt in prompts)))

    def _recorded(self, prompt: str) -> str:
        """The prompt as the result keeps it: whole until the run's `max_recorded_chars` are
        spent, then its head and its length (the model still gets all of it)."""
        room = self.run.config.max_recorded_chars - self.run.recorded_chars
        if len(prompt) > room:
            head = prompt[: min(1000, max(room, 0))]
            prompt = f"{head}\n[... {len(prompt) - len(head):,} characters not recorded: max_recorded_chars spent ...]"
        self.run.recorded_chars += len(prompt)
        return prompt

    async def _one(self, prompt: str) -> str:
        run = self.run
        record = SubCall(turn=run.turn, depth=run.depth + 1, prompt=self._recorded(prompt))
        run.result.sub_calls.append(record)
        started = time.monotonic()
        try:
            if run.config.max_depth > 1 and self.spawn_child is not None:
                await self._nested(prompt, record)  # holds no request slot: its own requests take them
            else:
                await asyncio.wait_for(self._complete(prompt, record), run.config.request_timeout)
        except Exception as exc:  # a sub-call's failure is its slot's error, never the run's
            record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not isinstance(exc, (RLMError, TimeoutError)):
                log.exception("sub-call failed unexpectedly")
        record.latency = time.monotonic() - started
        run.emit(SubCallDone(turn=record.turn, prompt=head(prompt), completion=head(record.completion),
                             error=record.error, latency=record.latency))
        return f"[error] {record.error}" if record.error else record.completion

    async def _nested(self, prompt: str, record: SubCall) -> None:
        assert self.spawn_child is not None
        child = await self.spawn_child(prompt, self.run)
        record.child = child
        record.completion = child.answer
        record.usage.add(child.usage.root)
        record.usage.add(child.usage.sub)
        self.run.result.usage.merge_child(child.usage)
        if child.status != "ready":
            record.error = f"nested run ended with status {child.status}: {child.error or ''}".rstrip(": ")

    async def _complete(self, prompt: str, record: SubCall) -> None:
        """A plain sub-LLM call, through the run's tools for up to `sub_max_turns` replies; each
        request holds a slot of the tree's concurrency and is charged to its budget."""
        run = self.run

        async def complete(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Completion:
            spent = run.budget.spent()
            if spent is not None:
                raise BudgetExhausted(spent)
            async with run.budget.slot(run.depth + 1):
                completion = await self.client.complete(messages, tools=tools)
            record.usage.add(completion.usage)
            run.result.usage.record("sub", run.depth + 1, self.client.model, completion.usage)
            run.budget.charge(self.client.model, completion.usage)
            return completion

        max_turns = run.config.sub_max_turns
        record.completion, record.tool_calls, finished = await self.toolbox.converse(complete, prompt, max_turns)
        if not finished:
            record.error = f"sub-LLM still calling tools after {max_turns} turns"
