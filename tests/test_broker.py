"""llm_batch through the broker: concurrency, order, failures, sub-tools, depth, usage."""

from __future__ import annotations

import json
import threading

import pytest

from rlm.testing import fenced, is_root
from tests.conftest import ISOLATING, run_on


async def test_32_prompts_run_concurrently_and_return_in_order(scripted):
    # Replies wait until all 32 are in flight: a broker that sent fewer at a time would time out
    # there, with a reply that says so, however slow the machine.
    server = scripted(
        [fenced("r = llm_batch([f'p{i}' for i in range(32)]); print(r == [f'echo: p{i}' for i in range(32)])"),
         fenced("answer['ready'] = True")],
        hold_until_in_flight=32,
    )
    result = await run_on(server, "data", max_sub_concurrency=32)
    assert server.peak_in_flight == 32, [c.error for c in result.sub_calls if c.error][:1]
    assert result.turns[0].output.strip() == "True"
    assert [c.prompt for c in result.sub_calls] == [f"p{i}" for i in range(32)]
    assert result.usage.sub.calls == 32


async def test_concurrency_limit_is_respected(scripted):
    # The first replies wait until 4 are in flight, so the limit is reached however slow the machine.
    server = scripted(
        [fenced("llm_batch([str(i) for i in range(12)])"), fenced("answer['ready'] = True")], hold_until_in_flight=4
    )
    result = await run_on(server, "data", max_sub_concurrency=4)
    assert server.peak_in_flight == 4 and len(server.sub_requests) == 12
    assert not any(c.error for c in result.sub_calls)


async def test_a_failing_prompt_yields_an_error_in_its_slot(scripted):
    def sub(request):
        prompt = request["messages"][-1]["content"]
        return {"status": 500, "error": "boom"} if prompt == "bad" else f"ok {prompt}"

    server = scripted([fenced("print(llm_batch(['a', 'bad', 'c']))"), fenced("answer['ready'] = True")], sub=sub)
    result = await run_on(server, "data")
    slots = eval(result.turns[0].output.strip())  # the printed list
    assert slots[0] == "ok a" and slots[2] == "ok c"
    assert slots[1].startswith("[error]") and "ModelError" in slots[1]
    assert result.sub_calls[1].error and not result.sub_calls[0].error
    assert result.status == "ready"


async def test_sub_tools_loop_and_are_offered_only_to_sub_llms(scripted):
    calls = []

    def lookup(key: str) -> str:
        """Look a key up in the private table."""
        calls.append(key)
        return {"alpha": "1", "beta": "2"}.get(key, "?")

    def sub(request):
        tool_results = [m for m in request["messages"] if m["role"] == "tool"]
        if len(tool_results) < 2:
            key = ["alpha", "beta"][len(tool_results)]
            return {"tool_calls": [{"name": "lookup", "arguments": json.dumps({"key": key})}]}
        return "sum=" + str(sum(int(m["content"]) for m in tool_results))

    server = scripted([fenced("print(llm_batch(['add alpha and beta']))"), fenced("answer['ready'] = True")], sub=sub)
    result = await run_on(server, "data", sub_tools=[lookup])
    assert result.turns[0].output.strip() == "['sum=3']"
    assert calls == ["alpha", "beta"]
    assert result.sub_calls[0].tool_calls == 2 and result.usage.sub.calls == 3
    sub_request = server.sub_requests[0]
    assert sub_request["tools"][0]["function"]["name"] == "lookup"
    assert sub_request["tools"][0]["function"]["parameters"]["required"] == ["key"]
    assert all(t["function"]["name"] == "python" for r in server.root_requests for t in r.get("tools", []))


async def test_depth_zero_disables_llm_batch(scripted):
    server = scripted([fenced("llm_batch(['x'])"), fenced("answer['ready'] = True")])
    result = await run_on(server, "data", max_depth=0)
    assert "disabled" in result.turns[0].output and result.turns[0].error == "RuntimeError"
    assert not server.sub_requests
    assert "Disabled in this run" in server.root_requests[0]["messages"][0]["content"]


async def test_depth_two_runs_each_prompt_as_a_nested_rlm(scripted):
    def root(request):
        task = request["messages"][1]["content"]
        done = len([m for m in request["messages"] if m["role"] == "assistant"])
        if task.startswith("child:"):
            # The nested run: its own REPL, its own sub-call, then an answer.
            if done == 0:
                return fenced(f"r = llm_batch(['leaf of {task}']); answer['content'] = r[0]; answer['ready'] = True")
        elif done == 0:
            return fenced("print(llm_batch(['child:a', 'child:b']))")
        else:
            return fenced("answer['ready'] = True")
        return {"status": 500}

    server = scripted(root)
    result = await run_on(server, "data", max_depth=2, max_retries=0)
    assert result.turns[0].output.strip() == "['echo: leaf of child:a', 'echo: leaf of child:b']"
    assert [c.depth for c in result.sub_calls] == [1, 1]
    child = result.sub_calls[0].child
    assert child is not None and child.status == "ready" and child.sub_calls[0].depth == 2
    usage = result.usage
    assert usage.root.calls == 2
    assert usage.by_depth[1].calls == 2 and usage.by_depth[2].calls == 2  # child roots, leaves
    assert usage.sub.calls == 4
    assert sum(1 for r in server.requests if is_root(r)) == 4


@pytest.mark.parametrize("backend", ISOLATING)
@pytest.mark.parametrize("request_text", ["not json", "[1, 2]", '{"method": "rm -rf"}', '{"method": "llm_batch", "prompts": [1]}'])
async def test_malformed_rpc_gets_an_error_not_a_crash(scripted, request_text, backend):
    code = f"import builtins, json; print(json.loads(builtins.input('\\x00rlm-rpc:' + {request_text!r})))"
    server = scripted([fenced(code), fenced("answer['ready'] = True")])
    result = await run_on(server, "data", sandbox=backend)
    printed = result.turns[0].output
    assert "'ok': False" in printed
    assert result.status == "ready" and not server.sub_requests


async def test_transient_server_errors_are_retried(scripted):
    failures = {"429": 1, "503": 1}

    def sub(request):
        prompt = request["messages"][-1]["content"]
        if failures.get(prompt):
            failures[prompt] -= 1
            return {"status": int(prompt), "error": "try again"}
        return f"ok {prompt}"

    server = scripted([fenced("print(llm_batch(['429', '503']))"), fenced("answer['ready'] = True")], sub=sub)
    result = await run_on(server, "data", max_retries=2)
    assert result.turns[0].output.strip() == "['ok 429', 'ok 503']"
    assert len(server.sub_requests) == 4 and not any(c.error for c in result.sub_calls)


async def test_slow_sub_call_times_out_into_its_slot(scripted):
    # The slow reply never comes while the run lasts, and the fast one has the whole timeout:
    # neither outcome depends on the machine's speed.
    released = threading.Event()

    def sub(request):
        prompt = request["messages"][-1]["content"]
        if prompt == "slow":
            released.wait(timeout=120)
        return f"ok {prompt}"

    server = scripted([fenced("print(llm_batch(['slow', 'fast']))"), fenced("answer['ready'] = True")], sub=sub)
    try:
        result = await run_on(server, "data", request_timeout=3)
    finally:
        released.set()
    slots = eval(result.turns[0].output.strip())
    assert slots[1] == "ok fast" and slots[0].startswith("[error]") and "Timeout" in slots[0]
    assert result.status == "ready"


@pytest.mark.parametrize("backend", ISOLATING)
async def test_pip_install_is_brokered_by_the_host(scripted, tmp_path, monkeypatch, backend):
    """A real pure-Python package from PyPI: the host downloads it, the offline sandbox imports it."""
    monkeypatch.setenv("RLM_WHEELHOUSE", str(tmp_path / "wheels"))
    server = scripted([
        fenced("print(pip_install(['inflection==0.5.1']))\nimport inflection\nprint(inflection.camelize('rlm_lab'))"),
        fenced("answer['ready'] = True"),
    ])
    result = await run_on(server, "data", allow_pip=["inflection"], sandbox=backend)
    assert result.turns[0].output.strip().splitlines() == ["['inflection-0.5.1-py2.py3-none-any.whl']", "RlmLab"]
    assert "pip_install" in server.root_requests[0]["messages"][0]["content"]
    assert (tmp_path / "wheels" / "inflection-0.5.1-py2.py3-none-any.whl").exists()  # the configured wheelhouse


@pytest.mark.parametrize(("policy", "request_", "message"), [
    (False, "['six']", "disabled"),
    (["six"], "['inflection']", "not allowed"),
    (True, "['--index-url=http://127.0.0.1:1/ six']", "not a plain requirement"),
])
async def test_pip_install_refusals_are_clear_errors(scripted, policy, request_, message):
    server = scripted([fenced(f"pip_install({request_})"), fenced("answer['ready'] = True")])
    result = await run_on(server, "data", allow_pip=policy)
    assert message in result.turns[0].output and result.turns[0].error == "RuntimeError"
