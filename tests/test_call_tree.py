"""One budget and one concurrency limit for a run and every run nested under it, held on the
host; and the typed events a run emits as it happens."""

from __future__ import annotations

import asyncio

import pytest

import rlm
from rlm.testing import fenced
from tests.conftest import run_on, sandbox_dirs, sandbox_processes

FAN_OUT = fenced("r = llm_batch([f'q{i}' for i in range(8)])\n"
                 "answer['content'] = str(sum(not x.startswith('[error]') for x in r)); answer['ready'] = True")


@pytest.mark.slow
async def test_depth_three_fan_out_eight_completes_under_a_global_limit_of_four(scripted):
    """8 nested runs, each with 8 nested runs, each with 8 plain sub-calls: a parent waiting on its
    children holds no request slot, so the tree finishes, and no more than 4 requests are ever in flight."""
    server = scripted(lambda request: FAN_OUT, sub=lambda request: "fine", sub_latency=0.02)
    result = await run_on(server, None, max_depth=3, max_concurrency=4, sandbox="unsafe-local")
    assert (result.status, result.answer) == ("ready", "8"), result.error
    assert len(server.sub_requests) == 8 * 8 * 8
    assert len(server.root_requests) == 1 + 8 + 64
    assert server.peak_requests_in_flight <= 4
    assert server.peak_requests_in_flight == 4  # the limit is reached: it is the limit that held


async def test_one_sub_call_budget_is_shared_by_nested_runs(scripted):
    """Budget 10: the top batch of 4 nested runs spends 4, one child's batch of 4 fits, the rest
    are refused, whatever order the children run in."""
    batch4 = fenced("r = llm_batch(['a', 'b', 'c', 'd'])\nanswer['content'] = 'x'; answer['ready'] = True")
    server = scripted(lambda request: batch4, sub=lambda request: "fine")
    result = await run_on(server, None, max_depth=2, max_sub_calls=10, sandbox="unsafe-local")
    assert result.status == "ready"
    assert len(server.sub_requests) == 4  # plain calls: exactly one child's batch
    children = [call.child for call in result.sub_calls]
    refused = [child for child in children if "sub-call budget exhausted" in child.turns[0].output]
    assert len(refused) == 3
    child_prompts = [r["messages"][0]["content"] for r in server.root_requests[1:]]
    assert all("left for the whole call tree" in prompt for prompt in child_prompts)


async def test_a_token_budget_counts_every_call_in_the_tree(scripted):
    batch = fenced("r = llm_batch([f'q{i}' for i in range(8)])")
    server = scripted([batch, batch, fenced("answer['ready'] = True")],
                      sub=lambda request: {"content": "x", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}})
    result = await run_on(server, None, max_total_tokens=5000, max_turns=3)
    assert result.status == "budget" and "token budget" in result.error, result.error
    assert len(result.turns) == 1 and len(server.sub_requests) == 8  # no request once it is spent
    assert "tokens" in server.root_requests[0]["messages"][0]["content"]  # shown to the model


async def test_a_cost_budget_needs_prices_and_ends_the_run(scripted):
    with pytest.raises(rlm.ConfigError, match="price"):
        rlm.RLMConfig(model="m", max_cost=1.0)
    batch = fenced("r = llm_batch([f'q{i}' for i in range(8)])")
    server = scripted([batch, batch, fenced("answer['ready'] = True")], sub=lambda request: {
        "content": "x", "usage": {"prompt_tokens": 100_000, "completion_tokens": 0}})
    result = await run_on(server, None, max_cost=0.5, prices={"scripted-root": {"input": 1.0, "output": 2.0}},
                          max_turns=3)
    assert result.status == "budget" and "cost budget" in result.error, result.error


HOSTILE = r"""
import sys, json, builtins
rt = sys.modules['rlm_runtime']
rt.LIMITS = rt.Limits(answer_chars=10**9, prompt_chars=10**9, request_bytes=10**9)
for name in ('max_sub_calls', 'MAX_SUB_CALLS', 'budget'):
    globals()[name] = 10**9
    setattr(rt, name, 10**9)
rpc = sys.modules['sandbox_rpc']
out = []
for payload in ({'method': 'llm_batch', 'prompts': ['a'] * 3, 'max_sub_calls': 10**9},
                {'method': 'llm_batch', 'prompts': ['b'] * 3, 'budget': {'max_sub_calls': 10**9}},
                {'method': 'configure', 'max_sub_calls': 10**9},
                {'method': 'llm_batch', 'prompts': ['c'] * 3}):
    out.append(json.loads(builtins.input(rpc.PREFIX + json.dumps(payload))).get('ok'))
print(out)
"""


async def test_nothing_in_the_repl_can_raise_a_limit(scripted):
    server = scripted([fenced(HOSTILE), fenced("print(llm_batch(['d', 'e']))"), fenced("answer['ready'] = True")],
                      sub=lambda request: "fine")
    result = await run_on(server, None, max_sub_calls=4)
    assert result.turns[0].output.strip() == "[True, False, False, False]"  # 3 fit; the rest are refused
    assert len(server.sub_requests) == 3
    assert "sub-call budget exhausted" in result.turns[1].output


async def test_the_tree_shares_one_timeout(scripted):
    slow_child = fenced("import time; time.sleep(60)")
    server = scripted(lambda request: FAN_OUT if "depth left" in request["messages"][0]["content"] else slow_child)
    result = await run_on(server, None, max_depth=2, timeout=8, exec_timeout=120, sandbox="unsafe-local")
    assert result.status == "timeout"
    assert result.timings.total < 60  # the children's sleeps were cut by the tree's deadline


async def test_events_stream_a_run_as_it_happens(scripted):
    server = scripted([fenced("r = llm_batch(['a', 'b'])\nprint(len(r))"), fenced("answer['ready'] = True")],
                      sub=lambda request: "fine")
    events = [event async for event in rlm.arun_events("Go.", "data", model="m", base_url=server.base_url,
                                                        max_retries=0)]
    kinds = [event.kind for event in events]
    assert kinds == ["turn_started", "model_reply", "sub_call", "sub_call", "execution",
                     "turn_started", "model_reply", "execution", "finished"], kinds
    assert events[4].output.strip() == "2" and events[4].turn == 1 and events[-1].result.status == "ready"
    assert all(event.depth == 0 for event in events)


async def test_nested_runs_emit_their_events_with_their_depth(scripted):
    server = scripted(lambda request: FAN_OUT if "depth left" in request["messages"][0]["content"]
                      else fenced("answer['content'] = 'y'; answer['ready'] = True"))
    seen: list[rlm.RunEvent] = []
    result = await run_on(server, None, max_depth=2, on_event=seen.append, sandbox="unsafe-local")
    assert result.status == "ready"
    assert {event.depth for event in seen} == {0, 1}
    assert sum(event.kind == "finished" and event.depth == 1 for event in seen) == 8
    assert seen[-1].kind == "finished" and seen[-1].depth == 0


async def test_a_failing_listener_does_not_lose_the_run(scripted):
    def explode(event: rlm.RunEvent) -> None:
        raise RuntimeError("listener bug")

    server = scripted([fenced("answer['ready'] = True")])
    result = await run_on(server, None, on_event=explode)
    assert result.status == "ready"


async def test_leaving_the_event_stream_early_closes_the_run(scripted):
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    server = scripted([fenced("x = 1")] * 20)
    async for event in rlm.arun_events("Go.", None, model="m", base_url=server.base_url, max_retries=0):
        if event.kind == "execution":
            break
    await asyncio.sleep(0.5)
    assert set(sandbox_processes()) - before_procs == set()
    assert set(sandbox_dirs()) - before_dirs == set()
