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

from environments import ENVIRONMENTS, Task
from rlm.testing import ScriptedServer, fenced
from tests.conftest import sandbox_processes
from tests.oracles import OPTIONS, oracle_code

VF_EVAL = Path(sys.executable).parent / "vf-eval"
#: Small instances of every environment (constructor options as `--env.taskset.options` takes them).


def generated(environment: str = "niah") -> list[Task]:
    return ENVIRONMENTS[environment](**OPTIONS[environment]).generate(2, seed=0)


TASKS = generated()


def vf_eval(server: ScriptedServer, out: Path, *flags: str, environment: str = "niah") -> list[dict[str, Any]]:
    """Run `vf-eval` on the two tasks `generated(environment)` returns; return its traces."""
    command = [
        str(VF_EVAL), "environments", "--env.taskset.environment", environment, "--env.taskset.options",
        json.dumps(OPTIONS[environment]), "--env.taskset.n", "2", "--model", "scripted-root",
        "--client.base-url", server.base_url, "--client.api-key-var", "RLM_TEST_KEY",
        "--no-push", "--no-rich", "-o", str(out), "--run.name", "run", *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RLM_TEST_KEY": "test-key"})
    assert done.returncode == 0, done.stderr[-3000:]
    episodes = [json.loads(line) for line in (out / "run" / "traces.jsonl").read_text().splitlines()]
    assert len(episodes) == 2
    return [trace for episode in episodes for trace in episode["traces"]]


def oracle(environment: str = "niah", wrong: bool = False):
    by_prompt = {task.prompt: task for task in generated(environment)}

    def root(request: dict[str, Any]) -> str:
        return fenced(oracle_code(environment, by_prompt[request["messages"][1]["content"]], wrong=wrong))

    return root


def reward(trace: dict[str, Any]) -> float:
    return trace["rewards"]["reward"]["score"]


@pytest.mark.parametrize("environment", list(OPTIONS))
def test_vf_eval_runs_each_environment_on_our_runtime(scripted, tmp_path, environment):
    server = scripted(oracle(environment))
    traces = vf_eval(server, tmp_path, environment=environment)
    assert sorted(trace["task"]["data"]["task_id"] for trace in traces) == [t.id for t in generated(environment)]
    for trace in traces:
        assert reward(trace) == 1.0, trace["root_reply"]
        assert trace["agent"]["config"]["harness"]["id"] == "environments"
        # The root turn went through verifiers' interception, so its trace holds the call.
        assert len(trace["calls"]) == 1 and trace["info"]["rlm"]["status"] == "ready"
        roles = [node["message"]["role"] for node in trace["nodes"]]
        assert roles == ["system", "user", "assistant"]
    assert len(server.root_requests) == 2
    assert sandbox_processes() == []


def test_wrong_program_scores_less(scripted, tmp_path):
    traces = vf_eval(scripted(oracle(wrong=True)), tmp_path)  # niah, one of two needles dropped
    assert [(reward(t), t["metrics"]["recall"]) for t in traces] == [(0.5, 0.5), (0.5, 0.5)]  # RULER: partial credit


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
