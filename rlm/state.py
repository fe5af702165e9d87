"""`RunState`: everything one run holds while it runs, in one place the controller and the
broker share, instead of values threaded through parameters and set from outside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox import Sandbox

from .config import RLMConfig
from .data import DataFile
from .repl import Repl
from .trajectory import Result


@dataclass
class SubCallBudget:
    """Sub-LLM prompts a run may still send; `refused` once a batch was turned away."""

    limit: int | None
    used: int = 0
    refused: bool = False

    def take(self, count: int) -> bool:
        """Spend `count` prompts, or refuse them all (and remember the refusal)."""
        if self.limit is not None and self.used + count > self.limit:
            self.refused = True
            return False
        self.used += count
        return True


@dataclass
class RunState:
    """One run at one depth: its settings, its REPL, the record it builds, and where it is."""

    config: RLMConfig
    depth: int
    result: Result
    data_file: DataFile
    budget: SubCallBudget
    sandbox: Sandbox | None = None
    repl: Repl | None = None
    #: The current turn's index (1-based; 0 before the first).
    turn: int = 0
    #: `answer["content"]` as last read.
    content: str = ""
    #: Whether the model was told the sub-call budget is spent.
    budget_warned: bool = False
    #: Sub-call prompt text kept in the result so far (bounded by `max_recorded_chars`).
    recorded_chars: int = 0

    @classmethod
    def new(cls, config: RLMConfig, data: Any = None, *, depth: int = 0) -> RunState:
        """The state of a run about to start (raises `ConfigError` for data it cannot take)."""
        return cls(config=config, depth=depth, result=Result(model=config.model, sub_model=config.resolved_sub_model),
                   data_file=DataFile(data), budget=SubCallBudget(config.max_sub_calls))
