"""Load: N concurrent `rlm.arun` rollouts in one process, each 3 turns and 8 sub-calls against a
scripted server in its own process. Reports rollouts/s, CPU-seconds per rollout (controller and
sandboxes apart), controller memory per rollout and lost runs. `python -m benchmarks load`."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from typing import Any

import rlm
from rlm.testing import ServerProcess, fenced
from sandbox import KERNELS, Kernel, Reply, create_sandbox

from .cpu import DescendantCPU

#: Each rollout: two turns of 4 sub-calls, then a turn that answers (identical replies, so any
#: interleaving of the concurrent runs' root requests gives every run the same program).
TURN = ("turn = globals().get('turn', 0) + 1\n"
        "if turn < 3:\n"
        "    replies = llm_batch([f'q{turn}-{i}' for i in range(4)])\n"
        "else:\n"
        "    answer['content'] = 'done'; answer['ready'] = True")
TURNS, SUB_CALLS = 3, 8
SUB_LATENCY = 0.05
TARGETS: dict[str, tuple[str, str]] = {f"load[{n},{kernel}]": ("rollouts_per_s", ">= 4x the base commit")
                                       for n in (16, 64) for kernel in KERNELS}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(runs: int, backend: str = "local", kernel: Kernel = "ipykernel") -> dict[str, float]:
    """`runs` rollouts started at once on `kernel`; a rollout is lost unless it ends `ready` with
    every turn and sub-call done."""
    with ServerProcess([fenced(TURN)] * (runs * TURNS), sub_latency=SUB_LATENCY) as server:
        rss_before, cpu_before = _rss_mb(), _cpu_self()
        peak_rss = rss_before
        started = time.perf_counter()
        with DescendantCPU() as sandboxes:
            tasks = [asyncio.ensure_future(rlm.arun("load", "data", model="load", base_url=server.base_url,
                                                    sandbox=backend, sandbox_options={"kernel": kernel},
                                                    max_turns=TURNS + 1, max_retries=0,
                                                    max_sub_concurrency=SUB_CALLS))
                     for _ in range(runs)]
            while not all(task.done() for task in tasks):
                peak_rss = max(peak_rss, _rss_mb())
                await asyncio.wait(tasks, timeout=0.5)
            wall = time.perf_counter() - started
        results = [task.result() if not task.exception() else None for task in tasks]
        controller_cpu = _cpu_self() - cpu_before
    ok = sum(1 for r in results if r is not None and r.status == "ready" and len(r.turns) == TURNS
             and len(r.sub_calls) == SUB_CALLS)
    return {"runs": runs, "lost": runs - ok, "wall_s": wall, "rollouts_per_s": runs / wall,
            "controller_cpu_s_per_rollout": controller_cpu / runs,
            "sandbox_cpu_s_per_rollout": sandboxes.seconds / runs,
            "cpu_s_per_rollout": (controller_cpu + sandboxes.seconds) / runs,
            "controller_peak_mb_per_rollout": (peak_rss - rss_before) / runs}


_WAIT = "import sandbox_rpc\nsandbox_rpc.request('wait', {}, 1 << 20)"


async def waiting(kernels: int, seconds: float, kernel: Kernel = "ipykernel") -> dict[str, float]:
    """CPU that `kernels` kernels burn while each waits `seconds` for the reply to a request (as
    in `llm_batch` during a slow sub-call), as a percentage of one core."""
    async def slow(request: dict[str, Any]) -> Reply:
        await asyncio.sleep(seconds)
        return Reply(result="ok")

    boxes = [create_sandbox("local", kernel=kernel) for _ in range(kernels)]
    try:
        for chunk in range(0, kernels, 4):
            await asyncio.gather(*(box.start() for box in boxes[chunk:chunk + 4]))
        await asyncio.sleep(1)  # let start-up work finish before measuring
        with DescendantCPU(interval=0.1) as during:
            await asyncio.sleep(0.3)  # a first sample of each process
            base = during.seconds
            await asyncio.gather(*(box.execute(_WAIT, on_request=slow)
                                   for box in boxes))
            spent = during.seconds - base
    finally:
        await asyncio.gather(*(box.close() for box in boxes))
    return {"kernels": kernels, "seconds": seconds, "core_percent": 100 * spent / seconds,
            "per_kernel_percent": 100 * spent / seconds / kernels}


async def collect(quick: bool) -> dict[str, Any]:
    """Each size on each kernel, side by side, so that their ratio holds on a noisy machine."""
    sizes = (16, 64) if quick else (64, 128, 256)
    report: dict[str, Any] = {}
    for kernel in KERNELS:
        report[f"waiting[16,{kernel}]"] = await waiting(16, 5.0 if quick else 10.0, kernel)
    for n in sizes:
        for kernel in KERNELS:
            report[f"load[{n},{kernel}]"] = await load(n, kernel=kernel)
    return report
