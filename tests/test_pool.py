"""The warm pool: fresh sandboxes in milliseconds, never reused, refilled, cleaned up."""

from __future__ import annotations

import asyncio
import time

import pytest

from rlm.testing import fenced
from sandbox import SandboxPool
from tests.conftest import ISOLATING, run_on, sandbox_dirs, sandbox_processes

pytestmark = pytest.mark.parametrize("backend", ISOLATING)


async def _until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_acquire_hands_out_fresh_sandboxes_and_refills(backend):
    before = set(sandbox_processes())
    async with SandboxPool(backend, size=2) as pool:
        assert pool.ready == 2
        first = await pool.acquire()
        await first.execute("secret = 42")
        second = await pool.acquire()
        assert second is not first
        out = await second.execute("print('secret' in globals())")
        assert out.stdout == "False\n"
        await first.close()
        await second.close()
        await _until(lambda: pool.ready == 2)
    assert set(sandbox_processes()) - before == set()


async def test_runs_take_sandboxes_from_the_pool(scripted, backend, tmp_path):
    server = scripted([fenced("answer.update(content=str(len(context)), ready=True)")] * 3)
    async with SandboxPool(backend, size=1) as pool:
        results = await asyncio.gather(*(run_on(server, "x" * n, pool=pool) for n in (1, 2, 3)))
        assert sorted(r.answer for r in results) == ["1", "2", "3"]
        assert pool.handed_out == 3
        path_data = tmp_path / "data.txt"
        path_data.write_text("abcd")
        tmp_path.chmod(0o755)
        server2 = scripted([fenced("answer.update(content=context, ready=True)")])
        mounted = await run_on(server2, path_data, pool=pool, sandbox=backend)  # needs a mount: not pooled
        assert mounted.answer == "abcd" and pool.handed_out == 3


async def test_a_close_cancelled_on_the_way_closes_every_pooled_sandbox(backend):
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    pool = await SandboxPool(backend, size=3).start()
    closing = asyncio.ensure_future(pool.close())
    await asyncio.sleep(0)  # inside the first sandbox's close
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert pool.ready == 0
    assert set(sandbox_processes()) - before_procs == set()
    assert set(sandbox_dirs()) - before_dirs == set()
