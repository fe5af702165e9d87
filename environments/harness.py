"""The evaluation harness: rollouts of environments × modes (× repeats) in parallel, one JSONL
line per rollout, a saved trajectory each, resume from a partial run, and a closing summary table.

Each rollout is `rlm.run_task` (the recipe training and the verifiers adapter use too); this
module only plans the work, owns the shared resources, records and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import rlm

from .base import Environment, Task
from .results import Key, Prices, ResultsFile, Rollout, Summary, check_priced, summarize


def environment_class(name: str) -> type[Environment]:
    from . import ENVIRONMENTS

    try:
        return ENVIRONMENTS[name]
    except KeyError:
        raise rlm.ConfigError(f"unknown environment {name!r}; choose from {', '.join(ENVIRONMENTS)}") from None


def resolve(environment: Environment | str) -> Environment:
    return environment if isinstance(environment, Environment) else environment_class(environment)()


@dataclass(frozen=True)
class Job:
    """One rollout to run."""

    env: Environment
    mode: rlm.Mode
    task: Task
    repeat: int = 0

    @property
    def key(self) -> Key:
        return (self.env.name, self.mode, self.task.id, self.repeat)

    @property
    def trajectory(self) -> Path:
        """Where its trajectory goes, under the output directory; a first repeat keeps the name
        runs from before --repeats used, so their resumed trajectories stay where they were."""
        name = self.task.id if self.repeat == 0 else f"{self.task.id}.repeat{self.repeat}"
        return Path("trajectories") / self.env.name / self.mode / f"{name}.json"


def plan(envs: Sequence[Environment], modes: Sequence[rlm.Mode], n: int, seed: int,
         tasks: dict[str, list[Task]] | None = None, repeats: int = 1) -> list[Job]:
    """Every environment × task × mode, `repeats` times: `n` generated tasks, or the given ones
    per environment."""
    return [Job(env, mode, task, repeat) for env in envs
            for task in (tasks or {}).get(env.name) or env.generate(n, seed)
            for repeat in range(repeats) for mode in modes]


class EvalProgress:
    """Progress on stderr: rollouts done, running mean reward, failures, elapsed time. A live bar
    on a terminal; elsewhere (CI logs, pipes) one plain line per finished rollout, which a live
    bar would not leave behind."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.done = self.failures = 0
        self.reward = 0.0
        self._console = Console(stderr=True)
        self._lines = enabled and not self._console.is_terminal
        self._started = time.monotonic()
        self._bar = Progress(
            TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
            TextColumn("mean reward {task.fields[mean]:.3f} · failures {task.fields[failures]}"),
            TimeElapsedColumn(), console=self._console, disable=not enabled or self._lines,
        )
        self._task = self._bar.add_task("eval", total=total, mean=0.0, failures=0)

    def __enter__(self) -> EvalProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, rollout: Rollout) -> None:
        self.done += 1
        self.reward += rollout.reward
        self.failures += rollout.status == "error"
        mean = self.reward / self.done
        self._bar.update(self._task, advance=1, mean=mean, failures=self.failures)
        if self._lines:
            filled = self.WIDTH * self.done // max(1, self.total)
            print(f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} mean reward {mean:.3f} · "
                  f"failures {self.failures} · {time.monotonic() - self._started:.0f}s", file=sys.stderr, flush=True)


async def evaluate(
    environments: Sequence[Environment | str],
    *,
    model: str,
    base_url: rlm.ServerURL | None = None,
    api_key: str | None = None,
    modes: Sequence[rlm.Mode] = rlm.MODES,
    n: int = 50,
    repeats: int = 1,
    seed: int = 0,
    concurrency: int = 16,
    out: str | Path = "results",
    tasks: dict[str, list[Task]] | None = None,
    progress: bool = True,
    pool_size: int = 0,
    prices: Prices | None = None,
    ray_address: str | None = None,
    cores_per_worker: int | None = None,
    **settings: Any,
) -> Summary:
    """Run every environment in every mode on `n` generated tasks (or the given `tasks` per
    environment name), each `repeats` times, `concurrency` rollouts at a time. `settings` are
    `RLMConfig` fields; `pool_size` > 0 keeps that many sandboxes warm for the rlm modes;
    `prices` (model -> $/M tokens) adds a cost column and must price every model the run uses.

    With `ray_address` ("auto", or a cluster's address) the rollouts run on Ray workers, one per
    node (or per `cores_per_worker` cores), each running `concurrency` rollouts with a warm pool
    of `pool_size`; `base_url` may then be a function of the worker's `rlm.RayNode`. Results,
    resume and the summary are the same; each line records the node that ran it."""
    unknown = [m for m in modes if m not in rlm.MODES]
    if unknown:
        raise rlm.ConfigError(f"unknown mode(s) {unknown}; choose from {', '.join(rlm.MODES)}")
    if repeats < 1:
        raise rlm.ConfigError(f"repeats must be at least 1, got {repeats}")
    if callable(base_url) and ray_address is None:
        raise rlm.ConfigError("a base_url chosen per node needs a Ray cluster: pass ray_address")
    config = rlm.RLMConfig(model=model, base_url=None if callable(base_url) else base_url, api_key=api_key, **settings)
    if prices is not None:
        check_priced(prices, [config.model, config.sub_model or config.model])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(out / "results.jsonl")
    done = results.done()
    jobs = plan([resolve(e) for e in environments], modes, n, seed, tasks, repeats)
    todo = [job for job in jobs if job.key not in done]
    pool_size = pool_size if any(job.mode != "llm" for job in todo) else 0

    def record(job: Job, rollout: Rollout, result: rlm.Result) -> Rollout:
        trajectory = out / job.trajectory
        trajectory.parent.mkdir(parents=True, exist_ok=True)
        trajectory.write_text(result.model_dump_json())
        results.append(rollout)  # one synchronous write: lines never interleave
        bar.update(rollout)
        return rollout

    with EvalProgress(len(todo), progress) as bar:
        if ray_address is None:
            limit = asyncio.Semaphore(concurrency)

            async def one(job: Job, pool: rlm.SandboxPool | None) -> Rollout:
                async with limit:
                    return record(job, *await execute(job, config, pool))

            async with _warm_pool(config, pool_size) as pool:
                finished = await asyncio.gather(*(one(job, pool) for job in todo))
        else:
            from .cluster import run_on_ray  # the Ray path imports this module's jobs

            arriving = run_on_ray(todo, config, address=ray_address, server=base_url, per_worker=concurrency,
                                  cores_per_worker=cores_per_worker, pool_size=pool_size)
            async with contextlib.aclosing(arriving):  # the workers stop even when recording fails
                finished = [record(job, rollout, result) async for job, rollout, result in arriving]
    wanted = {job.key for job in jobs}
    everything = [*done.values(), *finished]
    summary = Summary(rows=summarize([r for r in everything if r.key in wanted], prices),
                      results_path=str(results.path))
    (out / "summary.json").write_text(summary.model_dump_json(indent=2))
    return summary


async def execute(job: Job, config: rlm.RLMConfig, pool: rlm.SandboxPool | None) -> tuple[Rollout, rlm.Result]:
    """One rollout, scored: its results line and its trajectory (written by whoever records it)."""
    started = time.monotonic()
    run = await rlm.run_task(job.env, job.task, job.mode, config, pool=pool)
    result = run.result
    rollout = Rollout(
        task_id=job.task.id, repeat=job.repeat, environment=job.env.name, mode=job.mode, reward=run.reward,
        metrics=run.metrics, status=result.status, error=result.error, answer=result.answer[:2000],
        root_usage=result.usage.root, sub_usage=result.usage.sub, usage_by_model=result.usage.by_model,
        turns=len(result.turns), seconds=time.monotonic() - started, trajectory=str(job.trajectory),
    )
    return rollout, result


@contextlib.asynccontextmanager
async def _warm_pool(config: rlm.RLMConfig, size: int) -> AsyncIterator[rlm.SandboxPool | None]:
    """A started pool of `size` sandboxes of the config's backend; None when `size` is 0."""
    if not size:
        yield None
        return
    async with rlm.SandboxPool(config.sandbox, size, **config.sandbox_options) as pool:
        yield pool
