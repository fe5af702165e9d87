"""Evaluation on a Ray cluster: the harness's rollouts run on `rlm.RayWorkers` (one worker per node
or per N cores, each with its own event loop, warm sandbox pool and model clients), while the
harness, on the driver, keeps planning, resuming and writing results.jsonl."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import rlm

from .base import Task
from .harness import Job, execute
from .results import Rollout


@dataclass(frozen=True)
class RemoteJob:
    """A `Job` as it travels to a worker: its environment by name, since each worker holds every
    environment of the evaluation already."""

    environment: str
    mode: rlm.Mode
    task: Task
    repeat: int


async def _run_remote(job: RemoteJob, context: rlm.WorkerContext) -> tuple[Rollout, rlm.Result]:
    return await execute(Job(context.shared[job.environment], job.mode, job.task, job.repeat),
                         context.config, context.pool)


async def run_on_ray(jobs: Sequence[Job], config: rlm.RLMConfig, *, address: str, server: rlm.ServerURL | None,
                     per_worker: int, cores_per_worker: int | None,
                     pool_size: int) -> AsyncIterator[tuple[Job, Rollout, rlm.Result]]:
    """Each job's rollout and trajectory as it arrives, exactly once, with the node that ran it."""
    environments = {job.env.name: job.env for job in jobs}
    by_key = {job.key: job for job in jobs}
    items = [(job.key, RemoteJob(job.env.name, job.mode, job.task, job.repeat)) for job in jobs]
    async with rlm.RayWorkers(_run_remote, environments, config, address=address, server=server,
                              per_worker=per_worker, cores_per_worker=cores_per_worker,
                              pool_size=pool_size) as workers:
        async for key, node, (rollout, result) in workers.map(items):
            yield by_key[key], rollout.model_copy(update={"node": node.id}), result
