"""Rollouts on a Ray cluster: worker actors (one per node, or one per N cores), each with its own
event loop, warm sandbox pool and model clients, fed by a driver that keeps every worker busy up to
a limit and redoes on a live worker whatever a dead one had in hand.

Ray is an optional extra (`pip install 'rlm-lab[ray]'`), imported only when a cluster is used.
The driver owns the outputs: each unit of work is handed back once, by key, when its worker's
answer arrives, so a node that dies loses nothing and doubles nothing.

    async with rlm.ClusterRollouts(env, model="policy", base_url=URL, ray_address="auto") as cluster:
        rows = await cluster.training_rows(tasks, group_size=8)   # one trainer step's batch
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from sandbox import SandboxPool

from .config import RLMConfig
from .errors import ConfigError, RLMError
from .tasks import EnvironmentLike, TaskLike
from .training import TrainingRollout, TrainingRow, run_rollout, training_config, training_rows, with_advantages


@dataclass(frozen=True)
class RayNode:
    """The cluster node a worker runs on."""

    id: str
    ip: str


#: The model server of a worker: one URL for all, or a function of the worker's node (for
#: example a vLLM server on each node's own GPUs: `lambda node: f"http://{node.ip}:8000/v1"`).
ServerURL = str | Callable[[RayNode], str]


@dataclass
class WorkerContext:
    """What a worker keeps across the rollouts it runs."""

    node: RayNode
    config: RLMConfig  # its base_url resolved for the node
    pool: SandboxPool | None
    shared: Any  # what every unit of work needs, sent once per worker (an environment, say)


#: What tells one unit of work from another (an evaluation's rollout key, say).
Key = TypeVar("Key", bound=Hashable)

#: One unit of work on a worker. Ray pickles it by reference: a module-level function.
Work = Callable[[Any, WorkerContext], Awaitable[Any]]


def import_ray() -> ModuleType:
    """Ray, or a `ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("running on a Ray cluster needs Ray: pip install 'rlm-lab[ray]'") from None
    return ray


class Worker:
    """The actor. Its methods are coroutines, so Ray runs them on the actor's own event loop,
    where its sandbox pool lives; `close` stops what is running there and closes the pool, so no
    sandbox outlives a worker that is shut down (one killed takes its sandboxes with it)."""

    def __init__(self, work: Work, shared: Any, config: RLMConfig, server: ServerURL | None, pool_size: int) -> None:
        self._work, self._shared, self._config, self._server, self._pool_size = work, shared, config, server, pool_size
        self._context: WorkerContext | None = None
        self._running: set[asyncio.Task[Any]] = set()

    async def start(self) -> RayNode:
        ray = import_ray()
        node = RayNode(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())
        config = self._config
        if self._server is not None:
            url = self._server if isinstance(self._server, str) else self._server(node)
            config = config.model_copy(update={"base_url": url})
        pool = None
        if self._pool_size:
            pool = await SandboxPool(config.sandbox, self._pool_size, **config.sandbox_options).start()
        self._context = WorkerContext(node, config, pool, self._shared)
        return node

    async def run(self, item: Any) -> Any:
        if self._context is None:
            raise RLMError("the worker was not started")
        task = asyncio.current_task()
        assert task is not None  # Ray runs each call of an async actor as a task
        self._running.add(task)
        try:
            return await self._work(item, self._context)
        finally:
            self._running.discard(task)

    async def close(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        if self._context is not None and self._context.pool is not None:
            await self._context.pool.close()


class RayWorkers:
    """Worker actors across a Ray cluster and the dispatch of work to them.

    `per_worker` units run at a time on each worker (backpressure: the rest wait at the driver);
    `cores_per_worker` None starts one worker per node with CPUs, N one per N of a node's CPUs.
    """

    #: Seconds a worker gets to stop its rollouts and close its sandboxes before it is killed.
    CLOSE_TIMEOUT = 30.0

    def __init__(self, work: Work, shared: Any, config: RLMConfig, *, address: str | None = "auto",
                 server: ServerURL | None = None, per_worker: int = 16, cores_per_worker: int | None = None,
                 pool_size: int = 0) -> None:
        if per_worker < 1 or (cores_per_worker is not None and cores_per_worker < 1) or pool_size < 0:
            raise ConfigError("per_worker and cores_per_worker must be at least 1, pool_size at least 0")
        self._ray = import_ray()
        self._work, self._shared, self._config, self._address = work, shared, config, address
        self._server, self._per_worker, self._cores, self._pool_size = server, per_worker, cores_per_worker, pool_size
        self.nodes: dict[Any, RayNode] = {}  # live actor -> its node
        self._placed: dict[Any, RayNode] = {}  # every started actor -> its node
        self._owns_connection = False

    async def __aenter__(self) -> RayWorkers:
        ray = self._ray
        if not ray.is_initialized():
            # Workers' prints stay in the cluster's logs: the driver's stdout is the user's.
            ray.init(address=self._address, log_to_driver=False, logging_level="WARNING")
            self._owns_connection = True
        try:
            await self._start_workers()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start_workers(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = self._ray.remote(Worker)
        actors = []
        for node in self._ray.nodes():
            cpus = int(node.get("Resources", {}).get("CPU", 0))
            if not node.get("Alive") or cpus == 0:  # a head kept free of work has no CPUs
                continue
            # Placement is ours (pinned to the node), so the actor reserves no CPU of Ray's.
            options = {"num_cpus": 0, "max_concurrency": self._per_worker + 1,
                       "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
            count = 1 if self._cores is None else max(1, cpus // self._cores)
            actors += [remote.options(**options).remote(self._work, self._shared, self._config, self._server,
                                                        self._pool_size) for _ in range(count)]
        started = await asyncio.gather(*(self._call(actor.start) for actor in actors), return_exceptions=True)
        for actor, node in zip(actors, started, strict=True):
            if isinstance(node, RayNode):
                self.nodes[actor] = self._placed[actor] = node
            elif isinstance(node, self._lost):
                self._ray.kill(actor)
            else:
                raise node
        if not self.nodes:
            raise RLMError(f"no Ray worker started: the cluster at {self._address!r} has no live node with CPUs")

    @property
    def _lost(self) -> tuple[type[BaseException], ...]:
        """What says a worker (or its node) died: its work must be redone elsewhere."""
        return (self._ray.exceptions.RayActorError, self._ray.exceptions.ObjectLostError)

    async def _call(self, method: Any, *args: Any) -> Any:
        try:
            return await asyncio.wrap_future(method.remote(*args).future())
        except self._ray.exceptions.RayTaskError as exc:
            if isinstance(exc, self._lost):
                raise
            raise exc.as_instanceof_cause() from None  # the work's own error, as its own type

    async def _gone(self, actor: Any) -> None:
        """Wait until Ray reports `actor` dead (a call to it then fails)."""
        with contextlib.suppress(*self._lost, asyncio.TimeoutError):
            async with asyncio.timeout(self.CLOSE_TIMEOUT):
                while True:
                    await self._call(actor.__ray_ready__)
                    await asyncio.sleep(0.1)

    async def map(self, items: Sequence[tuple[Key, Any]]) -> AsyncIterator[tuple[Key, RayNode, Any]]:
        """(key, node, output) for every (key, item), as outputs arrive; each key exactly once,
        the items of a worker that died redone on a live one."""
        waiting = collections.deque(items)
        load = dict.fromkeys(self.nodes, 0)
        running: dict[asyncio.Future[Any], tuple[Any, Key, Any]] = {}
        given: set[Key] = set()
        try:
            while waiting or running:
                while waiting and (free := [a for a in self.nodes if load[a] < self._per_worker]):
                    for actor in free[: len(waiting)]:  # one each in turn: a small batch still spreads
                        key, item = waiting.popleft()
                        running[asyncio.ensure_future(self._call(actor.run, item))] = (actor, key, item)
                        load[actor] += 1
                if not running:
                    raise RLMError(f"every Ray worker died; {len(waiting)} rollouts were not run")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    actor, key, item = running.pop(future)
                    load[actor] -= 1
                    try:
                        output = future.result()
                    except self._lost:
                        self.nodes.pop(actor, None)
                        waiting.appendleft((key, item))
                        continue
                    if key not in given:
                        given.add(key)
                        yield key, self._placed[actor], output
        finally:
            for future in running:
                future.cancel()

    async def close(self) -> None:
        """Let every worker stop its rollouts and close its sandboxes, then end the actors."""
        actors = list(self.nodes)
        self.nodes = {}
        if actors:
            closing = asyncio.gather(*(self._call(actor.close) for actor in actors), return_exceptions=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closing, self.CLOSE_TIMEOUT)
            for actor in actors:
                self._ray.kill(actor)
            # Return only once they are gone, and with them any sandbox still starting in one.
            await asyncio.gather(*(self._gone(actor) for actor in actors))
        if self._owns_connection:
            self._ray.shutdown()
            self._owns_connection = False


async def _training_rollout(item: tuple[TaskLike, int], context: WorkerContext) -> TrainingRollout:
    task, seed = item
    env, options = context.shared
    return await run_rollout(env, task, context.config, seed=seed, pool=context.pool, **options)


class ClusterRollouts:
    """RL rollouts of one environment across a Ray cluster, its workers kept warm from one
    trainer step to the next. Results come back in task and seed order, whatever ran where.

    `env` travels to every worker once (pickled): any `EnvironmentLike` importable there.
    `base_url` is one server for all or a function of a worker's `RayNode`; `settings` are
    `RLMConfig` fields, as for `rlm.rollout`.
    """

    def __init__(self, env: EnvironmentLike, *, model: str, base_url: ServerURL | None = None,
                 ray_address: str | None = "auto", per_worker: int = 16, cores_per_worker: int | None = None,
                 pool_size: int = 0, tips: bool = False, include_sub_calls: bool = False, **settings: Any) -> None:
        config = training_config(model, base_url if isinstance(base_url, str) else None, **settings)
        self._workers = RayWorkers(_training_rollout, (env, {"tips": tips, "include_sub_calls": include_sub_calls}),
                                   config, address=ray_address, server=base_url, per_worker=per_worker,
                                   cores_per_worker=cores_per_worker, pool_size=pool_size)
        #: The node each of the latest call's rollouts ran on, by (task index, seed).
        self.placement: dict[tuple[int, int], RayNode] = {}

    async def __aenter__(self) -> ClusterRollouts:
        await self._workers.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._workers.close()

    async def rollout_groups(self, tasks: Sequence[TaskLike], group_size: int, *,
                             seed: int = 0) -> list[list[TrainingRollout]]:
        """What `rlm.rollout_group` gives for each task (seeds seed..seed+group_size-1, GRPO
        advantages within each group), every rollout on whichever worker is free."""
        items = [((index, seed + i), (task, seed + i)) for index, task in enumerate(tasks) for i in range(group_size)]
        done: dict[tuple[int, int], TrainingRollout] = {}
        self.placement = {}
        async for key, node, rollout in self._workers.map(items):
            done[key], self.placement[key] = rollout, node
        return [with_advantages([done[(index, seed + i)] for i in range(group_size)]) for index in range(len(tasks))]

    async def training_rows(self, tasks: Sequence[TaskLike], group_size: int, *, seed: int = 0) -> list[TrainingRow]:
        """One trainer step's batch: every sequence of every rollout of `tasks`, with its advantage."""
        return training_rows(await self.rollout_groups(tasks, group_size, seed=seed))
