"""The evaluation harness: rollouts of environments × modes in parallel, one JSONL line per
rollout, a saved trajectory each, resume from a partial run, and a closing summary table.

Modes: `llm` (the data inline, one completion), `rlm`, and `rlm+tips` (the environment's tips
added to the system prompt).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import rlm
from rlm.errors import ModelError
from rlm.config import RLMConfig
from rlm.models import ModelClient
from rlm.trajectory import Result, TokenUsage
from sandbox import SandboxPool

from .base import Environment, Task

MODES = ("llm", "rlm", "rlm+tips")


class Rollout(BaseModel):
    """One line of results.jsonl."""

    task_id: str
    environment: str
    mode: str
    reward: float
    metrics: dict[str, float] = Field(default_factory=dict)
    status: str
    error: str | None = None
    answer: str = ""
    root_usage: TokenUsage
    sub_usage: TokenUsage
    turns: int
    seconds: float
    trajectory: str


class Row(BaseModel):
    """One environment × mode of the summary."""

    environment: str
    mode: str
    rollouts: int
    reward_mean: float
    reward_stderr: float
    root_tokens: float
    sub_tokens: float
    turns: float
    seconds: float
    failures: int


class Summary(BaseModel):
    rows: list[Row]
    results_path: str

    def table(self) -> str:
        head = (f"{'environment':14} {'mode':9} {'n':>4} {'reward':>15} {'root tok':>10} {'sub tok':>10} "
                f"{'turns':>6} {'sec':>7} {'fail':>5}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.environment:14} {r.mode:9} {r.rollouts:4d} {r.reward_mean:7.3f} ± {r.reward_stderr:5.3f} "
                f"{r.root_tokens:10.0f} {r.sub_tokens:10.0f} {r.turns:6.1f} {r.seconds:7.1f} {r.failures:5d}"
            )
        return "\n".join(lines)


def environment_class(name: str) -> type[Environment]:
    from . import ENVIRONMENTS

    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; choose from {', '.join(ENVIRONMENTS)}") from None


def resolve(environment: Environment | str) -> Environment:
    return environment if isinstance(environment, Environment) else environment_class(environment)()


def _done(path: Path) -> dict[tuple[str, str, str], Rollout]:
    """Rollouts already in a results file (a partial run), keyed by (environment, mode, task)."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rollout = Rollout.model_validate_json(line)
            except ValueError:
                continue  # a line cut short by an interrupted run
            done[(rollout.environment, rollout.mode, rollout.task_id)] = rollout
    return done


class _Progress:
    """One status line on stderr: rollouts done, running mean reward, failures, elapsed time."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.done = self.failures = 0
        self.reward = 0.0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, rollout: Rollout) -> None:
        self.done += 1
        self.reward += rollout.reward
        self.failures += rollout.status == "error"
        if not self.enabled:
            return
        width = 24
        filled = width * self.done // max(1, self.total)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"mean reward {self.reward / self.done:.3f} · failures {self.failures} · "
                f"{time.monotonic() - self.started:.0f}s")
        if self.tty:
            print("\r" + line, end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)
        elif self.done == self.total or self.done % max(1, self.total // 20) == 0:
            print(line, file=sys.stderr, flush=True)


async def llm_rollout(env: Environment, task: Task, client: ModelClient) -> Result:
    """The plain-LLM mode: one completion with the data in the prompt."""
    prompt = env.llm_prompt(task)
    result = Result(model=client.model, sub_model=client.model,
                    messages=[{"role": "user", "content": prompt}])
    started = time.monotonic()
    try:
        completion = await client.complete(result.messages)
    except ModelError as exc:  # a context overflow is recorded as such, not raised
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
    else:
        result.answer, result.status = completion.content, "ready"
        result.usage.record("root", 0, client.model, completion.usage)
        result.messages.append(completion.as_message())
        result.timings.model = completion.latency
    result.timings.total = time.monotonic() - started
    return result


async def evaluate(
    environments: Sequence[Environment | str],
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    modes: Sequence[str] = MODES,
    n: int = 50,
    seed: int = 0,
    concurrency: int = 16,
    out: str | Path = "results",
    tasks: dict[str, list[Task]] | None = None,
    progress: bool = True,
    pool_size: int = 0,
    **settings: Any,
) -> Summary:
    """Run every environment in every mode on `n` generated tasks (or the given `tasks` per
    environment name), `concurrency` rollouts at a time. `settings` go to `rlm.arun`;
    `pool_size` > 0 keeps that many sandboxes warm for the rlm modes."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    envs = [resolve(e) for e in environments]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = _done(results_path)
    jobs = [
        (env, mode, task)
        for env in envs
        for task in (tasks or {}).get(env.name) or env.generate(n, seed)
        for mode in modes
    ]
    todo = [job for job in jobs if (job[0].name, job[1], job[2].id) not in done]
    progress_line = _Progress(len(todo), progress)
    limit = asyncio.Semaphore(concurrency)
    write_lock = asyncio.Lock()
    # The llm mode's client is the rlm modes' root client: same endpoint, retries and sampling.
    client = ModelClient.from_config(RLMConfig(model=model, base_url=base_url, api_key=api_key, **settings))

    async def one(env: Environment, mode: str, task: Task) -> Rollout:
        async with limit:
            started = time.monotonic()
            if mode == "llm":
                result = await llm_rollout(env, task, client)
            else:
                result = await rlm.arun(
                    task.prompt, task.data, model=model, base_url=base_url, api_key=api_key,
                    tips=env.tips if mode == "rlm+tips" else None, sub_tools=env.sub_tools(task), **settings,
                )
            score = await env.ascore(task, result.answer)
            trajectory = out / "trajectories" / env.name / mode / f"{task.id}.json"
            trajectory.parent.mkdir(parents=True, exist_ok=True)
            trajectory.write_text(result.model_dump_json())
            rollout = Rollout(
                task_id=task.id, environment=env.name, mode=mode, reward=score.reward, metrics=score.metrics,
                status=result.status, error=result.error, answer=result.answer[:2000],
                root_usage=result.usage.root, sub_usage=result.usage.sub, turns=len(result.turns),
                seconds=time.monotonic() - started, trajectory=str(trajectory.relative_to(out)),
            )
        async with write_lock:
            with results_path.open("a") as f:
                f.write(rollout.model_dump_json() + "\n")
            progress_line.update(rollout)
        return rollout

    pool = None
    if pool_size and any(mode != "llm" for _, mode, _ in todo):
        pool = await SandboxPool(settings.get("sandbox", "local"), pool_size,
                                 **settings.get("sandbox_options", {})).start()
        settings["pool"] = pool
    try:
        finished = await asyncio.gather(*(one(*job) for job in todo))
    finally:
        await client.close()
        if pool is not None:
            await pool.close()
    everything = list(done.values()) + list(finished)
    wanted = {(env.name, mode, task.id) for env, mode, task in jobs}
    summary = Summary(rows=summarize([r for r in everything if (r.environment, r.mode, r.task_id) in wanted]),
                      results_path=str(results_path))
    (out / "summary.json").write_text(summary.model_dump_json(indent=2))
    return summary


def summarize(rollouts: list[Rollout]) -> list[Row]:
    groups: dict[tuple[str, str], list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault((r.environment, r.mode), []).append(r)
    rows = []
    for (env, mode), group in groups.items():
        count = len(group)
        rewards = [r.reward for r in group]
        mean = sum(rewards) / count
        variance = sum((x - mean) ** 2 for x in rewards) / (count - 1) if count > 1 else 0.0
        rows.append(Row(
            environment=env, mode=mode, rollouts=count, reward_mean=mean, reward_stderr=math.sqrt(variance / count),
            root_tokens=sum(r.root_usage.total_tokens for r in group) / count,
            sub_tokens=sum(r.sub_usage.total_tokens for r in group) / count,
            turns=sum(r.turns for r in group) / count, seconds=sum(r.seconds for r in group) / count,
            failures=sum(r.status == "error" for r in group),
        ))
    order = {m: i for i, m in enumerate(MODES)}
    return sorted(rows, key=lambda row: (row.environment, order.get(row.mode, 99)))
