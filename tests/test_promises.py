"""The README's promises about the Python API, held from outside: the sync entry points, the
environment fallbacks, the sub model and server, tips, sampling settings, retries and training
rollouts, each observed in the HTTP traffic a scripted server records."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import environments
import rlm
from environments import NeedleInAHaystack
from rlm.testing import fenced
from tests.conftest import run_on
from tests.oracles import oracle_code

FINISH = fenced("answer.update(content=str(len(context)), ready=True)")


def task_prompt(request: dict[str, Any]) -> str:
    return request["messages"][1]["content"]


def system_prompt(request: dict[str, Any]) -> str:
    return request["messages"][0]["content"]


def test_sync_run_returns_the_result(scripted):
    server = scripted([fenced("n = len(context)"), FINISH])
    result = rlm.run("How long is it?", "abcd", model="scripted-root", base_url=server.base_url, max_retries=0)
    assert (result.status, result.answer, len(result.turns)) == ("ready", "4", 2)
    assert result.model == "scripted-root" and result.usage.root.calls == 2


def test_a_reusable_runner_runs_each_prompt_on_its_own_data_within_its_config(scripted):
    server = scripted(lambda request: FINISH if task_prompt(request) == "finish" else fenced("x = 1"))
    runner = rlm.RLM(rlm.RLMConfig(model="scripted-root", base_url=server.base_url, max_turns=2, max_retries=0))
    first, second = runner.run("finish", "abc"), runner.run("finish", "abcde")
    assert [(r.status, r.answer) for r in (first, second)] == [("ready", "3"), ("ready", "5")]
    dawdling = runner.run("dawdle", "abc")
    assert dawdling.status == "max_turns" and len(dawdling.turns) == 2
    assert len(server.root_requests) == 4


def test_model_base_url_and_key_fall_back_to_the_environment(scripted, monkeypatch):
    server = scripted([fenced("print(llm_batch(['hi']))"), FINISH])
    monkeypatch.setenv("RLM_MODEL", "model-from-env")
    monkeypatch.setenv("RLM_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    result = rlm.run("How long is it?", "abcd", max_retries=0)
    assert (result.status, result.answer) == ("ready", "4")
    assert [r["model"] for r in server.requests] == ["model-from-env"] * 3  # two root turns, one sub-call
    assert [h["authorization"] for h in server.headers] == ["Bearer sk-from-env"] * 3


def test_an_explicit_model_and_key_win_over_the_environment(scripted, monkeypatch):
    server = scripted([FINISH])
    monkeypatch.setenv("RLM_MODEL", "model-from-env")
    monkeypatch.setenv("RLM_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    result = rlm.run("q", "ab", model="explicit", base_url=server.base_url, api_key="sk-explicit", max_retries=0)
    assert result.status == "ready"
    assert server.requests[0]["model"] == "explicit" and server.headers[0]["authorization"] == "Bearer sk-explicit"


async def test_sub_calls_go_to_the_sub_model_on_the_sub_server(scripted):
    root = scripted([fenced("print(llm_batch(['a', 'b']))"), FINISH])
    sub = scripted([], sub=lambda request: f"{request['model']} read {request['messages'][-1]['content']}")
    result = await run_on(root, "abc", api_key="root-key", sub_model="helper", sub_base_url=sub.base_url,
                          sub_api_key="sub-key")
    assert result.turns[0].output.strip() == "['helper read a', 'helper read b']"
    assert root.sub_requests == [] and sub.root_requests == []
    assert [r["model"] for r in sub.requests] == ["helper", "helper"]
    assert [h["authorization"] for h in sub.headers] == ["Bearer sub-key"] * 2
    assert [h["authorization"] for h in root.headers] == ["Bearer root-key"] * 2
    assert result.sub_model == "helper" and result.usage.by_model["helper"].calls == 2


async def test_sub_model_alone_uses_the_root_server(scripted):
    server = scripted([fenced("print(llm_batch(['a']))"), FINISH])
    result = await run_on(server, "abc", sub_model="helper")
    assert result.status == "ready"
    assert [r["model"] for r in server.sub_requests] == ["helper"]
    assert {r["model"] for r in server.root_requests} == {"scripted-root"}


async def test_tips_are_appended_to_the_root_prompt(scripted):
    tips = "Split the context on blank lines before counting anything."
    with_tips, without = scripted([FINISH]), scripted([FINISH])
    await run_on(with_tips, "abc", tips=tips)
    await run_on(without, "abc")
    assert tips in system_prompt(with_tips.root_requests[0])
    assert system_prompt(with_tips.root_requests[0]).startswith(system_prompt(without.root_requests[0]).rstrip())


@pytest.mark.parametrize("mode", ["rlm", "rlm+tips"])
async def test_the_rlm_tips_mode_gives_the_environment_tips_to_the_root_model(scripted, tmp_path, mode):
    env = NeedleInAHaystack(length=1000)
    task = env.generate(1, seed=0)[0]
    server = scripted([fenced(oracle_code("niah", task))])
    summary = await environments.evaluate([env], model="m", base_url=server.base_url, modes=[mode],
                                          tasks={"niah": [task]}, out=tmp_path, progress=False, max_retries=0)
    assert summary.rows[0].reward_mean == 1.0
    assert env.tips and (env.tips.strip() in system_prompt(server.root_requests[0])) == (mode == "rlm+tips")


async def test_temperature_max_tokens_and_extra_body_reach_the_server(scripted):
    server = scripted([fenced("x = 1"), FINISH])
    extra = {"top_k": 7, "chat_template_kwargs": {"enable_thinking": False}}
    await run_on(server, "abc", temperature=0.25, max_tokens=123, extra_body=extra)
    assert len(server.root_requests) == 2
    for request in server.root_requests:
        assert (request["temperature"], request["max_tokens"]) == (0.25, 123)
        assert {key: request[key] for key in extra} == extra  # extra_body's keys at the body's top level


async def test_without_sampling_settings_the_server_chooses(scripted):
    server = scripted([FINISH])
    await run_on(server, "abc")
    assert not {"temperature", "max_tokens", "top_k"} & set(server.root_requests[0])


@pytest.mark.parametrize("status", [408, 409])
async def test_a_request_answered_with_a_retryable_status_is_sent_again(scripted, status):
    server = scripted([{"status": status, "error": "try again"}, FINISH])
    result = await run_on(server, "abc", max_retries=1)
    assert (result.status, result.answer) == ("ready", "3")
    assert len(server.root_requests) == 2 and server.bodies[0] == server.bodies[1]  # the same request, resent


class DroppingListener:
    """A TCP port on loopback that accepts each connection and closes it unanswered, counting them."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (a close alone does not)
        self._socket.close()
        self._thread.join(timeout=5)


@pytest.fixture
def dropping() -> Iterator[DroppingListener]:
    listener = DroppingListener()
    yield listener
    listener.close()


def refused_url() -> str:
    """A loopback URL whose port nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_a_dropped_connection_is_retried_then_recorded_as_the_runs_error(dropping):
    result = await rlm.arun("q", "abc", model="m", base_url=dropping.base_url, max_retries=2)
    assert dropping.connections == 3  # the first attempt and two retries
    assert result.status == "error" and "ModelError" in result.error and "APIConnectionError" in result.error


async def test_a_refused_root_connection_ends_the_run_with_an_error():
    result = await rlm.arun("q", "abc", model="m", base_url=refused_url(), max_retries=1)
    assert result.status == "error" and "APIConnectionError" in result.error
    assert result.turns == []


async def test_a_refused_sub_connection_is_a_failed_slot_and_the_run_goes_on(scripted):
    server = scripted([fenced("r = llm_batch(['a']); print(r[0][:7])"), FINISH])
    result = await run_on(server, "abc", sub_base_url=refused_url(), max_retries=1)
    assert result.turns[0].output.strip() == "[error]"
    assert "APIConnectionError" in result.sub_calls[0].error
    assert (result.status, result.answer) == ("ready", "3")


@pytest.mark.parametrize("include", [False, True])
async def test_training_rollouts_keep_sub_calls_only_when_asked(scripted, include):
    env = NeedleInAHaystack(length=1000)
    task = env.generate(1, seed=0)[0]
    server = scripted([fenced("print(llm_batch(['look', 'again']))"), fenced(oracle_code("niah", task))])
    asked = {"include_sub_calls": True} if include else {}
    out = await rlm.rollout(env, task, model="m", base_url=server.base_url, max_retries=0, **asked)
    assert out.reward == 1.0 and len(server.sub_requests) == 2
    assert [c.prompt for c in out.result.sub_calls] == (["look", "again"] if include else [])
    assert [c.completion for c in out.result.sub_calls] == (["echo: look", "echo: again"] if include else [])
    assert out.result.usage.sub.calls == 2  # the usage counts them either way
    assert len(out.samples) == 1  # the samples are the root model's: one merged sequence
