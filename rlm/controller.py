"""The turn loop: ask the root model, run its code in the sandbox, feed the output back,
until `answer["ready"]` or a budget ends the run. Knows no sandbox backend and no model server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from sandbox import Sandbox, SandboxCrashed, SandboxError, create_sandbox, valid_text
from sandbox import runtime as sandbox_runtime

from . import prompts
from .broker import Broker
from .config import RLMConfig
from .errors import ConfigError, ModelError
from .models import ModelClient
from .trajectory import Event, Result, Turn

log = logging.getLogger("rlm")

_RUNTIME_SOURCE = Path(sandbox_runtime.__file__).read_text()
_STATE = {"state": "_rlm_state()"}
_WRITE_CHUNK = 1 << 24


class AnswerState(NamedTuple):
    """`answer` as the kernel reported it after a cell."""

    content: str
    length: int  # of the content in the REPL, before the cut to max_answer_chars
    ready: bool


class DataFile:
    """Where the run's data lives for the kernel: a file delivered read-only, or a read-only mount."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self._load: str | None = None
        self.mounts: list[Path] = []
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

    def load_code(self, sandbox: Sandbox) -> str:
        """The code that loads the data as `context`; delivers the data on the first call.

        The file goes into a delivery directory only the host writes, so a kernel restored after
        a crash reads the same file again and nothing it planted can redirect the write.
        """
        if self._load is None:
            self._load = self._deliver(sandbox)
        return self._load

    def _deliver(self, sandbox: Sandbox) -> str:
        if self.kind == "none":
            return "context = None"
        if self.mounts:
            where = sandbox.path_in_sandbox(self.mounts[0])
            return f"context = _rlm_load({where!r}, {self.kind!r})"
        name = {"text": "context.txt", "bytes": "context.bin", "json": "context.json"}[self.kind]
        if self.kind == "text":  # encoded a slice at a time: bounded extra memory for huge text
            chunks: Iterable[bytes] = (self.data[i : i + _WRITE_CHUNK].encode("utf-8")
                                       for i in range(0, len(self.data), _WRITE_CHUNK))
        elif self.kind == "bytes":
            chunks = [bytes(self.data)]
        else:
            chunks = [self._json.encode("utf-8")]
        where = sandbox.delivery().write(name, chunks)
        return f"context = _rlm_load({where!r}, {self.kind!r})"

    def preview_source(self) -> Any:
        """What the system prompt previews: the data, or the head of a mounted file."""
        if self.mounts and self.kind == "text":
            with open(self.mounts[0], encoding="utf-8", errors="replace") as f:
                return f.read(4096)
        if self.kind == "path":
            return self.mounts[0]
        return self.data


class Controller:
    """One RLM run at one depth."""

    def __init__(self, config: RLMConfig, *, depth: int = 0) -> None:
        self.config = config
        self.depth = depth

    async def run(self, prompt: str, data: Any = None) -> Result:
        config = self.config
        result = Result(model=config.model, sub_model=config.resolved_sub_model)
        started = time.monotonic()
        data_file = DataFile(data)
        root = ModelClient.from_config(config, "root")
        sub = ModelClient.from_config(config, "sub")
        broker = Broker(config, sub, result.usage, result.sub_calls, depth=self.depth,
                        spawn_child=self._spawn_child)
        try:
            async with asyncio.timeout(config.timeout):
                async with self._sandbox(data_file) as sandbox:
                    result.timings.sandbox_start = time.monotonic() - started
                    broker.delivery = sandbox.delivery
                    packages = await self._prepare(sandbox, data_file, restore=None)
                    context = prompts.describe_context(
                        data_file.preview_source(), data_file.kind, data_file.size, config.preview_chars
                    )
                    system = prompts.system_prompt(config, context, packages)
                    result.messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
                    await self._loop(sandbox, data_file, root, broker, result)
        except TimeoutError:
            result.status, result.error = "timeout", f"the run exceeded its {config.timeout:g}s timeout"
        except (ModelError, SandboxError) as exc:
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug of ours must not lose the run: record it, keep the result
            log.exception("run failed")
            result.status, result.error = "error", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            await root.close()
            await sub.close()
            result.timings.total = time.monotonic() - started
        log.info("done: %s", result.summary())
        return result

    @contextlib.asynccontextmanager
    async def _sandbox(self, data_file: DataFile) -> AsyncIterator[Sandbox]:
        """A started sandbox for this run: from the warm pool when one is configured and the
        data needs no mount (mounts are fixed when a sandbox starts), else a new one."""
        config = self.config
        if config.pool is not None and not data_file.mounts:
            sandbox = await config.pool.acquire()
        else:
            options = dict(config.sandbox_options)
            options["mounts"] = [*options.get("mounts", ()), *data_file.mounts]
            sandbox = create_sandbox(config.sandbox, **options)
            try:
                await sandbox.start()
            except BaseException:
                await sandbox.close()
                raise
        try:
            yield sandbox
        finally:
            await sandbox.close()

    async def _spawn_child(self, prompt: str) -> Result:
        return await Controller(self.config.child(), depth=self.depth + 1).run(prompt)

    async def _prepare(self, sandbox: Sandbox, data_file: DataFile, restore: str | None) -> list[str]:
        """Load the runtime and the data into a fresh kernel; returns the installed packages."""
        limits = {"answer_chars": self.config.max_answer_chars, "prompt_chars": self.config.max_prompt_chars,
                  "request_bytes": sandbox.limits.message_bytes}
        code = f"{_RUNTIME_SOURCE}\n_RLM_LIMITS.update({limits!r})\n{data_file.load_code(sandbox)}"
        if restore:
            code += f"\nanswer['content'] = {restore!r}"
        outcome = await sandbox.execute(
            code, user_expressions={"packages": "_rlm_packages()"}, timeout=self.config.exec_timeout
        )
        if not outcome.ok:
            raise SandboxError(f"loading the data into the sandbox failed:\n{outcome.error or outcome.stderr}")
        return list(outcome.expressions.get("packages") or [])

    async def _loop(
        self, sandbox: Sandbox, data_file: DataFile, root: ModelClient, broker: Broker, result: Result
    ) -> None:
        config = self.config
        messages = result.messages
        tools = [prompts.PYTHON_TOOL] if config.code_format == "tool" else None
        content, budget_warned = "", False
        for index in range(1, config.max_turns + 1):
            turn_started = time.monotonic()
            completion = await root.complete(messages, tools=tools)
            result.usage.record("root", self.depth, root.model, completion.usage)
            result.timings.model += completion.latency
            messages.append(completion.as_message())
            turn = Turn(index=index, assistant=completion.content, usage=completion.usage,
                        tokens=completion.tokens, logprobs=completion.logprobs,
                        prompt_ids=completion.prompt_ids, completion_ids=completion.completion_ids,
                        model_seconds=completion.latency)
            result.turns.append(turn)
            broker.turn = index
            exec_started = time.monotonic()
            state = await self._execute_reply(sandbox, data_file, broker, completion, turn, content, messages)
            turn.exec_seconds = time.monotonic() - exec_started
            result.timings.execution += turn.exec_seconds
            if state is not None and state.content != content:
                content = turn.answer = state.content
            result.answer = content
            turn.duration = time.monotonic() - turn_started
            _log_turn(turn)
            if state is not None and state.ready:
                result.status = "ready"
                return
            if config.max_root_tokens is not None and result.usage.root.total_tokens >= config.max_root_tokens:
                result.status, result.error = "budget", f"root-model token budget ({config.max_root_tokens}) spent"
                return
            if broker.refused:
                if budget_warned:
                    result.status, result.error = "budget", "sub-call budget spent"
                    return
                budget_warned = True
                messages.append({"role": "user", "content": prompts.BUDGET_NOTE})
            note = prompts.turns_left_note(index, config.max_turns)
            if note:
                _append_note(messages, note)
        result.status = "max_turns"

    async def _execute_reply(
        self, sandbox: Sandbox, data_file: DataFile, broker: Broker, completion: Any, turn: Turn,
        content: str, messages: list[dict[str, Any]],
    ) -> AnswerState | None:
        """Run the code of one reply, append the feedback messages; returns the answer state."""
        config = self.config
        if config.code_format == "tool":
            blocks = [(call["id"], prompts.tool_call_code(call)) for call in completion.tool_calls]
        else:
            blocks = [(None, code) for code in prompts.extract_code(completion.content)]
        if not blocks:
            messages.append({"role": "user", "content": prompts.nudge(config)})
            turn.error = "no code"
            return None
        feedback: list[str] = []
        raw_state: Any = None
        state: AnswerState | str | None = None
        for call_id, code in blocks:
            if code is None:
                text = prompts.BAD_TOOL_CALL
            else:
                turn.code.append(code)
                text, raw_state, lost = await self._run_block(sandbox, broker, code, turn)
                state = _parse_state(raw_state)
                if lost:
                    await self._prepare(sandbox, data_file, restore=content)
            if call_id is not None:
                messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            feedback.append(text)
            if turn.error or (isinstance(state, AnswerState) and state.ready):
                break
        turn.output = "\n".join(feedback)
        skipped = blocks[len(feedback):]
        if config.code_format == "tool":
            for call_id, _ in skipped:  # the API wants an answer to every tool call
                messages.append({"role": "tool", "tool_call_id": call_id, "content": prompts.NOT_RUN})
        else:
            if skipped:
                feedback.append(f"[{len(skipped)} later code block(s) not run: {prompts.NOT_RUN}]")
            messages.append({"role": "user", "content": "\n".join(feedback)})
        if raw_state is None:
            raw_state = await self._read_state(sandbox)
            state = _parse_state(raw_state)
        return await self._answer_state(sandbox, raw_state, state, turn, content, messages)

    async def _answer_state(
        self, sandbox: Sandbox, raw: Any, state: AnswerState | str | None, turn: Turn, content: str,
        messages: list[dict[str, Any]],
    ) -> AnswerState | None:
        """Check what the kernel reported about `answer` (`raw`, parsed as `state`); it may be
        hostile, so anything off is an event and a note to the model, never an exception."""
        if isinstance(state, str):
            _append_note(messages, prompts.ANSWER_NOT_DICT.format(kind=state))
            await sandbox.execute(f"answer = {{'content': {content!r}, 'ready': False}}",
                                  timeout=self.config.exec_timeout)
            return None
        if state is None:
            if raw is not None or not turn.restarted:
                turn.events.append(Event(kind="state_unreadable", detail=f"answer state: {str(raw)[:200]!r}"))
                _append_note(messages, prompts.STATE_UNREADABLE)
            return None
        limit = self.config.max_answer_chars
        if state.length > limit or len(state.content) > limit:
            length = max(state.length, len(state.content))
            turn.events.append(Event(kind="answer_cut", detail=f"{length:,} characters, limit {limit:,}"))
            _append_note(messages, prompts.ANSWER_CUT.format(length=length, limit=limit))
            state = state._replace(content=state.content[:limit])
        return state

    async def _run_block(self, sandbox: Sandbox, broker: Broker, code: str, turn: Turn) -> tuple[str, Any, bool]:
        """Execute one code block; returns the feedback text, the raw answer state, and whether
        the kernel's state was lost (crash or forced restart)."""
        config = self.config
        crashed: str | None = None
        try:
            outcome = await sandbox.execute(
                code, timeout=config.exec_timeout, on_request=broker.handle,
                user_expressions=_STATE, max_output_chars=config.max_output_chars // 2,  # per stream
            )
        except SandboxCrashed as exc:
            await sandbox.restart()
            crashed, outcome = str(exc) or type(exc).__name__, None
            turn.error, turn.restarted = f"{type(exc).__name__}: {exc}", True
            turn.events.append(Event(kind="kernel_restarted", detail=turn.error))
        if outcome is not None:
            turn.timed_out |= outcome.timed_out
            turn.restarted |= outcome.restarted
            if outcome.timed_out:
                turn.error = "timeout"
            elif outcome.error:
                turn.error = outcome.error_name or "error"
            if outcome.restarted:
                turn.events.append(Event(kind="kernel_restarted", detail="the kernel ignored the interrupt"))
            if outcome.messages_dropped:
                turn.events.append(Event(kind="output_dropped",
                                         detail=f"{outcome.messages_dropped:,} output messages past the limit"))
        text, cut = prompts.format_execution(
            stdout=outcome.stdout if outcome else "", stderr=outcome.stderr if outcome else "",
            error=outcome.error if outcome else None, timed_out=bool(outcome and outcome.timed_out),
            restarted=bool(outcome and outcome.restarted), crashed=crashed,
            chars_cut=outcome.chars_cut if outcome else 0,
            exec_timeout=config.exec_timeout, max_output_chars=config.max_output_chars,
        )
        turn.chars_cut += cut
        raw_state = outcome.expressions.get("state") if outcome else None
        return text, raw_state, crashed is not None or bool(outcome and outcome.restarted)

    async def _read_state(self, sandbox: Sandbox) -> Any:
        try:
            outcome = await sandbox.execute("", user_expressions=_STATE, timeout=self.config.exec_timeout)
        except SandboxCrashed:
            return None
        return outcome.expressions.get("state")


def _parse_state(raw: Any) -> AnswerState | str | None:
    """The answer state from `_rlm_state()`'s JSON; a str names what `answer` became instead of
    a dict; None when the reply is not the runtime's (a hostile kernel can send anything)."""
    if not isinstance(raw, str):
        return None
    try:
        state = json.loads(raw)
        if not isinstance(state, dict):
            return None
        if "invalid" in state:
            return valid_text(str(state["invalid"])[:100])
        content = base64.b64decode(state["content"], validate=True).decode("utf-8", "replace")
        length, ready = state["length"], state["ready"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(length, int) or not isinstance(ready, bool):
        return None
    return AnswerState(content, length, ready)


def _append_note(messages: list[dict[str, Any]], note: str) -> None:
    """Add a note to the last feedback message (tool results get their own user message)."""
    if messages[-1]["role"] == "user":
        messages[-1]["content"] += "\n" + note
    else:
        messages.append({"role": "user", "content": note})


def _log_turn(turn: Turn) -> None:
    log.info(
        "turn %d: %d block(s), %.1fs model, %.1fs exec%s; answer %s",
        turn.index, len(turn.code), turn.model_seconds, turn.exec_seconds,
        f", error: {turn.error}" if turn.error else "",
        "unchanged" if turn.answer is None else f"now {len(turn.answer):,} chars",
    )
    for code in turn.code:
        log.debug("code:\n%s", code)
    if turn.output:
        log.debug("output:\n%s", turn.output[:2000])
