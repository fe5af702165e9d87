"""Sandbox backends and kernels side by side: cold start, warm-pool acquire, execute round trip,
and the memory of 32 idle sandboxes. Run with `python -m benchmarks sandboxes`."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from sandbox import KERNELS, Kernel, Sandbox, SandboxPool, create_sandbox

from .core import cold_start, round_trip, row

BACKENDS = ("local", "docker")
TARGETS: dict[str, tuple[str, str]] = {
    "cold_start[local]": ("p50_s", "<= 0.5 s"),
    "cold_start[docker]": ("p50_s", "<= 1.5 s"),
    "pool_acquire[local]": ("p50_ms", "<= 50 ms"),
    "pool_acquire[docker]": ("p50_ms", "<= 50 ms"),
    "round_trip[local]": ("p50_ms", "<= 2 ms"),
    "round_trip[docker]": ("p50_ms", "<= 2 ms"),
    # issue 17's targets, for the lean kernel
    "cold_start[local,lean]": ("p50_s", "<= 0.1 s"),
    "round_trip[local,lean]": ("p50_ms", "<= 1 ms"),
    "idle_memory[local,lean]": ("per_sandbox_mb", "<= 20 MB"),
}


async def pool_acquire(backend: str, runs: int, kernel: Kernel = "ipykernel") -> dict[str, float]:
    """Acquire from a warm pool of 4, letting it refill between acquisitions."""
    times = []
    async with SandboxPool(backend, size=4, kernel=kernel) as pool:
        for _ in range(runs):
            while pool.ready < pool.size:
                await asyncio.sleep(0.05)
            started = time.perf_counter()
            box = await pool.acquire()
            times.append(time.perf_counter() - started)
            await box.close()
    return {"p50_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3}


def _memory_bytes(box: Sandbox) -> int:
    """Resident memory charged to one sandbox: its container's or its cgroup's usage."""
    provisioner = getattr(box, "provisioner", box)
    container = getattr(provisioner, "_container", None)
    if container is not None:
        return int(container.stats(stream=False)["memory_stats"].get("usage", 0))
    cgroup = getattr(provisioner, "_cgroup", None)
    if cgroup is not None:
        for path in cgroup.dirs:
            for name in ("memory.usage_in_bytes", "memory.current"):
                if (path / name).exists():
                    return int((path / name).read_text())
    return 0


async def idle_memory(backend: str, count: int, kernel: Kernel = "ipykernel") -> dict[str, float]:
    boxes = [create_sandbox(backend, kernel=kernel) for _ in range(count)]
    try:
        started = time.perf_counter()
        for chunk in range(0, count, 4):  # a few at a time: 2 cores
            await asyncio.gather(*(b.start() for b in boxes[chunk:chunk + 4]))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(2)
        used = [_memory_bytes(b) for b in boxes]
    finally:
        await asyncio.gather(*(b.close() for b in boxes))
    return {"sandboxes": count, "total_mb": sum(used) / 2**20, "per_sandbox_mb": sum(used) / count / 2**20,
            "start_all_s": elapsed}


async def collect(quick: bool) -> dict[str, Any]:
    runs = 5 if quick else 20
    report: dict[str, Any] = {}
    for backend in BACKENDS:
        for kernel in KERNELS:
            report[row("cold_start", backend, kernel)] = await cold_start(backend, runs, kernel)
            report[row("pool_acquire", backend, kernel)] = await pool_acquire(backend, runs, kernel)
            report[row("round_trip", backend, kernel)] = await round_trip(backend, runs * 10, kernel)
            report[row("idle_memory", backend, kernel)] = await idle_memory(backend, 8 if quick else 32, kernel)
    return report
