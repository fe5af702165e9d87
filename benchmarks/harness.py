"""Harness overhead: 200 rollouts of a trivial environment against a scripted server with a fixed
100 ms latency at concurrency 32, as a ratio to the ideal (sum of latencies / concurrency).
The `rlm` row adds a sandbox per rollout. Run with `python -m benchmarks harness`."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import environments
from environments import Environment, Score, Task
from rlm.testing import ServerProcess, fenced

LATENCY = 0.1
TARGETS: dict[str, tuple[str, str]] = {"llm[200 rollouts]": ("ratio_to_ideal", "close to 1")}


class Trivial(Environment):
    name = "trivial"

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        return [Task(id=f"t{i}", prompt=f"Say {i}.", data=str(i), expected=str(i)) for i in range(n)]

    def score(self, task: Task, answer: str) -> Score:
        return Score(reward=float(bool(answer)))


async def _run(mode: str, rollouts: int, concurrency: int) -> dict[str, float]:
    replies = [fenced("answer['content'] = str(context); answer['ready'] = True")] * rollouts
    with ServerProcess(replies, sub_latency=LATENCY) as server, tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = await environments.evaluate([Trivial()], model="bench", base_url=server.base_url, modes=[mode],
                                              n=rollouts, concurrency=concurrency, out=out, progress=False,
                                              max_retries=0)
        wall = time.perf_counter() - started
    # In llm mode each rollout is one request at LATENCY; in rlm mode the root request is instant.
    ideal = rollouts * LATENCY / concurrency if mode == "llm" else 0.0
    row = {"wall_s": wall, "ideal_s": ideal, "per_rollout_ms": wall / rollouts * 1e3,
           "reward": summary.rows[0].reward_mean}
    if ideal:
        row["ratio_to_ideal"] = wall / ideal
    return row


async def collect(quick: bool) -> dict[str, Any]:
    rollouts = 50 if quick else 200
    return {
        f"llm[{rollouts} rollouts]": await _run("llm", rollouts, 32),
        f"rlm[{rollouts // 4} rollouts]": await _run("rlm", rollouts // 4, 32),
    }
