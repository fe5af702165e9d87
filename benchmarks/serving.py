"""The embedded CPU model server: load time, and latency and throughput at 1, 8 and 32
concurrent requests, to choose `max_sub_concurrency` from data. Run with
`python -m benchmarks serving`. The llama-cpp-python build time is read from the file .ci/run
writes when it builds it."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

from rlm.serving import LlamaCppServer

BUILD_TIME_FILE = Path(".venv/tiny-build-seconds")
TARGETS: dict[str, tuple[str, str]] = {}


async def _load(client: AsyncOpenAI, model: str, concurrency: int, max_tokens: int) -> dict[str, float]:
    async def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Write a short sentence about the number {i}."}],
            max_tokens=max_tokens, temperature=0,
        )
        return time.perf_counter() - started, reply.usage.completion_tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"latency_p50_s": statistics.median(latencies), "latency_max_s": max(latencies),
            "tokens_per_s": tokens / wall, "wall_s": wall}


async def collect(quick: bool) -> dict[str, Any]:
    report: dict[str, Any] = {}
    if BUILD_TIME_FILE.exists():
        report["llama_cpp_build"] = {"seconds": float(BUILD_TIME_FILE.read_text())}
    started = time.perf_counter()
    with LlamaCppServer(n_ctx=4096) as server:
        report["model_load"] = {"seconds": time.perf_counter() - started}
        client = AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=600)
        await _load(client, server.model_name, 1, 8)  # warm-up
        for concurrency in (1, 8) if quick else (1, 8, 32):
            report[f"concurrent[{concurrency}]"] = await _load(client, server.model_name, concurrency, 32)
        await client.close()
    return report
