"""Compaction: when the root conversation would pass `compact_at` tokens, its older turns are
replaced by a summary (`compaction="summarize"`) or a note (`"drop"`). The system prompt, the
current question and the last `keep_turns` turns stay; the REPL keeps every variable, and
`history` there holds the whole transcript. Decisions use the server's own token counts, so the
same inputs compact at the same points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import RLMConfig
from .errors import ConfigError
from .events import Compacted
from .models import Completion, ModelClient
from .trajectory import Compaction, TokenUsage

if TYPE_CHECKING:  # the state imports the conversation, which the controller owns
    from .state import RunState

Message = dict[str, Any]

SUMMARY_INSTRUCTION = (
    "You are compacting the working notes of an agent that answers questions with a Python REPL. "
    "Summarize the turns below for the agent itself: what it has learned about the data, which REPL "
    "variables hold what, what `answer[\"content\"]` holds, what failed, and what remains to do. "
    "Be specific (names, numbers) and brief."
)
COMPACTED = (
    "[{turns} earlier turn(s) were compacted to save context. The REPL still holds every variable, "
    "and `history` there holds the whole transcript as a list of messages.{summary}]"
)
#: Characters per token when a message's tokens are not counted by the server yet: low, so the
#: estimate errs towards compacting early.
CHARS_PER_TOKEN = 3


def threshold(compact_at: float, context_window: int | None) -> int:
    """`compact_at` in tokens: as given, or as a fraction of the context window."""
    if compact_at > 1:
        return int(compact_at)
    if context_window is None:
        raise ConfigError("compact_at as a fraction needs the context window: set context_window, or serve "
                          "the model from a server that reports it (vLLM's /v1/models gives max_model_len)")
    return int(compact_at * context_window)


def conversation_tokens(prompt_tokens: int, completion_tokens: int, added: list[Message]) -> int:
    """The conversation's size for its next request: the server's count at the last request,
    plus an estimate for what was added since (the REPL's feedback)."""
    return prompt_tokens + completion_tokens + sum(len(str(m.get("content") or "")) for m in added) // CHARS_PER_TOKEN


@dataclass
class Plan:
    """Which messages a compaction replaces, and the conversation it leaves."""

    replaced: list[Message]
    turns: int
    question: Message
    tail: list[Message]

    def apply(self, system: Message, summary: str | None) -> list[Message]:
        text = COMPACTED.format(turns=self.turns, summary=f" A summary of them:\n{summary}" if summary else "")
        merged = {"role": "user", "content": f"{text}\n\n{self.question['content']}"}  # roles still alternate
        return [system, merged, *self.tail]


def plan(messages: list[Message], question: int, keep_turns: int) -> Plan | None:
    """What to replace in `messages` (index `question` is the current question), or None when
    nothing older than the last `keep_turns` turns is left to replace."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > question]
    cut = turns[-keep_turns] if keep_turns and len(turns) > keep_turns else (
        question + 1 if keep_turns else len(messages))
    replaced = messages[1:question] + messages[question + 1 : cut]
    if not any(m["role"] == "assistant" for m in replaced):
        return None
    return Plan(replaced=replaced, turns=sum(m["role"] == "assistant" for m in replaced),
                question=messages[question], tail=messages[cut:])


def render(messages: list[Message]) -> str:
    """Messages as plain text for the summarizing model."""
    return "\n\n".join(f"[{m['role']}]\n{m.get('content') or ''}" for m in messages)


class Compactor:
    """Watches one question's root conversation and compacts it when it grows past the limit."""

    def __init__(self, config: RLMConfig, root: ModelClient) -> None:
        self.config = config
        self.root = root
        self._limit: int | None = None
        #: The server's count of the conversation at the last request (reply included), and
        #: how many messages it counted.
        self._counted: tuple[int, int] | None = None
        self._pending: Compaction | None = None

    def counted(self, run: RunState, completion: Completion, messages: int) -> None:
        """Note the server's count for a request over the first `messages` messages."""
        usage = completion.usage
        tokens = usage.prompt_tokens + usage.completion_tokens
        if not usage.prompt_tokens:  # a server that reports no usage: estimate it all
            tokens = conversation_tokens(0, 0, run.conversation.messages[:messages]) + len(completion.content) // 3
        self._counted = (tokens, messages + 1)
        if self._pending is not None:
            self._pending.tokens_after = usage.prompt_tokens or None
            run.emit(Compacted(turn=self._pending.turn, tokens_before=self._pending.tokens_before,
                               tokens_after=usage.prompt_tokens))
            self._pending = None

    async def maybe_compact(self, run: RunState) -> bool:
        """Compact before the next request if it would pass the limit; whether it did."""
        if self._counted is None:
            return False
        conversation = run.conversation
        tokens, upto = self._counted
        size = conversation_tokens(tokens, 0, conversation.messages[upto:])
        if self._limit is None:
            window = self.config.context_window or await self.root.tokens.context_window()
            self._limit = threshold(self.config.compact_at, window)
        if size < self._limit:
            return False
        chosen = plan(conversation.messages, run.question, self.config.keep_turns)
        if chosen is None:
            return False
        summary, usage = None, TokenUsage()
        if self.config.compaction == "summarize":
            summary, usage = await self._summarize(run, chosen.replaced)
        conversation.messages[:] = chosen.apply(conversation.messages[0], summary)
        run.question = 1
        self._pending = Compaction(turn=run.turn, tokens_before=size, turns_replaced=chosen.turns, summary=summary,
                                   usage=usage, replaced=chosen.replaced)
        run.result.compactions.append(self._pending)
        assert conversation.repl is not None
        await conversation.repl.set_history(conversation.transcript_json())
        return True

    async def _summarize(self, run: RunState, replaced: list[Message]) -> tuple[str, TokenUsage]:
        config = self.config
        client = self.root if not config.summary_model else ModelClient.from_config(
            config.model_copy(update={"model": config.summary_model}), "root")
        try:
            async with run.budget.slot(run.depth):
                completion = await client.complete([{"role": "system", "content": SUMMARY_INSTRUCTION},
                                                    {"role": "user", "content": render(replaced)}])
        finally:
            if client is not self.root:
                await client.close()
        run.result.usage.record("root", run.depth, client.model, completion.usage)
        run.budget.charge(client.model, completion.usage)
        return completion.content, completion.usage
