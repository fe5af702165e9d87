"""Serves the requests kernel code sends (`llm_batch`, `count_tokens`, `pip_install`) for one run:
a table of handlers, each validating its request, enforcing the run's budgets and depth, and replying.

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

from . import images
from .errors import BudgetExhausted, ContextLengthExceeded, ModelError, RLMError
from .events import SubCallDone, head
from .images import Prompt
from .models import Completion, ModelClient
from .runtime import most_tokens
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
        self.handlers: dict[str, Handler] = {"llm_batch": self.llm_batch, "count_tokens": self.count_tokens,
                                             "pip_install": self.pip_install, "call": self.call}

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
        items = request.get("prompts")
        if not isinstance(items, list):
            return Reply.failed("llm_batch needs a list of prompts")
        if len(items) > config.max_batch_prompts:
            return Reply.failed(f"llm_batch takes at most {config.max_batch_prompts:,} prompts per call")
        prompts: list[Prompt] = []
        for index, item in enumerate(items):
            parsed = images.parse(item, max_image_bytes=config.max_image_bytes, max_images=config.max_images)
            if isinstance(parsed, str):
                return Reply.failed(f"prompt {index}: {parsed}")
            if parsed.images and not config.sub_vision:
                return Reply.failed(f"prompt {index} has images, but the sub-model {self.client.model} is text-only "
                                    "here: set sub_vision=True for a vision model (e.g. Qwen2.5-VL on vLLM)")
            # the request's JSON may spell lone surrogates
            prompts.append(Prompt(valid_text(parsed.text), parsed.images))
        too_long = [i for i, p in enumerate(prompts) if len(p.text) > config.max_prompt_chars]
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

    async def count_tokens(self, request: dict[str, Any]) -> Reply:
        """Token counts of texts by the sub-model's tokenizer, for `chunk_text`; the result is None
        when its server has no tokenizer endpoint (the kernel then bounds counts itself)."""
        config = self.run.config
        texts = request.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return Reply.failed("count_tokens needs a list of strings")
        if len(texts) > config.max_batch_prompts:
            return Reply.failed(f"count_tokens takes at most {config.max_batch_prompts:,} texts per call")
        if any(len(t) > config.max_prompt_chars for t in texts):
            return Reply.failed(f"count_tokens takes texts of at most {config.max_prompt_chars:,} characters")
        try:
            return Reply(result=await self.client.tokens.count([valid_text(t) for t in texts]))
        except ModelError as exc:
            return Reply.failed(str(exc)[:1000])

    def _recorded(self, prompt: str) -> str:
        """The prompt as the result keeps it: whole until the run's `max_recorded_chars` are
        spent, then its head and its length (the model still gets all of it)."""
        room = self.run.config.max_recorded_chars - self.run.recorded_chars
        if len(prompt) > room:
            head = prompt[: min(1000, max(room, 0))]
            prompt = f"{head}\n[... {len(prompt) - len(head):,} characters not recorded: max_recorded_chars spent ...]"
        self.run.recorded_chars += len(prompt)
        return prompt

    async def _one(self, prompt: Prompt) -> str:
        run = self.run
        record = SubCall(turn=run.turn, depth=run.depth + 1, prompt=self._recorded(prompt.recorded()))
        run.result.sub_calls.append(record)
        started = time.monotonic()
        try:
            if run.config.max_depth > 1 and self.spawn_child is not None:
                await self._nested(prompt.text, record)  # holds no request slot: its own requests take them
            else:
                await asyncio.wait_for(self._complete(prompt, record), run.config.request_timeout)
        except Exception as exc:  # a sub-call's failure is its slot's error, never the run's
            record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if not isinstance(exc, (RLMError, TimeoutError)):
                log.exception("sub-call failed unexpectedly")
        record.latency = time.monotonic() - started
        run.emit(SubCallDone(turn=record.turn, prompt=head(prompt.text), completion=head(record.completion),
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

    async def _complete(self, prompt: Prompt, record: SubCall) -> None:
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
        await self._check_fits(prompt.text)
        try:
            record.completion, record.tool_calls, finished = await self.toolbox.converse(
                complete, prompt.content(), max_turns)
        except ContextLengthExceeded as exc:
            raise await self._overflow(prompt.text, exc.prompt_tokens, exc.window, "the server refused it") from exc
        if not finished:
            record.error = f"sub-LLM still calling tools after {max_turns} turns"

    async def _check_fits(self, prompt: str) -> None:
        """Refuse, without a request, a prompt the sub-model's tokenizer says is over its context
        window; only prompts with more bytes than the window are counted (no token is shorter)."""
        window = await self.client.tokens.context_window()
        if window is None or most_tokens(prompt) < window:
            return
        tokens = await self._count(prompt)
        if tokens is not None and tokens >= window:
            raise await self._overflow(prompt, tokens, window, "not sent")

    async def _count(self, prompt: str) -> int | None:
        """The prompt's tokens by the sub-model's tokenizer; None without one, or when it failed
        (the prompt is then sent, and the server judges it)."""
        try:
            counts = await self.client.tokens.count([prompt])
        except ModelError:
            log.warning("counting a sub-prompt's tokens failed", exc_info=True)
            return None
        return None if counts is None else counts[0]

    async def _overflow(self, prompt: str, tokens: int | None, window: int | None,
                        outcome: str) -> ContextLengthExceeded:
        """The slot's error for a prompt over the context window, naming both sizes as well as
        they can be known: the server's numbers, else its tokenizer's count, else the byte bound."""
        model = self.client.model
        tokens = tokens if tokens is not None else await self._count(prompt)
        size = (f"at most {most_tokens(prompt):,} tokens (estimated: no tokenizer count)" if tokens is None
                else f"{tokens:,} tokens")
        window = window or await self.client.tokens.context_window()
        limit = f"{window:,} tokens" if window is not None else "smaller (its size is not reported)"
        return ContextLengthExceeded(
            f"the prompt is {size}, and {model}'s context window is {limit}: {outcome}. Shorten it, or split "
            "the text with chunk_text(text, max_tokens)", prompt_tokens=tokens, window=window)
