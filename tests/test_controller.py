"""The turn loop end to end: real sandbox, real HTTP, scripted model."""

from __future__ import annotations

import json

import pytest

from rlm.testing import fenced, python_call
from tests.conftest import ISOLATING, run_on
from tests.controller_process import run_controller

MARKER = "NEEDLE-7f3a9c"


async def test_data_lives_in_repl_and_never_in_root_requests(scripted):
    data = "filler line\n" * 500 + f"the secret is {MARKER}\n" + "more filler\n" * 500
    server = scripted([
        fenced(f"i = context.find('{MARKER[:6]}'); print(i)"),
        fenced("answer['content'] = context[i:i+13]; answer['ready'] = True"),
    ])
    result = await run_on(server, data)
    assert result.status == "ready"
    assert result.answer == MARKER
    root_bodies = [b for b in server.bodies if b"persistent Python REPL" in b]
    assert len(root_bodies) == 2
    assert all(MARKER.encode() not in body for body in root_bodies)
    assert f"{len(data):,} characters" in json.dumps(server.root_requests[0]["messages"][0])  # size described
    assert result.turns[0].output.strip() == str(data.find(MARKER[:6]))


async def test_state_persists_and_ready_returns_content(scripted):
    server = scripted([
        fenced("x = 20"),
        fenced("y = x + 1"),
        fenced("answer['content'] = str(x + y)"),
        fenced("answer['content'] += '!'; answer['ready'] = True"),
    ])
    result = await run_on(server, "data")
    assert (result.status, result.answer) == ("ready", "41!")
    assert [t.answer for t in result.turns] == [None, None, "41", "41!"]  # None: unchanged
    assert result.usage.root.calls == 4


async def test_max_turns_keeps_last_content(scripted):
    server = scripted([fenced(f"answer['content'] = 'draft {i}'") for i in range(3)])
    result = await run_on(server, "data", max_turns=3)
    assert result.status == "max_turns"
    assert result.answer == "draft 2"
    assert "1 turn left" in server.root_requests[-1]["messages"][-1]["content"]


async def test_reply_without_code_is_nudged_and_counts(scripted):
    server = scripted(["I think the answer is 4.", fenced("answer.update(content='4', ready=True)")])
    result = await run_on(server, "data")
    assert result.status == "ready" and len(result.turns) == 2
    assert result.turns[0].error == "no code"
    assert "ran no code" in server.root_requests[1]["messages"][-1]["content"]


async def test_all_blocks_of_a_reply_run_in_order(scripted):
    server = scripted([fenced("a = [1]", "a.append(2)", "print(a)"), fenced("answer['ready'] = True")])
    result = await run_on(server, "data")
    assert result.turns[0].code == ["a = [1]", "a.append(2)", "print(a)"]
    assert "[1, 2]" in result.turns[0].output


async def test_exceptions_go_back_to_the_model_and_the_loop_goes_on(scripted):
    server = scripted([
        fenced("def f(:\n  pass"),
        fenced("1 / 0", "print('not reached')"),
        fenced("answer['content'] = 'recovered'; answer['ready'] = True"),
    ])
    result = await run_on(server, "data")
    assert result.status == "ready" and result.answer == "recovered"
    assert result.turns[0].error == "SyntaxError"
    assert result.turns[1].error == "ZeroDivisionError"
    feedback = server.root_requests[2]["messages"][-1]["content"]
    assert "ZeroDivisionError" in feedback and "not run" in feedback
    assert "not reached" not in feedback


async def test_infinite_loop_is_interrupted_and_kernel_survives(scripted):
    server = scripted([
        fenced("keep = 'still here'"),
        fenced("while True:\n    pass"),
        fenced("answer['content'] = keep; answer['ready'] = True"),
    ])
    result = await run_on(server, "data", exec_timeout=1.5)
    assert result.turns[1].timed_out and not result.turns[1].restarted
    assert "timed out after 1.5s" in server.root_requests[2]["messages"][-1]["content"]
    assert (result.status, result.answer) == ("ready", "still here")


async def test_kernel_exit_is_a_recorded_recovery(scripted):
    server = scripted([
        fenced("answer['content'] = 'partial'; lost = 1"),
        fenced("import os; os._exit(1)"),
        fenced("print('lost' in globals(), len(context), answer['content'])"),
        fenced("answer['ready'] = True"),
    ])
    result = await run_on(server, "0123456789")
    crashed = result.turns[1]
    assert crashed.error.startswith("SandboxCrashed") and crashed.restarted
    assert "all REPL state was lost" in server.root_requests[2]["messages"][-1]["content"]
    assert result.turns[2].output.strip() == "False 10 partial"
    assert (result.status, result.answer) == ("ready", "partial")


async def test_huge_output_is_truncated_and_memory_stays_bounded(scripted):
    server = scripted([
        fenced("for _ in range(50):\n    print('x' * 1_000_000)"),
        fenced("answer['ready'] = True"),
    ])
    baseline = run_controller(scripted([fenced("answer['ready'] = True")]).base_url, max_output_chars=2000)
    report = run_controller(server.base_url, max_output_chars=2000)  # memory measured in its own process
    feedback = server.root_requests[1]["messages"][-1]["content"]
    assert report["status"] == "ready" and len(feedback) < 3000
    assert "characters cut" in feedback and report["chars_cut"][0] > 49_000_000
    grown_mb = report["peak_rss_mb"] - baseline["peak_rss_mb"]
    assert grown_mb < 100, f"controller grew by {grown_mb:.0f} MB for 50 MB of output"


async def test_root_token_budget(scripted):
    server = scripted([fenced("x = 1")] * 5)
    result = await run_on(server, "data", max_root_tokens=10)
    assert result.status == "budget" and len(result.turns) == 1


@pytest.mark.parametrize("backend", ISOLATING)
async def test_sub_call_budget_refuses_then_ends_the_run(scripted, backend):
    server = scripted([
        fenced("print(llm_batch(['a', 'b']))"),
        fenced("print(llm_batch(['c', 'd']))"),
        fenced("print(llm_batch(['e', 'f']))"),
        fenced("answer['ready'] = True"),
    ])
    result = await run_on(server, "data", max_sub_calls=3, sandbox=backend)
    assert "budget exhausted" in result.turns[1].output
    assert len(result.sub_calls) == 2
    assert result.status == "budget" and len(result.turns) == 3


@pytest.mark.parametrize("backend", ISOLATING)
async def test_run_timeout(scripted, backend):
    # Only the run's timeout (6 s) or the execution's (250 s) can end this cell: a run that ends
    # in less than 200 s was ended by its own timeout, however slow the machine.
    server = scripted([fenced("import time; time.sleep(3600)")])
    result = await run_on(server, "data", timeout=6, exec_timeout=250, sandbox=backend)
    assert result.status == "timeout"
    assert result.timings.total < 200


async def test_dead_server_is_a_typed_error(scripted):
    server = scripted([])
    server.__exit__(None, None, None)
    result = await run_on(server, "data")
    assert result.status == "error" and "ModelError" in result.error


async def test_tool_call_mode(scripted):
    server = scripted([
        python_call("x = len(context)"),
        {"content": "", "tool_calls": [
            {"name": "python", "arguments": json.dumps({"code": "answer['content'] = str(x)"})},
            {"name": "python", "arguments": json.dumps({"code": "answer['ready'] = True"})},
        ]},
    ])
    result = await run_on(server, "abcdef", code_format="tool")
    assert (result.status, result.answer) == ("ready", "6")
    first = server.root_requests[0]
    assert first["tools"][0]["function"]["name"] == "python"
    second = server.root_requests[1]["messages"]
    call = next(m for m in second if m["role"] == "assistant")["tool_calls"][0]
    reply = next(m for m in second if m["role"] == "tool")
    assert reply["tool_call_id"] == call["id"]
    third = server.root_requests[2]["messages"] if len(server.root_requests) > 2 else []
    assert not third  # the second reply's two calls finished the run


async def test_result_round_trips_through_json(scripted):
    server = scripted([fenced("print(llm_batch(['hi']))"), fenced("answer.update(content='ok', ready=True)")])
    result = await run_on(server, "data")
    again = type(result).model_validate_json(result.model_dump_json())
    assert again == result
    assert again.sub_calls[0].completion == "echo: hi"


@pytest.mark.parametrize("value", [["not", "a", "dict"], "plain string"])
async def test_answer_rebound_to_non_dict_is_reset(scripted, value):
    server = scripted([
        fenced("answer['content'] = 'kept'"),
        fenced(f"answer = {value!r}"),
        fenced("print(type(answer).__name__, answer['content'])"),
        fenced("answer['ready'] = True"),
    ])
    result = await run_on(server, "data")
    assert "no longer a dict" in server.root_requests[2]["messages"][-1]["content"]
    assert result.turns[2].output.strip() == "dict kept"
    assert result.status == "ready"
