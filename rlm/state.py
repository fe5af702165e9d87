"""`RunState`: everything one run (one question) holds while it runs, in one place the
controller and the broker share, instead of values threaded through parameters."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .budget import TreeBudget
from .config import RLMConfig
from .conversation import Conversation
from .events import OnEvent, RunEvent
from .trajectory import Result

log = logging.getLogger("rlm")


@dataclass
class RunState:
    """One question at one depth: its settings, its conversation, the record it builds, and where it is."""

    config: RLMConfig
    depth: int
    result: Result
    conversation: Conversation
    #: Shared with every run nested under this one's root.
    budget: TreeBudget
    on_event: OnEvent | None = None
    #: The current turn's index (1-based; 0 before the first).
    turn: int = 0
    #: `answer["content"]` as last read.
    content: str = ""
    #: Whether a batch was refused for budget, and whether the model was told.
    refused: bool = False
    budget_warned: bool = False
    #: Sub-call prompt text kept in the result so far (bounded by `max_recorded_chars`).
    recorded_chars: int = 0
    #: Where the current question is in `conversation.messages`.
    question: int = 0
    #: Set by `Session.interrupt()`: the question ends after the current step.
    interrupted: bool = False

    @classmethod
    def new(cls, config: RLMConfig, conversation: Conversation, *, depth: int = 0, budget: TreeBudget | None = None,
            on_event: OnEvent | None = None) -> RunState:
        """The state of a question about to be asked: a top-level run makes the tree's budget, a
        nested one shares its parent's."""
        return cls(config=config, depth=depth, result=Result(model=config.model, sub_model=config.resolved_sub_model),
                   conversation=conversation, budget=budget or tree_budget(config), on_event=on_event)

    def emit(self, event: RunEvent) -> None:
        """Hand an event of this run to the listener; a listener's failure is logged, never the run's."""
        if self.on_event is None:
            return
        event.depth, event.turn = self.depth, event.turn or self.turn
        try:
            self.on_event(event)
        except Exception:
            log.exception("an on_event listener failed")


def tree_budget(config: RLMConfig) -> TreeBudget:
    return TreeBudget(max_sub_calls=config.max_sub_calls, max_total_tokens=config.max_total_tokens,
                      max_cost=config.max_cost, prices=config.prices, timeout=config.timeout,
                      max_concurrency=config.max_concurrency, max_depth_concurrency=config.max_sub_concurrency)
