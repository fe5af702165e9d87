"""The peer benchmark's programs, rendered in each library's protocol: what their parsers expect
(checked against the libraries whenever the benchmark runs), fixed here so a change shows."""

from __future__ import annotations

import pytest

from benchmarks.peers.adapters import ADAPTERS
from tests.conftest import sandbox_dirs, sandbox_processes

FENCES = [("ours", "```python\n"), ("rlms", "```repl\n"), ("dspy", "[[ ## code ## ]]\n```python\n")]
FINISHED = {
    "ours": "r = llm_batch(['a'])\nanswer['content'] = str(f'{len(r)}')\nanswer['ready'] = True",
    "rlms": "r = llm_query_batched(['a'])\nanswer['content'] = str(f'{len(r)}')\nanswer['ready'] = True",
    "dspy": "r = llm_query_batched(['a'])\nSUBMIT(answer=str(f'{len(r)}'))",
}


@pytest.mark.parametrize(("library", "fence"), FENCES)
def test_batched_call_and_finish_in_each_protocol(library, fence):
    reply = ADAPTERS[library]("any").step("r = {batch}(['a'])\nFINISH(f'{len(r)}')")
    assert fence + FINISHED[library] + "\n```" in reply


@pytest.mark.parametrize(("library", "fence"), FENCES)
def test_a_step_without_finish_runs_as_written(library, fence):
    assert fence + "x = 1\n```" in ADAPTERS[library]("any").step("x = 1")


def test_our_repl_lifecycle_as_the_benchmark_drives_it():
    """Start, execute and close are separate calls from synchronous code: one loop serves them all."""
    adapter = ADAPTERS["ours"]("local")
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    repl = adapter.start()
    adapter.execute(repl, "x = 2")
    adapter.close(repl)
    assert set(sandbox_processes()) - before_procs == set() and set(sandbox_dirs()) - before_dirs == set()
