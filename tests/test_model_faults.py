"""What a model server can do wrong, and what a run makes of it: a recorded, typed failure (or a
run that goes on), never an exception out of `rlm.run` and never a hang."""

from __future__ import annotations

import json

import pytest

from rlm.testing import fenced
from tests.conftest import run_on

DONE = fenced("answer['content'] = 'done'; answer['ready'] = True")


@pytest.mark.parametrize(("fault", "message"), [
    ({"raw": "<html>502 Bad Gateway</html>"}, "not a chat completion"),  # 200, a body that is not JSON
    ({"raw": '{"id": "x", "choices": '}, "not a chat completion"),  # JSON cut short
    ({"choices": []}, "no choices"),
    ({"raw": '{"choices": "none"}'}, "no list of choices"),  # JSON, but not the schema
    ({"raw": '[1, 2]'}, "no list of choices"),
    ({"choices": [{"index": 0, "message": None}]}, "has no message"),
    ({"choices": [7]}, "has no message"),
    ({"raw": "[" * 100_000}, "not a chat completion"),  # past json's recursion limit
    ({"hang_up": True}, "Connection"),
    ({"status": 503, "error": "overloaded"}, "503"),
])
async def test_a_root_fault_ends_the_run_with_a_recorded_model_error(scripted, fault, message):
    server = scripted([fault])
    result = await run_on(server, "data")
    assert result.status == "error" and result.error.startswith("ModelError"), result.error
    assert message in result.error


async def test_a_stalled_root_server_ends_the_run_at_the_request_timeout(scripted):
    server = scripted([DONE], root_latency=30)
    result = await run_on(server, "data", request_timeout=1)
    assert result.status == "error" and "Timeout" in result.error, result.error


async def test_null_content_is_an_empty_reply_and_the_run_goes_on(scripted):
    server = scripted([{"content": None}, DONE])
    result = await run_on(server, "data")
    assert (result.status, result.answer) == ("ready", "done")
    assert result.turns[0].assistant == "" and result.turns[0].error_kind == "no_code"


@pytest.mark.parametrize("fault", [{"status": 500}, {"raw": "not json"}, {"hang_up": True}, {"choices": []}])
async def test_a_sub_call_fault_is_its_slots_error_and_the_run_goes_on(scripted, fault):
    server = scripted([fenced("r = llm_batch(['a', 'b'])\nprint(r[0][:7], r[1][:7])"), DONE],
                      sub=lambda request: fault if "a" in request["messages"][-1]["content"] else "fine")
    result = await run_on(server, "data")
    assert (result.status, result.answer) == ("ready", "done")
    assert result.turns[0].output.strip() == "[error] fine"
    failed = [call for call in result.sub_calls if call.error]
    assert len(failed) == 1 and failed[0].error.startswith("ModelError"), failed


async def test_odd_but_usable_fields_of_a_completion_are_read_not_fatal(scripted):
    """Fields of the wrong type are dropped one by one (content parts joined, a tool call without
    a function skipped, counts that are not ints zero), and the run goes on."""
    reply = {"choices": [{"index": 0, "finish_reason": 3, "message": {
        "role": "assistant", "content": [{"type": "text", "text": "```python\n"}, {"text": 5},
                                         {"type": "text", "text": "answer['ready'] = True\n```"}],
        "tool_calls": ["junk", {"type": "custom", "custom": {}}]}}],
        "usage": {"prompt_tokens": "many", "completion_tokens": None}}
    server = scripted([{"raw": json.dumps(reply)}])
    result = await run_on(server, "data")
    assert result.status == "ready", result.error
    turn = result.turns[0]
    assert turn.code == ["answer['ready'] = True"] and result.usage.root.prompt_tokens == 0
