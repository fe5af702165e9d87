"""Ray scaling: rollouts/s and CPU-seconds per rollout for one process against Ray clusters of 1, 2
and 3 nodes on this machine (each node one CPU, all on loopback), and the most concurrent
rollouts one controller process sustains, with its memory per rollout.

On 2 cores the nodes share the same cores, so rollouts/s cannot scale here; CPU-seconds per
rollout (every process of the run: driver, Ray's daemons, workers and sandboxes) is the number
that carries over: capacity on N cores is about N / (CPU-seconds per rollout). Needs the `ray`
extra. Run with `python -m benchmarks ray_scaling [--quick]`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

import psutil

import environments
from environments import NeedleInAHaystack
from rlm.testing import ScriptedServer, fenced

from .cpu import DescendantCPU

#: Loopback only (Ray would otherwise rewrite a loopback address to the interface address), read at import.
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})

import ray
from ray.cluster_utils import Cluster

NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 100 * 2**20}
PER_WORKER = 4
SOLVE = fenced("answer['content'] = context[:40]", "answer['ready'] = True")
TARGETS: dict[str, tuple[str, str]] = {"max_concurrency[256]": ("lost", "0, at >= 256 in flight")}


async def _evaluate(rollouts: int, address: str | None, **extra: Any) -> dict[str, float]:
    env = NeedleInAHaystack(length=1000)
    with ScriptedServer(lambda request: SOLVE) as server, tempfile.TemporaryDirectory() as out:
        with DescendantCPU(0.05, include_self=True) as cpu:
            started = time.perf_counter()
            summary = await environments.evaluate([env], model="bench", base_url=server.base_url, modes=["rlm"],
                                                  n=rollouts, out=out, progress=False, sandbox="local",
                                                  max_retries=0, ray_address=address, **extra)
            wall = time.perf_counter() - started
        used = cpu.seconds
    return {"rollouts": summary.rows[0].rollouts, "rollouts_per_s": rollouts / wall,
            "cpu_s_per_rollout": used / rollouts, "wall_s": wall}


async def one_process(rollouts: int) -> dict[str, float]:
    return await _evaluate(rollouts, None, concurrency=PER_WORKER)


async def on_ray(nodes: int, rollouts: int) -> dict[str, float]:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        with DescendantCPU(0.05, include_self=True) as idle:
            await asyncio.sleep(2)  # what the cluster costs doing nothing, to tell it apart
        idle_per_s = idle.seconds / 2
        row = await _evaluate(rollouts, cluster.address, concurrency=PER_WORKER)
        row["idle_cluster_cpu_per_s"] = idle_per_s
        return row
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


async def max_concurrency(concurrency: int) -> dict[str, float]:
    """`concurrency` llm-mode rollouts held in flight at once in one controller process (the
    server answers none until all have asked): none may be lost. Memory per rollout is the
    process's growth over the baseline, divided by the rollouts in flight."""
    env = NeedleInAHaystack(length=1000)
    me = psutil.Process()
    baseline = me.memory_info().rss
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, me.memory_info().rss)
            await asyncio.sleep(0.05)

    with ScriptedServer(hold_until_in_flight=concurrency, sub=lambda request: "42") as server, \
            tempfile.TemporaryDirectory() as out:
        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        summary = await environments.evaluate([env], model="bench", base_url=server.base_url, modes=["llm"],
                                              n=concurrency, out=out, progress=False, max_retries=0,
                                              concurrency=concurrency, request_timeout=120)
        wall = time.perf_counter() - started
        watcher.cancel()
        in_flight = server.peak_requests_in_flight
    row = summary.rows[0]
    return {"in_flight": in_flight, "lost": concurrency - row.rollouts + row.failures, "wall_s": wall,
            "memory_per_rollout_kb": (peak - baseline) / max(in_flight, 1) / 1024}


async def collect(quick: bool) -> dict[str, Any]:
    rollouts = 12 if quick else 36
    report: dict[str, Any] = {f"one_process[{rollouts}]": await one_process(rollouts)}
    for nodes in (1, 2, 3):
        report[f"ray[{nodes} node{'s' if nodes > 1 else ''}, {rollouts}]"] = await on_ray(nodes, rollouts)
    for concurrency in (64, 256) if quick else (64, 128, 256, 512):
        report[f"max_concurrency[{concurrency}]"] = await max_concurrency(concurrency)
    return report
