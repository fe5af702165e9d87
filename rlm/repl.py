"""`Repl`: a run's REPL on a sandbox. Installs the kernel side (`rlm.runtime`) and the data,
runs code blocks with requests served by the broker, and reads `answer` back, distrusting it."""

from __future__ import annotations

import base64
import inspect
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import ExecutionResult, RequestHandler, Sandbox, SandboxCrashed, SandboxError, rpc, valid_text

from . import runtime
from .config import RLMConfig
from .data import DataFile

#: The runtime's module name inside the kernel, and code that refers to it from a cell.
MODULE = "rlm_runtime"
_REF = f"__import__({MODULE!r})"
_SOURCE = Path(runtime.__file__).read_text(encoding="utf-8")
_STATE = {"state": f"{_REF}.{runtime.answer_state.__name__}(globals())"}
_PACKAGES = {"packages": f"{_REF}.{runtime.installed_packages.__name__}()"}


@dataclass(frozen=True)
class AnswerState:
    """`answer` as the kernel reported it after a cell."""

    content: str
    length: int  # of the content in the REPL, before the cut to max_answer_chars
    ready: bool


@dataclass(frozen=True)
class AnswerReplaced:
    """`answer` is no longer a dict: `kind` names what it became."""

    kind: str


#: What reading `answer` gave: its state, a replaced answer, or None when the reply was not
#: the runtime's (a hostile kernel can send anything).
AnswerReading = AnswerState | AnswerReplaced | None


@dataclass
class BlockRun:
    """One code block's execution as the controller needs it."""

    #: What the sandbox returned; None when the kernel crashed during the block.
    result: ExecutionResult | None
    #: The kernel's crash, when it died during the block.
    crashed: SandboxCrashed | None
    #: The kernel's reply about `answer`, unparsed (None when it sent none), and its reading.
    raw_answer: Any
    answer: AnswerReading

    @property
    def lost_state(self) -> bool:
        """Whether the kernel's state is gone (crash, or a restart after a timeout)."""
        return self.crashed is not None or bool(self.result and self.result.restarted)


class Repl:
    """The run's kernel as the controller sees it."""

    def __init__(self, sandbox: Sandbox, data_file: DataFile, config: RLMConfig) -> None:
        self.sandbox = sandbox
        self.data_file = data_file
        self.config = config

    async def install(self, answer_content: str = "", answers: list[str] | None = None,
                      history: bytes | None = None) -> list[str]:
        """Load the runtime, `answer` and the data into a fresh kernel; returns the installed
        packages. After a crash, `answer_content`, the earlier questions' `answers` and the
        `history` transcript (JSON) restore what the REPL held."""
        limits = runtime.Limits(answer_chars=self.config.max_answer_chars, prompt_chars=self.config.max_prompt_chars,
                                request_bytes=self.sandbox.limits.message_bytes)
        load = self.data_file.load_code(self.sandbox, _REF, runtime.load_context.__name__)
        functions = "".join(f"{fn.__name__} = {_REF}.{runtime.proxy.__name__}({fn.__name__!r}, "
                            f"{inspect.getdoc(fn) or ''!r})\n" for fn in self.config.repl_functions)
        functions += "".join(textwrap.dedent(inspect.getsource(fn)) + "\n" for fn in self.config.sandbox_functions)
        code = (rpc.module_code(MODULE, _SOURCE, {"rpc": rpc.KERNEL_MODULE})
                + f"from {MODULE} import {', '.join(runtime.USER_NAMES)}\n"
                + f"{_REF}.{runtime.configure.__name__}({_REF}.{limits!r})\n"
                + f"answer = {{'content': {answer_content!r}, 'ready': False}}\n"
                + f"answers = {self._deliver_json('answers.json', json.dumps(answers or []).encode())}\n"
                + (f"history = {self._deliver_json('history.json', history)}\n" if history is not None else "")
                + load + functions)
        outcome = await self.sandbox.execute(code, user_expressions=_PACKAGES, timeout=self.config.exec_timeout)
        if not outcome.ok:
            raise SandboxError(f"loading the data into the sandbox failed:\n{outcome.error or outcome.stderr}")
        return list(outcome.expressions.get("packages") or [])

    async def run(self, code: str, on_request: RequestHandler) -> BlockRun:
        """Execute one block; a crash restarts the kernel (empty: the caller reinstalls)."""
        try:
            result = await self.sandbox.execute(
                code, timeout=self.config.exec_timeout, on_request=on_request, user_expressions=_STATE,
                max_output_chars=self.config.max_output_chars // 2,  # per stream
            )
        except SandboxCrashed as exc:
            await self.sandbox.restart()
            return BlockRun(result=None, crashed=exc, raw_answer=None, answer=None)
        raw = result.expressions.get("state")
        return BlockRun(result=result, crashed=None, raw_answer=raw, answer=parse_answer(raw))

    def _deliver_json(self, name: str, data: bytes) -> str:
        """Code that loads `data` (JSON) from a new delivery: `[]` needs none."""
        if data == b"[]":
            return "[]"
        where = self.sandbox.delivery().write(name, [data])
        return f"{_REF}.{runtime.load_context.__name__}({where!r}, 'json')"

    async def next_question(self) -> None:
        """Keep the last answer in `answers`; a fresh `answer` for the next question."""
        await self._run_setup(f"{_REF}.{runtime.next_question.__name__}(globals())")

    async def set_history(self, transcript: bytes) -> None:
        """`history` in the REPL: the whole transcript (JSON), delivered read-only."""
        await self._run_setup(f"history = {self._deliver_json('history.json', transcript)}")

    async def _run_setup(self, code: str) -> None:
        outcome = await self.sandbox.execute(code, timeout=self.config.exec_timeout)
        if not outcome.ok:
            raise SandboxError(f"setting up the REPL failed:\n{outcome.error or outcome.stderr}")

    async def read_answer(self) -> tuple[Any, AnswerReading]:
        """`answer` read on its own (after a turn whose blocks did not report it)."""
        try:
            outcome = await self.sandbox.execute("", user_expressions=_STATE, timeout=self.config.exec_timeout)
        except SandboxCrashed:
            return None, None
        raw = outcome.expressions.get("state")
        return raw, parse_answer(raw)

    async def reset_answer(self, content: str) -> None:
        """Make `answer` a dict again, holding `content`."""
        await self.sandbox.execute(f"answer = {{'content': {content!r}, 'ready': False}}",
                                   timeout=self.config.exec_timeout)


def parse_answer(raw: Any) -> AnswerReading:
    """The answer state from `runtime.answer_state`'s JSON, never trusting its shape."""
    if not isinstance(raw, str):
        return None
    try:
        state = json.loads(raw)
        if not isinstance(state, dict):
            return None
        if "invalid" in state:
            return AnswerReplaced(valid_text(str(state["invalid"])[:100]))
        content = base64.b64decode(state["content"], validate=True).decode("utf-8", "replace")
        length, ready = state["length"], state["ready"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(length, int) or not isinstance(ready, bool):
        return None
    return AnswerState(content, length, ready)
