"""The turn loop: ask the root model, run its code in the sandbox, feed the output back,
until `answer["ready"]` or a budget ends the run. Knows no sandbox backend and no model server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sandbox import SandboxError, SandboxPool

from . import prompts
from .broker import Broker
from .budget import TreeBudget
from .compaction import Compactor
from .config import RLMConfig
from .conversation import Conversation
from .errors import ConfigError, ModelError
from .events import CodeRan, Finished, ModelReplied, OnEvent, TurnStarted
from .models import Completion, ModelClient
from .repl import AnswerReading, AnswerReplaced, AnswerState, BlockRun
from .state import RunState
from .trajectory import Event, Result, Turn

log = logging.getLogger("rlm")


class Controller:
    """Runs RLM questions with one configuration at one depth; a nested controller shares its
    parent's `TreeBudget`."""

    def __init__(self, config: RLMConfig, *, depth: int = 0, budget: TreeBudget | None = None) -> None:
        self.config = config
        self.depth = depth
        self.budget = budget

    async def run(self, prompt: str, data: Any = None, *, pool: SandboxPool | None = None,
                  on_event: OnEvent | None = None) -> Result:
        """One rollout over `data`: a conversation of one question. A sandbox comes from `pool`
        when given (and the data needs no mount); `on_event` gets its events as they happen.
        Failures end the run with a status and `Result.error`, never an exception."""
        conversation = Conversation(self.config, data, pool=pool)
        try:
            return await self.ask(conversation, prompt, on_event=on_event)
        finally:
            await conversation.close()

    async def ask(self, conversation: Conversation, prompt: str, *, on_event: OnEvent | None = None,
                  state: Callable[[RunState], None] | None = None) -> Result:
        """Ask one question in `conversation` (started on the first); `state` sees the run's
        state before it starts (a session keeps it, to interrupt)."""
        config = self.config
        started = time.monotonic()
        run = RunState.new(config, conversation, depth=self.depth, budget=self.budget, on_event=on_event)
        if state is not None:
            state(run)
        result = run.result
        root = ModelClient.from_config(config, "root")
        sub = ModelClient.from_config(config, "sub")
        broker = Broker(run, sub, spawn_child=self._spawn_child)
        try:
            async with asyncio.timeout(run.budget.remaining_seconds()):
                if conversation.started:
                    assert conversation.repl is not None
                    await conversation.repl.next_question()
                else:
                    await conversation.start(run.budget.describe(whole=self.budget is None))
                    result.timings.sandbox_start = time.monotonic() - started
                run.question = len(conversation.messages)
                conversation.append({"role": "user", "content": prompt})
                result.messages = conversation.messages  # a live view while it runs; a copy at the end
                await self._loop(run, root, broker)
        except TimeoutError:
            result.status = "timeout"
            result.error = (f"the run exceeded its {config.timeout:g}s timeout" if self.budget is None
                            else "the call tree's timeout ran out")
        except (ModelError, SandboxError, ConfigError) as exc:  # ConfigError: an input that would not serialize
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug of ours must not lose the run: record it, keep the result
            log.exception("run failed")
            result.status, result.error = "error", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            await root.close()
            await sub.close()
            result.messages = list(conversation.messages)
            result.timings.total = time.monotonic() - started
        conversation.answers.append(result.answer)
        log.info("done: %s", result.summary())
        run.emit(Finished(result=result))
        return result

    async def _spawn_child(self, prompt: str, parent: RunState) -> Result:
        child = Controller(self.config.child(), depth=parent.depth + 1, budget=parent.budget)
        return await child.run(prompt, on_event=parent.on_event)

    async def _loop(self, run: RunState, root: ModelClient, broker: Broker) -> None:
        config, result, conversation = run.config, run.result, run.conversation
        tools = [prompts.PYTHON_TOOL] if config.code_format == "tool" else None
        compactor = Compactor(config, root) if config.compaction else None
        for index in range(1, config.max_turns + 1):
            run.turn = index
            run.emit(TurnStarted())
            turn_started = time.monotonic()
            compacted = compactor is not None and await compactor.maybe_compact(run)
            async with run.budget.slot(run.depth):
                completion = await root.complete(conversation.messages, tools=tools)
            result.usage.record("root", run.depth, root.model, completion.usage)
            run.budget.charge(root.model, completion.usage)
            if compactor is not None:
                compactor.counted(run, completion, len(conversation.messages))
            run.emit(ModelReplied(content=completion.content, usage=completion.usage))
            result.timings.model += completion.latency
            conversation.append(completion.as_message())
            turn = Turn(index=index, assistant=completion.content, usage=completion.usage,
                        tokens=completion.tokens, logprobs=completion.logprobs,
                        prompt_ids=completion.prompt_ids, completion_ids=completion.completion_ids,
                        model_seconds=completion.latency, compacted=compacted)
            result.turns.append(turn)
            exec_started = time.monotonic()
            state = await self._execute_reply(run, broker, completion, turn)
            turn.exec_seconds = time.monotonic() - exec_started
            result.timings.execution += turn.exec_seconds
            if state is not None and state.content != run.content:
                run.content = turn.answer = state.content
            result.answer = run.content
            turn.duration = time.monotonic() - turn_started
            _log_turn(turn)
            if state is not None and state.ready:
                result.status = "ready"
                return
            if run.interrupted:
                result.status, result.error = "interrupted", "interrupted by the user"
                return
            if config.max_root_tokens is not None and result.usage.root.total_tokens >= config.max_root_tokens:
                result.status, result.error = "budget", f"root-model token budget ({config.max_root_tokens}) spent"
                return
            spent = run.budget.spent()
            if spent is not None:
                result.status, result.error = "budget", spent
                return
            if run.refused:
                if run.budget_warned:
                    result.status, result.error = "budget", "sub-call budget spent"
                    return
                run.budget_warned = True
                conversation.append({"role": "user", "content": prompts.BUDGET_NOTE})
            note = prompts.turns_left_note(index, config.max_turns, run.budget.describe())
            if note:
                conversation.note(note)
        result.status = "max_turns"

    async def _execute_reply(self, run: RunState, broker: Broker, completion: Completion,
                             turn: Turn) -> AnswerState | None:
        """Run the code of one reply, append the feedback messages; returns the answer state."""
        config, conversation, repl = run.config, run.conversation, run.conversation.repl
        assert repl is not None
        if config.code_format == "tool":
            blocks = [(call["id"], prompts.tool_call_code(call)) for call in completion.tool_calls]
        else:
            blocks = [(None, code) for code in prompts.extract_code(completion.content)]
        if not blocks:
            conversation.append({"role": "user", "content": prompts.nudge(config)})
            turn.error, turn.error_kind = "no code", "no_code"
            return None
        feedback: list[str] = []
        last: BlockRun | None = None
        for call_id, code in blocks:
            if run.interrupted:  # interrupted before this block started: it does not run at all
                break
            if code is None:
                text = prompts.BAD_TOOL_CALL
            else:
                turn.code.append(code)
                last = await repl.run(code, broker.handle)
                text = self._record_block(last, turn)
                run.emit(CodeRan(code=code, output=text, error=turn.error))
                if last.lost_state:
                    await repl.install(answer_content=run.content, answers=conversation.answers,
                                       history=conversation.transcript_json() if run.result.compactions else None)
            if call_id is not None:
                conversation.append({"role": "tool", "tool_call_id": call_id, "content": text})
            feedback.append(text)
            if turn.error_kind is not None or (last is not None and isinstance(last.answer, AnswerState)
                                               and last.answer.ready):
                break
        turn.output = "\n".join(feedback)
        skipped = blocks[len(feedback):]
        if config.code_format == "tool":
            for call_id, _ in skipped:  # the API wants an answer to every tool call
                conversation.append({"role": "tool", "tool_call_id": call_id, "content": prompts.NOT_RUN})
        else:
            if skipped:
                feedback.append(f"[{len(skipped)} later code block(s) not run: {prompts.NOT_RUN}]")
            conversation.append({"role": "user", "content": "\n".join(feedback)})
        raw, reading = (last.raw_answer, last.answer) if last is not None and last.raw_answer is not None \
            else await repl.read_answer()
        return await self._check_answer(run, raw, reading, turn)

    def _record_block(self, block: BlockRun, turn: Turn) -> str:
        """Fold one block's execution into the turn; returns the REPL feedback text."""
        outcome = block.result
        if block.crashed is not None:
            turn.error, turn.error_kind = f"{type(block.crashed).__name__}: {block.crashed}", "crash"
            turn.restarted = True
            turn.events.append(Event(kind="kernel_restarted", detail=turn.error))
        if outcome is not None:
            turn.timed_out |= outcome.timed_out
            turn.restarted |= outcome.restarted
            if outcome.timed_out:
                turn.error, turn.error_kind = "timeout", "timeout"
            elif outcome.error:
                turn.error, turn.error_kind = outcome.error_name or "error", "exception"
            if outcome.restarted:
                turn.events.append(Event(kind="kernel_restarted", detail="the kernel ignored the interrupt"))
            if outcome.messages_dropped:
                turn.events.append(Event(kind="output_dropped",
                                         detail=f"{outcome.messages_dropped:,} output messages past the limit"))
        text, cut = prompts.format_execution(outcome, block.crashed, self.config)
        turn.chars_cut += cut
        return text

    async def _check_answer(self, run: RunState, raw: Any, reading: AnswerReading,
                            turn: Turn) -> AnswerState | None:
        """Check what the kernel reported about `answer`; it may be hostile, so anything off is
        an event and a note to the model, never an exception."""
        conversation, repl = run.conversation, run.conversation.repl
        assert repl is not None
        if isinstance(reading, AnswerReplaced):
            conversation.note(prompts.ANSWER_NOT_DICT.format(kind=reading.kind))
            await repl.reset_answer(run.content)
            return None
        if reading is None:
            if raw is not None or not turn.restarted:
                turn.events.append(Event(kind="state_unreadable", detail=f"answer state: {str(raw)[:200]!r}"))
                conversation.note(prompts.STATE_UNREADABLE)
            return None
        limit = run.config.max_answer_chars
        if reading.length > limit or len(reading.content) > limit:
            length = max(reading.length, len(reading.content))
            turn.events.append(Event(kind="answer_cut", detail=f"{length:,} characters, limit {limit:,}"))
            conversation.note(prompts.ANSWER_CUT.format(length=length, limit=limit))
            reading = AnswerState(reading.content[:limit], reading.length, reading.ready)
        return reading


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
