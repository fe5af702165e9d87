"""Serves `llm_batch` for one run: validates the request, enforces budgets and depth, fans
the prompts out concurrently and records every sub-call.

The broker only sees JSON requests coming out of the sandbox, so it treats them as hostile:
anything malformed or over budget gets an error reply, never an exception in the controller.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, get_type_hints

from sandbox import Delivery, valid_text

from .config import RLMConfig
from .errors import RLMError
from .models import ModelClient
from .trajectory import Result, SubCall, Usage

log = logging.getLogger("rlm")

#: Runs `prompt` as a nested RLM one level down; supplied by the controller for depth > 1.
SpawnChild = Callable[[str], Awaitable[Result]]

#: A requirement as pip_install accepts it: a name, extras, version clauses; never an option.
_REQUIREMENT = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]+\])?([<>=!~]=?[A-Za-z0-9.*+!_-]+(,[<>=!~]=?[A-Za-z0-9.*+!_-]+)*)?$"
)
WHEELHOUSE = Path(os.environ.get("RLM_WHEELHOUSE", Path.home() / ".cache" / "rlm" / "wheelhouse"))
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


class Broker:
    """The controller's side of the sandbox's RPC channel."""

    def __init__(
        self,
        config: RLMConfig,
        client: ModelClient,
        usage: Usage,
        sub_calls: list[SubCall],
        *,
        depth: int = 0,
        spawn_child: SpawnChild | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.usage = usage
        self.sub_calls = sub_calls
        self.depth = depth
        self.spawn_child = spawn_child
        self.turn = 0
        #: Makes a new read-only directory in the sandbox for delivered wheels.
        self.delivery: Callable[[], Delivery] | None = None
        self.calls_used = 0
        self.recorded_chars = 0  # of sub-call prompts kept in the result
        self._wheels: dict[str, str] = {}  # wheel file name -> where the sandbox has it
        self.refused = False
        self._limit = asyncio.Semaphore(config.max_sub_concurrency)
        self._tools = {fn.__name__: fn for fn in config.sub_tools}
        self._schemas = [tool_schema(fn) for fn in config.sub_tools]

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one RPC request from the kernel with `{"ok": ..., "result" | "error": ...}`."""
        method = request.get("method")
        if method == "pip_install":
            return await self._pip_install(request.get("packages"))
        if method != "llm_batch":
            return _error(f"unknown request {method!r}")
        prompts = request.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return _error("llm_batch needs a list of strings")
        if len(prompts) > self.config.max_batch_prompts:
            return _error(f"llm_batch takes at most {self.config.max_batch_prompts:,} prompts per call")
        prompts = [valid_text(p) for p in prompts]  # the request's JSON may spell lone surrogates
        too_long = [i for i, p in enumerate(prompts) if len(p) > self.config.max_prompt_chars]
        if too_long:
            limit = self.config.max_prompt_chars
            return _error(f"prompts longer than {limit:,} characters at positions {too_long[:10]}")
        if self.config.max_depth == 0:
            return _error("llm_batch is disabled in this run (max_depth=0): solve it with code alone")
        budget = self.config.max_sub_calls
        if budget is not None and self.calls_used + len(prompts) > budget:
            self.refused = True
            return _error(
                f"sub-call budget exhausted: {self.calls_used} of {budget} used, "
                f"{len(prompts)} more asked; no further llm_batch calls will run"
            )
        self.calls_used += len(prompts)
        results = await asyncio.gather(*(self._one(prompt) for prompt in prompts))
        return {"ok": True, "result": results}

    def _recorded(self, prompt: str) -> str:
        """The prompt as the result keeps it: whole until the run's `max_recorded_chars` are
        spent, then its head and its length (the model still gets all of it)."""
        budget = self.config.max_recorded_chars - self.recorded_chars
        if len(prompt) > budget:
            head = prompt[: min(1000, max(budget, 0))]
            prompt = f"{head}\n[... {len(prompt) - len(head):,} characters not recorded: max_recorded_chars spent ...]"
        self.recorded_chars += len(prompt)
        return prompt

    async def _one(self, prompt: str) -> str:
        record = SubCall(turn=self.turn, depth=self.depth + 1, prompt=self._recorded(prompt))
        self.sub_calls.append(record)
        started = time.monotonic()
        async with self._limit:
            try:
                if self.config.max_depth > 1 and self.spawn_child is not None:
                    await self._nested(prompt, record)
                else:
                    await asyncio.wait_for(self._complete(prompt, record), self.config.request_timeout)
            except Exception as exc:  # a sub-call's failure is its slot's error, never the run's
                record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if not isinstance(exc, (RLMError, TimeoutError)):
                    log.exception("sub-call failed unexpectedly")
        record.latency = time.monotonic() - started
        return f"[error] {record.error}" if record.error else record.completion

    async def _nested(self, prompt: str, record: SubCall) -> None:
        assert self.spawn_child is not None
        child = await self.spawn_child(prompt)
        record.child = child
        record.completion = child.answer
        record.usage.add(child.usage.root)
        record.usage.add(child.usage.sub)
        self.usage.merge_child(child.usage)
        if child.status != "ready":
            record.error = f"nested run ended with status {child.status}: {child.error or ''}".rstrip(": ")

    async def _complete(self, prompt: str, record: SubCall) -> None:
        """A plain sub-LLM call, looping through sub-tools for up to `sub_max_turns` replies."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        for _ in range(self.config.sub_max_turns):
            completion = await self.client.complete(messages, tools=self._schemas or None)
            record.usage.add(completion.usage)
            self.usage.record("sub", self.depth + 1, self.client.model, completion.usage)
            record.completion = completion.content
            if not completion.tool_calls:
                return
            messages.append(completion.as_message())
            for call in completion.tool_calls:
                record.tool_calls += 1
                output = await self._run_tool(call["function"]["name"], call["function"]["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
        record.error = f"sub-LLM still calling tools after {self.config.sub_max_turns} turns"

    async def _run_tool(self, name: str, arguments: str) -> str:
        fn = self._tools.get(name)
        if fn is None:
            return f"error: no tool named {name!r}"
        try:
            kwargs = json.loads(arguments or "{}")
            if inspect.iscoroutinefunction(fn):
                value = await fn(**kwargs)
            else:  # a blocking tool must not stall the event loop serving the other sub-calls
                value = await asyncio.to_thread(fn, **kwargs)
        except Exception as exc:  # a tool's failure is the sub-LLM's to read, not ours to raise
            return f"error: {type(exc).__name__}: {exc}"
        return value if isinstance(value, str) else json.dumps(value, default=str)

    async def _pip_install(self, packages: Any) -> dict[str, Any]:
        """Download wheels on the host (cached), deliver them into a new read-only directory."""
        allowed = self.config.allow_pip
        if not allowed:
            return _error("package installs are disabled in this run (allow_pip=False)")
        if not isinstance(packages, list) or not packages or not all(isinstance(p, str) for p in packages):
            return _error("pip_install needs a list of requirement strings, e.g. ['six==1.16.0']")
        names = []
        for requirement in packages:
            match = _REQUIREMENT.match(requirement.strip())
            if match is None:
                return _error(f"not a plain requirement: {requirement!r}")
            names.append(_package_name(match.group(1)))
        if isinstance(allowed, list):
            permitted = {_package_name(name) for name in allowed}
            refused = [n for n in names if n not in permitted]
            if refused:
                return _error(f"not allowed in this run: {', '.join(refused)} (allowed: {', '.join(sorted(permitted))})")
        if self.delivery is None:
            return _error("no sandbox to deliver packages to")
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
            "--dest", str(WHEELHOUSE), *[p.strip() for p in packages],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=self.config.request_timeout)
        except TimeoutError:
            process.kill()
            return _error("pip download timed out")
        text = output.decode(errors="replace")
        if process.returncode != 0:
            return _error(f"pip download failed: {text.strip().splitlines()[-1] if text.strip() else process.returncode}")
        wheels = [Path(m) for m in re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", text)]
        new = [wheel for wheel in wheels if wheel.name not in self._wheels]
        if new:  # each wheel reaches a sandbox once: asking again costs no host disk
            delivery = self.delivery()
            self._wheels.update({wheel.name: delivery.write(wheel.name, _chunks(wheel)) for wheel in new})
        return {"ok": True, "result": [self._wheels[wheel.name] for wheel in wheels]}


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _package_name(name: str) -> str:
    """The form a requirement's name and the allow list are compared in."""
    return name.lower().replace("_", "-")


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
