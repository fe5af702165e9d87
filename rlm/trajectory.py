"""The typed record of a run: turns, sub-calls, token usage and the final `Result`.

Everything here is pydantic and round-trips through JSON, so a result saved by `rlm run --json`
loads back with `Result.model_validate_json`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: Why a run ended.
Status = Literal["ready", "max_turns", "timeout", "budget", "error", "interrupted"]
#: What went wrong in a turn: no code to run, an exception in the code, a timeout, a kernel crash.
TurnErrorKind = Literal["no_code", "exception", "timeout", "crash"]


class TokenUsage(BaseModel):
    """Tokens as the server reported them, summed over `calls` completions."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: TokenUsage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls


class Usage(BaseModel):
    """Usage per role (`root`: the model driving the REPL; `sub`: every llm_batch call at any
    depth, nested runs included), per depth (0 is the root) and per model name."""

    root: TokenUsage = Field(default_factory=TokenUsage)
    sub: TokenUsage = Field(default_factory=TokenUsage)
    by_depth: dict[int, TokenUsage] = Field(default_factory=dict)
    by_model: dict[str, TokenUsage] = Field(default_factory=dict)

    def record(self, role: Literal["root", "sub"], depth: int, model: str, usage: TokenUsage) -> None:
        getattr(self, role).add(usage)
        self.by_depth.setdefault(depth, TokenUsage()).add(usage)
        self.by_model.setdefault(model, TokenUsage()).add(usage)

    def merge_child(self, child: Usage) -> None:
        """Fold a nested run's usage in: all of it counts as sub usage of this run.
        Depths are absolute (a nested run records its own root at its depth), so they add as is."""
        self.sub.add(child.root)
        self.sub.add(child.sub)
        for depth, usage in child.by_depth.items():
            self.by_depth.setdefault(depth, TokenUsage()).add(usage)
        for model, usage in child.by_model.items():
            self.by_model.setdefault(model, TokenUsage()).add(usage)


class Event(BaseModel):
    """Something the run's limits did to a turn: what was cut, refused or restarted, and why."""

    kind: Literal["answer_cut", "output_dropped", "kernel_restarted", "state_unreadable", "request_refused"]
    detail: str


class Turn(BaseModel):
    """One root-model step: its reply, the code it ran and what the REPL gave back."""

    index: int
    assistant: str
    code: list[str] = Field(default_factory=list)
    output: str = ""
    #: What went wrong, for people: the exception's name, "timeout", the crash, "no code".
    error: str | None = None
    #: What went wrong, for code.
    error_kind: TurnErrorKind | None = None
    timed_out: bool = False
    restarted: bool = False
    chars_cut: int = 0
    #: `answer["content"]` after this turn when the turn changed it; None when unchanged.
    answer: str | None = None
    events: list[Event] = Field(default_factory=list)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    tokens: list[str] | None = None
    logprobs: list[float] | None = None
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    model_seconds: float = 0.0
    exec_seconds: float = 0.0
    duration: float = 0.0
    #: Whether the conversation was compacted just before this turn (a training sequence ends).
    compacted: bool = False


class SubCall(BaseModel):
    """One prompt of an llm_batch: a plain completion (depth 1) or a nested RLM run (deeper)."""

    turn: int
    depth: int
    prompt: str
    completion: str = ""
    usage: TokenUsage = Field(default_factory=TokenUsage)
    latency: float = 0.0
    tool_calls: int = 0
    error: str | None = None
    child: Result | None = None


class FunctionCall(BaseModel):
    """One call of a `repl_functions` function from the REPL, run on the host."""

    turn: int
    depth: int
    function: str
    arguments: str  # JSON, its head
    result: str = ""  # JSON, its head
    error: str | None = None
    latency: float = 0.0


class Compaction(BaseModel):
    """Older turns of the root conversation replaced by a summary (or dropped), before `turn`."""

    turn: int
    #: The conversation's size when it was compacted (the server's count plus an estimate of
    #: what came since), and the server's count of the next request, once it is made.
    tokens_before: int
    tokens_after: int | None = None
    turns_replaced: int
    summary: str | None = None
    #: The summarizing call's tokens (none for `compaction="drop"`).
    usage: TokenUsage = Field(default_factory=TokenUsage)
    replaced: list[dict[str, Any]] = Field(default_factory=list)


class Timings(BaseModel):
    total: float = 0.0
    sandbox_start: float = 0.0
    model: float = 0.0
    execution: float = 0.0


class Result(BaseModel):
    """What `rlm.run` returns: the answer, why the run ended, and the whole trajectory."""

    answer: str = ""
    status: Status = "error"
    error: str | None = None
    turns: list[Turn] = Field(default_factory=list)
    sub_calls: list[SubCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    model: str = ""
    sub_model: str = ""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    compactions: list[Compaction] = Field(default_factory=list)
    function_calls: list[FunctionCall] = Field(default_factory=list)

    def summary(self) -> str:
        """One line: status, turns, sub-calls, tokens per role, seconds."""
        u = self.usage
        return (
            f"{self.status} · {len(self.turns)} turns · {len(self.sub_calls)} sub-calls · "
            f"root {u.root.prompt_tokens}+{u.root.completion_tokens} tok · "
            f"sub {u.sub.prompt_tokens}+{u.sub.completion_tokens} tok · {self.timings.total:.1f}s"
        )


SubCall.model_rebuild()
