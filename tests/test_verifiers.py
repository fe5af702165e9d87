"""The verifiers plug-in, driven through verifiers' own `vf-eval` entry point (a real process)
against the scripted server: rewards from our environments, root turns in verifiers' trace,
sub-calls in or out of it, the plain-LLM mode, and a dead model recorded as a trace error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from environments import NeedleInAHaystack
from tests.conftest import sandbox_processes
from tests.oracles import oracle_code
from tests.scripted_server import ScriptedServer, fenced

VF_EVAL = Path(sys.executable).parent / "vf-eval"
NIAH = {"length": 20_000, "needles": 2}
TASKS = NeedleInAHaystack(**NIAH).generate(2, seed=0)
BY_PROMPT = {task.prompt: task for task in TASKS}


def vf_eval(server: ScriptedServer, out: Path, *flags: str) -> list[dict[str, Any]]:
    """Run `vf-eval` on two niah tasks; return its traces (one per rollout)."""
    command = [
        str(VF_EVAL), "environments", "--env.taskset.environment", "niah", "--env.taskset.options",
        json.dumps(NIAH), "--env.taskset.n", str(len(TASKS)), "--model", "scripted-root",
        "--client.base-url", server.base_url, "--client.api-key-var", "RLM_TEST_KEY",
        "--no-push", "--no-rich", "-o", str(out), "--run.name", "run", *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RLM_TEST_KEY": "test-key"})
    assert done.returncode == 0, done.stderr[-3000:]
    episodes = [json.loads(line) for line in (out / "run" / "traces.jsonl").read_text().splitlines()]
    assert len(episodes) == len(TASKS)
    return [trace for episode in episodes for trace in episode["traces"]]


def oracle(wrong: bool = False):
    def root(request: dict[str, Any]) -> str:
        return fenced(oracle_code("niah", BY_PROMPT[request["messages"][1]["content"]], wrong=wrong))

    return root


def reward(trace: dict[str, Any]) -> float:
    return trace["rewards"]["reward"]["score"]


def test_vf_eval_runs_our_environment_on_our_runtime(scripted, tmp_path):
    server = scripted(oracle())
    traces = vf_eval(server, tmp_path)
    for trace in traces:
        expected = next(t.expected for t in TASKS if t.id == trace["task"]["data"]["task_id"])
        assert reward(trace) == 1.0 and trace["metrics"]["recall"] == 1.0
        assert trace["root_reply"] == ", ".join(expected)
        assert trace["agent"]["config"]["harness"]["id"] == "environments"
        # The root turn went through verifiers' interception, so its trace holds the call.
        assert len(trace["calls"]) == 1 and trace["info"]["rlm"]["status"] == "ready"
        roles = [node["message"]["role"] for node in trace["nodes"]]
        assert roles == ["system", "user", "assistant"]
    assert len(server.root_requests) == len(TASKS)
    assert sandbox_processes() == []


def test_wrong_program_scores_less(scripted, tmp_path):
    traces = vf_eval(scripted(oracle(wrong=True)), tmp_path)
    assert [(reward(t), t["metrics"]["recall"]) for t in traces] == [(0.0, 0.5), (0.0, 0.5)]


SUB_PROGRAM = """
replies = llm_batch([f"needle {i}" for i in range(3)])
answer['content'] = str(len(replies))
answer['ready'] = True
"""


@pytest.mark.parametrize("include_sub_calls", [False, True])
def test_sub_calls_stay_out_of_the_trace_unless_included(scripted, tmp_path, include_sub_calls):
    server = scripted(lambda request: fenced(SUB_PROGRAM))
    flags = ["--env.agent.harness.include-sub-calls", "true"] if include_sub_calls else []
    traces = vf_eval(server, tmp_path, *flags)
    assert len(server.sub_requests) == 3 * len(TASKS)
    for trace in traces:
        assert trace["root_reply"] == "3" and trace["metrics"]["sub_calls"] == 3
        if include_sub_calls:
            assert len(trace["calls"]) == 4 and trace["extra_usage"] == []
        else:
            assert len(trace["calls"]) == 1
            assert trace["extra_usage"][0]["completion_tokens"] > 0


def test_plain_llm_mode_puts_the_data_in_the_prompt(scripted, tmp_path):
    def answer(request: dict[str, Any]) -> str:
        prompt = request["messages"][-1]["content"]
        task = next(t for t in TASKS if prompt.endswith(t.prompt))
        assert task.data in prompt
        return ", ".join(task.expected)

    server = scripted(sub=answer)
    traces = vf_eval(server, tmp_path, "--env.agent.harness.mode", "llm")
    assert [reward(trace) for trace in traces] == [1.0, 1.0]
    assert all(len(trace["calls"]) == 1 for trace in traces)


def test_dead_model_server_is_a_trace_error_not_a_hang(scripted, tmp_path):
    server = scripted(lambda request: {"status": 500, "error": "model crashed"})
    traces = vf_eval(server, tmp_path, "--env.agent.harness.settings.max-retries", "0")
    for trace in traces:
        assert not trace["ok"] and "model crashed" in json.dumps(trace["errors"])
        assert trace["info"]["rlm"]["status"] == "error"
    assert sandbox_processes() == []
