"""Our environments and our runtime as a `verifiers` plug-in, so `vf-eval` and trainers built on
verifiers (prime-rl) run them: `vf-eval environments --env.taskset.environment oolong ...`.

Verifiers resolves a taskset id to an importable module, so the id is `environments` (this
package); its `__all__` exports the three classes below once verifiers is installed:

- `RLMTaskset`: one of our environments' generated (or loaded) tasks as verifiers tasks, each
  scored by the environment's own reward and metrics.
- `RLMHarness`: our controller run in-process. Every root model call goes to the rollout's
  interception endpoint, so verifiers records (and, with its train client, tokenizes) each turn.
  Sub-LLM calls go straight to the model server unless `include_sub_calls` is set, the way
  verifiers' own RLM flag keeps sub-agent turns out of the trained graph.
- `RLMEnv`: the single-agent env with our harness on the `subprocess` runtime by default: our
  harness brings its own sandbox, so verifiers need not boot a container for it.
"""

from __future__ import annotations

from typing import Any

import verifiers.v1 as vf
from pydantic import Field
from verifiers.v1.configs.client import resolve_api_key

import rlm

from .base import Environment, Task
from .harness import environment_class


class RLMTaskData(vf.TaskData):
    """A task of one of our environments, on the wire: the REPL's data travels with it."""

    environment: str
    environment_options: dict[str, Any] = Field(default_factory=dict)
    task_id: str
    data: Any = None
    expected: Any = None
    info: dict[str, Any] = Field(default_factory=dict)

    def make_environment(self) -> Environment:
        return environment_class(self.environment)(**self.environment_options)

    def to_task(self) -> Task:
        return Task(id=self.task_id, prompt=self.prompt_text, data=self.data, expected=self.expected,
                    info=self.info)


class RLMTask(vf.Task[RLMTaskData]):
    """Scored by the environment's own `ascore` on the answer the harness recorded."""

    def __init__(self, data: RLMTaskData, config: vf.TaskConfig | None = None) -> None:
        super().__init__(data, config)
        self.environment = data.make_environment()

    @property
    def key(self) -> str:
        return f"{self.data.environment}/{self.data.task_id}"

    @vf.reward
    async def reward(self, trace: vf.Trace) -> float:
        # root_reply as recorded: `last_reply` strips it, and a verbatim copy may begin with a newline.
        answer = trace.root_reply if trace.root_reply is not None else trace.last_reply
        score = await self.environment.ascore(self.data.to_task(), answer)
        trace.record_metrics(score.metrics)
        return score.reward


class RLMTasksetConfig(vf.TasksetConfig):
    environment: str = "oolong"
    """Which of our environments: deepdive, oolong, verbatim_copy, math_python, niah."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Constructor options of that environment, e.g. `{"context_tokens": 8000}` for oolong."""
    n: int = Field(20, ge=1)
    """How many generated tasks (ignored with `path`)."""
    seed: int = 0
    path: str | None = None
    """A local file in the environment's published format, read instead of generating."""


class RLMTaskset(vf.Taskset[RLMTask, RLMTasksetConfig]):
    def load(self) -> list[RLMTask]:
        environment = environment_class(self.config.environment)(**self.config.options)
        tasks = environment.load(self.config.path) if self.config.path else environment.generate(
            self.config.n, self.config.seed)
        return [
            RLMTask(RLMTaskData(environment=environment.name, environment_options=self.config.options,
                                task_id=task.id, name=task.id, prompt=task.prompt, data=task.data,
                                expected=task.expected, info=task.info), self.config.task)
            for task in tasks
        ]


class RLMHarnessConfig(vf.HarnessConfig):
    id: str = "environments"
    mode: rlm.Mode = "rlm"
    """`llm`: the data inline, one completion; `rlm`; `rlm+tips`: with the environment's tips."""
    include_sub_calls: bool = False
    """Send sub-LLM calls through the interception too, so they enter the trace (and training)."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Any other `RLMConfig` fields: sandbox, max_turns, max_sub_calls, timeout..."""


class RLMHarness(vf.Harness[RLMHarnessConfig]):
    """Runs our controller in-process; its sandbox is its own, so the runtime stays unused.
    A taskset system prompt (`--env.taskset.system-prompt FILE`, e.g. from GEPA) joins the tips."""

    APPENDS_SYSTEM_PROMPT = True
    EXECUTES_CODE = True
    NEEDS_CONTAINER = False

    async def launch(self, ctx: vf.ModelContext, trace: vf.Trace, runtime: vf.Runtime, endpoint: str,
                     secret: str, mcp_urls: dict[str, str], data: RLMTaskData) -> vf.ProgramResult:
        environment = data.make_environment()
        task = data.to_task()
        sub = {} if self.config.include_sub_calls else {
            "sub_base_url": ctx.client.base_url, "sub_api_key": resolve_api_key(ctx.client)}
        config = rlm.RLMConfig(**{**self.config.settings, "model": ctx.model, "base_url": endpoint, "api_key": secret,
                                  **sub, "tips": data.system_prompt or None})
        # The reward is verifiers' to compute (RLMTask.reward), on the answer recorded below.
        result = await rlm.solve_task(environment, task, self.config.mode, config)
        record(trace, result, counted_in_trace=not sub)
        if result.status == "error":
            return vf.ProgramResult(exit_code=1, stdout="", stderr=result.error or "rlm run failed")
        return vf.ProgramResult(exit_code=0, stdout=result.answer, stderr="")


def record(trace: vf.Trace, result: rlm.Result, counted_in_trace: bool) -> None:
    """Our result onto the verifiers trace: the answer, the budget that stopped the run, counts,
    and the sub-LLM usage that bypassed the interception."""
    trace.root_reply = result.answer
    trace.info["rlm"] = {"status": result.status, "error": result.error, "turns": len(result.turns),
                         "sub_calls": len(result.sub_calls), "timings": result.timings.model_dump()}
    trace.record_metrics({"turns": len(result.turns), "sub_calls": len(result.sub_calls)})
    if result.status not in ("ready", "error"):
        trace.stop(result.status)
    if not counted_in_trace and result.usage.sub.total_tokens:
        trace.extra_usage.append(vf.Usage(prompt_tokens=result.usage.sub.prompt_tokens,
                                          completion_tokens=result.usage.sub.completion_tokens))


class RLMEnvConfig(vf.SingleAgentEnvConfig):
    agent: vf.AgentConfig = vf.AgentConfig(runtime=vf.SubprocessConfig(), harness=RLMHarnessConfig())


class RLMEnv(vf.Env[RLMEnvConfig]):
    """The single-agent env, with our harness and no container by default."""

    async def run(self, task: vf.Task, agents: vf.Agents) -> None:
        await agents.agent.run(task)


__all__ = ["RLMEnv", "RLMHarness", "RLMTaskset"]
