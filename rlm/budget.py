"""`TreeBudget`: the limits a run shares with every run nested under it, at any depth, held and
enforced on the host: sub-calls, tokens, cost, wall time, and how many model requests are in
flight. Nothing in a REPL can change them: the kernel only ever asks, the broker decides."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

from .trajectory import TokenUsage


class ModelPrice(BaseModel):
    """Dollars per million tokens of one model."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)

    def cost(self, usage: TokenUsage) -> float:
        return (usage.prompt_tokens * self.input + usage.completion_tokens * self.output) / 1e6


class TreeBudget:
    """What a call tree may still spend. One object per top-level run, shared by its children."""

    def __init__(self, *, max_sub_calls: int | None, max_total_tokens: int | None, max_cost: float | None,
                 prices: dict[str, ModelPrice], timeout: float | None, max_concurrency: int,
                 max_depth_concurrency: int) -> None:
        self.max_sub_calls = max_sub_calls
        self.max_total_tokens = max_total_tokens
        self.max_cost = max_cost
        self.prices = prices
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.sub_calls = 0
        self.tokens = 0
        self.cost = 0.0
        self._global = asyncio.Semaphore(max_concurrency)
        self._per_depth = max_depth_concurrency
        self._depth: dict[int, asyncio.Semaphore] = {}
        self.in_flight = 0
        self.peak_in_flight = 0

    def take_sub_calls(self, count: int) -> str | None:
        """Spend `count` sub-call prompts; None when granted, else why not (nothing is spent)."""
        spent = self.spent()
        if spent:
            return spent
        if self.max_sub_calls is not None and self.sub_calls + count > self.max_sub_calls:
            return (f"sub-call budget exhausted: {self.sub_calls} of {self.max_sub_calls} used, "
                    f"{count} more asked; no further llm_batch calls will run")
        self.sub_calls += count
        return None

    def charge(self, model: str, usage: TokenUsage) -> None:
        """Count a completion's tokens, and its cost at the model's price."""
        self.tokens += usage.total_tokens
        price = self.prices.get(model)
        if price is not None:
            self.cost += price.cost(usage)

    def spent(self) -> str | None:
        """Why the tree may spend no more tokens or money, or None."""
        if self.max_total_tokens is not None and self.tokens >= self.max_total_tokens:
            return f"token budget ({self.max_total_tokens:,}) spent: {self.tokens:,} tokens used"
        if self.max_cost is not None and self.cost >= self.max_cost:
            return f"cost budget (${self.max_cost:g}) spent: ${self.cost:.4f} used"
        return None

    def remaining_seconds(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def describe(self, *, whole: bool = False) -> str:
        """What is left, for the model: only the limits that are set. `whole`: the tree's full
        allowance (a top-level system prompt, the same text for the same settings)."""
        left = []
        if self.max_sub_calls is not None:
            left.append(f"{self.max_sub_calls - self.sub_calls:,} sub-calls")
        if self.max_total_tokens is not None:
            left.append(f"{max(0, self.max_total_tokens - self.tokens):,} tokens")
        if self.max_cost is not None:
            left.append(f"${max(0.0, self.max_cost - self.cost):.4f}")
        seconds = self.timeout if whole else self.remaining_seconds()
        if seconds is not None:
            left.append(f"{seconds:.0f} s")
        return ", ".join(left) + " left for the whole call tree" if left else ""

    @contextlib.asynccontextmanager
    async def slot(self, depth: int) -> AsyncIterator[None]:
        """Hold one model request's place: within its depth's limit and the tree's. Held only
        around a request, never while waiting on nested runs, so no parent starves a child."""
        per_depth = self._depth.setdefault(depth, asyncio.Semaphore(self._per_depth))
        async with per_depth, self._global:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
