"""Rollouts as RL training data: token ids, a loss mask over model-generated tokens only, the
sampler's logprobs, the environment's reward; grouped rollouts with GRPO-style advantages.

Token ids come from the server: vLLM returns them with `extra_body={"return_token_ids": True}`
(prompt ids and completion ids per request). Turns are merged into one sequence while the chat
template allows it (turn k+1's prompt ids begin with turn k's prompt and completion ids);
where a template re-renders history (e.g. drops earlier reasoning), and after a compaction, a
new sequence starts, so no token is ever trained on under a context the model did not see.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from pydantic import BaseModel, Field

from sandbox import SandboxPool

from .config import RLMConfig
from .errors import RLMError
from .tasks import EnvironmentLike, TaskLike, run_task
from .trajectory import Result


class Sample(BaseModel):
    """One sequence to train on. `loss_mask` is 1 on tokens the model sampled, 0 on prompt,
    system and REPL-output tokens; `logprobs` are the sampler's (0 where masked)."""

    input_ids: list[int] = Field(default_factory=list)
    loss_mask: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list)

    @property
    def prompt_length(self) -> int:
        """Tokens before the first sampled one: the prompt, for trainers that split prompt from completion."""
        return self.loss_mask.index(1) if 1 in self.loss_mask else len(self.loss_mask)


class TrainingRollout(BaseModel):
    task_id: str
    seed: int | None = None
    reward: float
    metrics: dict[str, float] = Field(default_factory=dict)
    advantage: float = 0.0
    samples: list[Sample]
    result: Result


def to_samples(result: Result) -> list[Sample]:
    """The root trajectory as token sequences with loss masks (see the module docstring)."""
    samples: list[Sample] = []
    current: Sample | None = None
    for turn in result.turns:
        if turn.prompt_ids is None or turn.completion_ids is None:
            raise RLMError(f"turn {turn.index} has no token ids: the server must return them "
                           "(vLLM: extra_body={'return_token_ids': True})")
        completion = turn.completion_ids
        logprobs = turn.logprobs if turn.logprobs and len(turn.logprobs) == len(completion) else [0.0] * len(completion)
        extends = current is not None and turn.prompt_ids[: len(current.input_ids)] == current.input_ids
        if current is not None and extends and not turn.compacted:
            added = turn.prompt_ids[len(current.input_ids):]  # the REPL's feedback: not trained on
        else:
            current, added = Sample(), turn.prompt_ids
            samples.append(current)
        current.input_ids += added + completion
        current.loss_mask += [0] * len(added) + [1] * len(completion)
        current.logprobs += [0.0] * len(added) + list(logprobs)
    return samples


class TrainingRow(Sample):
    """One sequence of a training batch with what a policy-gradient loss needs beside its tokens:
    its rollout's advantage, plus the reward, task and seed it came from."""

    task_id: str
    seed: int | None = None
    reward: float
    advantage: float


def training_config(model: str, base_url: str | None = None, **settings: Any) -> RLMConfig:
    """The config of a training rollout: token ids and logprobs requested from the server."""
    extra_body = {"return_token_ids": True, **settings.pop("extra_body", {})}
    return RLMConfig(model=model, base_url=base_url, logprobs=True, extra_body=extra_body, **settings)


async def run_rollout(env: EnvironmentLike, task: TaskLike, config: RLMConfig, *, seed: int | None = None,
                      tips: bool = False, include_sub_calls: bool = False,
                      pool: SandboxPool | None = None) -> TrainingRollout:
    """One RLM rollout of `task` under a `training_config`, scored by `env`, as training data."""
    if seed is not None:
        config = config.model_copy(update={"extra_body": {**config.extra_body, "seed": seed}})
    run = await run_task(env, task, "rlm+tips" if tips else "rlm", config, pool=pool)
    result = run.result
    samples = to_samples(result)
    if not include_sub_calls:  # sub-LLM trajectories are off by default, as in verifiers
        result = result.model_copy(update={"sub_calls": []})
    return TrainingRollout(task_id=task.id, seed=seed, reward=run.reward, metrics=run.metrics,
                           samples=samples, result=result)


async def rollout(
    env: EnvironmentLike, task: TaskLike, *, model: str, base_url: str | None = None, seed: int | None = None,
    tips: bool = False, include_sub_calls: bool = False, pool: SandboxPool | None = None, **settings: Any,
) -> TrainingRollout:
    """One RLM rollout of `task`, scored by `env`, as training data (in a sandbox from `pool`, when given)."""
    return await run_rollout(env, task, training_config(model, base_url, **settings), seed=seed, tips=tips,
                             include_sub_calls=include_sub_calls, pool=pool)


async def rollout_group(env: EnvironmentLike, task: TaskLike, n: int, *, seed: int = 0,
                        **kwargs: Any) -> list[TrainingRollout]:
    """`n` rollouts of one task (seeds seed..seed+n-1) with advantages (reward - mean) / std."""
    group = await asyncio.gather(*(rollout(env, task, seed=seed + i, **kwargs) for i in range(n)))
    return with_advantages(list(group))


def with_advantages(group: list[TrainingRollout]) -> list[TrainingRollout]:
    """The rollouts of one task's group, each given its GRPO advantage (reward - mean) / std."""
    rewards = [r.reward for r in group]
    mean, spread = statistics.fmean(rewards), statistics.pstdev(rewards)
    for r in group:
        r.advantage = (r.reward - mean) / (spread + 1e-6)
    return group


def training_rows(groups: list[list[TrainingRollout]]) -> list[TrainingRow]:
    """Every sequence of every rollout of `groups`, in order, as rows a trainer's loss takes."""
    return [TrainingRow(**sample.model_dump(), task_id=r.task_id, seed=r.seed, reward=r.reward,
                        advantage=r.advantage)
            for group in groups for r in group for sample in r.samples]
