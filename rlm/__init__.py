"""Recursive Language Models: a root LLM works in a sandboxed Python REPL that holds the data,
fans sub-LLM calls out with `llm_batch`, and finishes by setting `answer["ready"]`.

    import rlm
    result = rlm.run("How many lines mention a timeout?", data=text, model="qwen3-8b",
                     base_url="http://127.0.0.1:8000/v1")
    print(result.answer, result.status, result.usage)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sandbox import Backend, SandboxError, SandboxPool

from .budget import ModelPrice, TreeBudget
from .cluster import ClusterRollouts, RayNode, RayWorkers, ServerURL, WorkerContext
from .config import RLMConfig
from .controller import Controller
from .errors import BudgetExhausted, ConfigError, ContextLengthExceeded, ModelError, RLMError, ServerStartError
from .events import CodeRan, Compacted, Finished, ModelReplied, OnEvent, RunEvent, SubCallDone, TurnStarted, stream
from .models import Completion, ModelClient
from .serving import LlamaCppServer, ManagedServer, VLLMServer
from .session import Session
from .tasks import MODES, Mode, TaskRun, complete_once, run_task, solve_task, task_config
from .training import (
    Sample,
    TrainingRollout,
    TrainingRow,
    rollout,
    rollout_group,
    run_rollout,
    to_samples,
    training_config,
    training_rows,
    with_advantages,
)
from .trajectory import Compaction, Event, Result, Status, SubCall, Timings, TokenUsage, Turn, TurnErrorKind, Usage

__version__ = "0.1.0"


class RLM:
    """A reusable configuration: `RLM(RLMConfig(model=...)).run(prompt, data)`."""

    def __init__(self, config: RLMConfig | None = None, **settings: Any) -> None:
        self.config = config.model_copy(update=settings) if config else RLMConfig(**settings)

    async def arun(self, prompt: str, data: Any = None, *, pool: SandboxPool | None = None,
                   on_event: OnEvent | None = None) -> Result:
        """Run one RLM rollout over `data` (in a sandbox from `pool`, when given; `on_event`
        gets its events as they happen)."""
        return await Controller(self.config).run(prompt, data, pool=pool, on_event=on_event)

    def events(self, prompt: str, data: Any = None, *, pool: SandboxPool | None = None) -> AsyncIterator[RunEvent]:
        """The rollout's events as they happen, ending with `Finished` (which holds the Result)."""
        return stream(lambda on_event: self.arun(prompt, data, pool=pool, on_event=on_event))

    def run(self, prompt: str, data: Any = None) -> Result:
        """`arun` for synchronous code (starts its own event loop)."""
        return asyncio.run(self.arun(prompt, data))


def _config(model: str | None, base_url: str | None, api_key: str | None, sub_model: str | None,
            sandbox: Backend, limits: dict[str, Any]) -> RLMConfig:
    given = {"model": model, "base_url": base_url, "api_key": api_key, "sub_model": sub_model}
    return RLMConfig(sandbox=sandbox, **{k: v for k, v in given.items() if v is not None}, **limits)


async def arun(
    prompt: str, data: Any = None, *, model: str | None = None, base_url: str | None = None,
    api_key: str | None = None, sub_model: str | None = None, sandbox: Backend = "local",
    pool: SandboxPool | None = None, on_event: OnEvent | None = None, **limits: Any,
) -> Result:
    """Run an RLM over `data`; `limits` are any other `RLMConfig` fields (max_turns, timeout...).
    A bad setting raises `ConfigError`; everything that fails once the run starts is in the result."""
    runner = RLM(_config(model, base_url, api_key, sub_model, sandbox, limits))
    return await runner.arun(prompt, data, pool=pool, on_event=on_event)


def arun_events(
    prompt: str, data: Any = None, *, model: str | None = None, base_url: str | None = None,
    api_key: str | None = None, sub_model: str | None = None, sandbox: Backend = "local",
    pool: SandboxPool | None = None, **limits: Any,
) -> AsyncIterator[RunEvent]:
    """`arun` as a stream of typed events, ending with `Finished` (which holds the Result):
    `async for event in rlm.arun_events(prompt, data, model=...)`."""
    return RLM(_config(model, base_url, api_key, sub_model, sandbox, limits)).events(prompt, data, pool=pool)


def run(
    prompt: str, data: Any = None, *, model: str | None = None, base_url: str | None = None,
    api_key: str | None = None, sub_model: str | None = None, sandbox: Backend = "local", **limits: Any,
) -> Result:
    """Synchronous `arun`."""
    return asyncio.run(arun(prompt, data, model=model, base_url=base_url, api_key=api_key,
                            sub_model=sub_model, sandbox=sandbox, **limits))


__all__ = [
    "MODES",
    "RLM",
    "Backend",
    "BudgetExhausted",
    "ClusterRollouts",
    "CodeRan",
    "Compacted",
    "Compaction",
    "Completion",
    "ConfigError",
    "ContextLengthExceeded",
    "Event",
    "Finished",
    "LlamaCppServer",
    "ManagedServer",
    "Mode",
    "ModelClient",
    "ModelError",
    "ModelPrice",
    "ModelReplied",
    "OnEvent",
    "RLMConfig",
    "RLMError",
    "RayNode",
    "RayWorkers",
    "Result",
    "RunEvent",
    "Sample",
    "SandboxError",
    "SandboxPool",
    "ServerStartError",
    "ServerURL",
    "Session",
    "Status",
    "SubCall",
    "SubCallDone",
    "TaskRun",
    "Timings",
    "TokenUsage",
    "TrainingRollout",
    "TrainingRow",
    "TreeBudget",
    "Turn",
    "TurnErrorKind",
    "TurnStarted",
    "Usage",
    "VLLMServer",
    "WorkerContext",
    "arun",
    "arun_events",
    "complete_once",
    "rollout",
    "rollout_group",
    "run",
    "run_rollout",
    "run_task",
    "solve_task",
    "task_config",
    "to_samples",
    "training_config",
    "training_rows",
    "with_advantages",
]
