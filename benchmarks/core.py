"""Core-runtime benchmarks: sandbox start and round trip, llm_batch fan-out, controller overhead,
1 GB context. Run with `python -m benchmarks core [--quick]`.

Prints a table and writes JSON. Ratios are measured side by side in one run; absolute times on
shared 2-core machines are noisy, so read them as orders of magnitude.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import rlm
from rlm.testing import ScriptedServer, ServerProcess, fenced
from sandbox import KERNELS, Kernel, create_sandbox

from .cpu import DescendantCPU


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, backend: str, kernel: Kernel) -> str:
    """A table row's name: ipykernel rows keep their names, the lean kernel's say so."""
    return f"{name}[{backend}]" if kernel == "ipykernel" else f"{name}[{backend},{kernel}]"


async def cold_start(backend: str, runs: int, kernel: Kernel = "ipykernel") -> dict[str, float]:
    """Start to first answer, and the CPU a start costs: the controller's and the sandbox's
    processes' (`cpu_s`, a median; Docker's engine and containers are not our descendants)."""
    times, cpu = [], []
    for _ in range(runs):
        with DescendantCPU(interval=0.05) as sandbox_cpu:
            own = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            box = create_sandbox(backend, kernel=kernel)
            await box.start()
            times.append(time.perf_counter() - started)
            sandbox_cpu.sample()
            after = resource.getrusage(resource.RUSAGE_SELF)
            await box.close()
        cpu.append(sandbox_cpu.seconds + after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime)
    return {"p50_s": statistics.median(times), "p95_s": _percentile(times, 0.95), "cpu_s": statistics.median(cpu)}


async def round_trip(backend: str, runs: int, kernel: Kernel = "ipykernel") -> dict[str, float]:
    async with create_sandbox(backend, kernel=kernel) as box:
        for _ in range(10):
            await box.execute("pass")
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await box.execute("pass")
            times.append(time.perf_counter() - started)
    return {"p50_ms": statistics.median(times) * 1e3, "p95_ms": _percentile(times, 0.95) * 1e3}


async def batch_ratio(latency: float = 0.1) -> dict[str, float]:
    """Wall time of llm_batch(64 prompts) over llm_batch(1 prompt), same kernel, same server: the
    run's first batch of 64 (`cold`: it opens 63 more connections) and its second (`ratio`)."""
    code = (
        "import time\n"
        "t = time.perf_counter(); llm_batch(['one']); one = time.perf_counter() - t\n"
        "t = time.perf_counter(); llm_batch([str(i) for i in range(64)]); cold = time.perf_counter() - t\n"
        "t = time.perf_counter(); llm_batch([str(i) for i in range(64)]); warm = time.perf_counter() - t\n"
        "answer['content'] = f'{one} {cold} {warm}'; answer['ready'] = True"
    )
    with ServerProcess([fenced(code)], sub_latency=latency) as server:
        result = await rlm.arun("bench", "data", model="bench", base_url=server.base_url,
                                max_sub_concurrency=64, max_concurrency=64, max_retries=0)
    one, cold, warm = map(float, result.answer.split())
    return {"one_call_s": one, "batch64_s": warm, "ratio": warm / one, "cold_batch64_s": cold, "cold_ratio": cold / one}


async def controller_overhead(turns: int = 30) -> dict[str, float]:
    """Per-turn time not spent in the model request or the kernel execution."""
    replies = [fenced("x = 1")] * (turns - 1) + [fenced("answer['ready'] = True")]
    with ScriptedServer(replies) as server:
        result = await rlm.arun("bench", "data", model="bench", base_url=server.base_url,
                                max_turns=turns, max_retries=0)
    overheads = [t.duration - t.model_seconds - t.exec_seconds for t in result.turns]
    return {"per_turn_ms": statistics.median(overheads) * 1e3, "turns": len(result.turns)}


def gigabyte_context() -> dict[str, float]:
    """Load time of a 1 GB str context and the controller's peak memory, in a fresh process."""
    script = (
        "import asyncio, resource, time, rlm\n"
        "from rlm.testing import ScriptedServer, fenced\n"
        "data = 'x' * (1 << 30)\n"
        "with ScriptedServer([fenced(\"answer['content'] = str(len(context)); answer['ready'] = True\")]) as s:\n"
        "    t = time.perf_counter()\n"
        "    r = asyncio.run(rlm.arun('q', data, model='b', base_url=s.base_url, max_retries=0,\n"
        "                             sandbox_options={'memory_limit': '6g'}))\n"
        "    print(time.perf_counter() - t, r.timings.sandbox_start, r.answer,\n"
        "          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    total, _, length, peak_mb = out.stdout.split()
    assert int(length) == 1 << 30
    return {"run_s": float(total), "controller_peak_mb": float(peak_mb), "data_mb": 1024.0}


async def collect(quick: bool) -> dict[str, Any]:
    runs = 5 if quick else 20
    report: dict[str, Any] = {}
    for backend in ("local", "unsafe-local"):
        for kernel in KERNELS:  # side by side, so the ratio holds on a noisy machine
            report[row("cold_start", backend, kernel)] = await cold_start(backend, runs, kernel)
            report[row("round_trip", backend, kernel)] = await round_trip(backend, runs * 10, kernel)
    report["llm_batch_64_vs_1"] = await batch_ratio()
    report["controller_overhead"] = await controller_overhead()
    if not quick:
        report["context_1gb"] = gigabyte_context()
    return report


TARGETS: dict[str, tuple[str, str]] = {
    "cold_start[local]": ("p50_s", "<= 0.5 s"),
    "round_trip[local]": ("p50_ms", "<= 2 ms"),
    "round_trip[unsafe-local]": ("p50_ms", "<= 2 ms"),
    # issue 17's targets, for the lean kernel (ipykernel's imports alone cost more)
    "cold_start[local,lean]": ("p50_s", "<= 0.1 s"),
    "round_trip[local,lean]": ("p50_ms", "<= 1 ms"),
    "round_trip[unsafe-local,lean]": ("p50_ms", "<= 1 ms"),
    "llm_batch_64_vs_1": ("ratio", "<= 1.2x"),
    "controller_overhead": ("per_turn_ms", "<= 5 ms"),
}

