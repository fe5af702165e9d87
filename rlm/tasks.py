"""One recipe for "run a task of an environment in a mode, then score it", shared by the
evaluation harness, the training rollouts and the verifiers adapter.

Modes: `llm` (the data inline, one completion), `rlm`, and `rlm+tips` (the environment's tips
added to the system prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from sandbox import SandboxPool

from .config import RLMConfig
from .controller import Controller
from .errors import ModelError
from .models import ModelClient
from .trajectory import Result

Mode = Literal["llm", "rlm", "rlm+tips"]
MODES: tuple[Mode, ...] = get_args(Mode)


class TaskLike(Protocol):
    """What a run needs of a task (`environments.Task` fits)."""

    id: str
    prompt: str
    data: Any


class ScoreLike(Protocol):
    reward: float
    metrics: Mapping[str, float]


class EnvironmentLike(Protocol):
    """What a run needs of an environment (`environments.Environment` fits)."""

    tips: str

    async def ascore(self, task: Any, answer: str) -> Any: ...

    def sub_tools(self, task: Any) -> list[Callable[..., Any]]: ...

    def llm_prompt(self, task: Any) -> str: ...


@dataclass
class TaskRun:
    """A scored run of one task."""

    result: Result
    reward: float
    metrics: dict[str, float]


def task_config(config: RLMConfig, env: EnvironmentLike, task: TaskLike, mode: Mode) -> RLMConfig:
    """`config` for one task: the environment's sub-tools, and its tips in `rlm+tips` (joined to
    any tips the config has, e.g. a system prompt an optimizer wrote)."""
    tips = "\n\n".join(filter(None, [env.tips if mode == "rlm+tips" else None, config.tips])) or None
    return config.model_copy(update={"tips": tips, "sub_tools": [*config.sub_tools, *env.sub_tools(task)]})


async def complete_once(prompt: str, config: RLMConfig) -> Result:
    """The plain-LLM mode: one completion of `prompt` by the root model, as a `Result`; a model
    failure (a context overflow too) is recorded, not raised."""
    client = ModelClient.from_config(config)
    result = Result(model=client.model, sub_model=client.model, messages=[{"role": "user", "content": prompt}])
    started = time.monotonic()
    try:
        completion = await client.complete(result.messages)
    except ModelError as exc:
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
    else:
        result.answer, result.status = completion.content, "ready"
        result.usage.record("root", 0, client.model, completion.usage)
        result.messages.append(completion.as_message())
        result.timings.model = completion.latency
    finally:
        await client.close()
    result.timings.total = time.monotonic() - started
    return result


async def solve_task(env: EnvironmentLike, task: TaskLike, mode: Mode, config: RLMConfig, *,
                     pool: SandboxPool | None = None) -> Result:
    """Run `task` in `mode`, unscored (for callers whose framework scores, such as verifiers)."""
    if mode == "llm":
        return await complete_once(env.llm_prompt(task), config)
    return await Controller(task_config(config, env, task, mode)).run(task.prompt, task.data, pool=pool)


async def run_task(env: EnvironmentLike, task: TaskLike, mode: Mode, config: RLMConfig, *,
                   pool: SandboxPool | None = None) -> TaskRun:
    """Run `task` in `mode` and score its answer with the environment's own reward."""
    result = await solve_task(env, task, mode, config, pool=pool)
    score = await env.ascore(task, result.answer)
    return TaskRun(result=result, reward=score.reward, metrics=dict(score.metrics))
