"""Rollouts as training data: exact multi-turn token bookkeeping, masks, rewards, advantages."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rlm
from environments import MathPython, NeedleInAHaystack
from rlm.testing import fenced
from rlm.trajectory import Result, Turn
from tests.oracles import oracle_code


async def test_rollout_turns_merge_into_one_masked_sequence(scripted):
    env = NeedleInAHaystack(length=2000)
    task = env.generate(1, seed=0)[0]
    server = scripted([fenced("print(len(context))"), fenced(oracle_code("niah", task))])
    out = await rlm.rollout(env, task, model="m", base_url=server.base_url, seed=3, max_retries=0)
    assert out.reward == 1.0 and out.result.status == "ready" and out.seed == 3
    assert all(r.get("seed") == 3 and r.get("return_token_ids") for r in server.root_requests)
    [sample] = out.samples  # the toy template extends each prompt: one sequence for both turns
    last = out.result.turns[-1]
    assert sample.input_ids == last.prompt_ids + last.completion_ids
    generated = "".join(chr(i) for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m)
    assert generated == "".join(t.assistant + "<|end|>" for t in out.result.turns)
    masked = "".join(chr(i) for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if not m)
    assert "persistent Python REPL" in masked and str(len(task.data)) in masked  # system, REPL output
    assert len(sample.logprobs) == len(sample.input_ids)
    assert all((lp == -0.5) == bool(m) for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True))
    assert sample.prompt_length == len(out.result.turns[0].prompt_ids)


def test_a_template_that_rewrites_history_starts_a_new_sequence():
    first = Turn(index=1, assistant="a", prompt_ids=[1, 2], completion_ids=[3], logprobs=[-0.1])
    rewritten = Turn(index=2, assistant="b", prompt_ids=[1, 2, 9, 4], completion_ids=[5], logprobs=[-0.2])
    extended = Turn(index=3, assistant="c", prompt_ids=[1, 2, 9, 4, 5, 6], completion_ids=[7], logprobs=[-0.3])
    samples = rlm.to_samples(Result(turns=[first, rewritten, extended]))
    assert [s.input_ids for s in samples] == [[1, 2, 3], [1, 2, 9, 4, 5, 6, 7]]
    assert samples[1].loss_mask == [0, 0, 0, 0, 1, 0, 1]
    assert samples[1].logprobs == [0, 0, 0, 0, -0.2, 0, -0.3]


async def test_group_advantages(scripted):
    env = NeedleInAHaystack(length=1000)
    task = env.generate(1, seed=0)[0]
    replies = iter([oracle_code("niah", task), oracle_code("niah", task, wrong=True)] * 2)
    server = scripted(lambda request: fenced(next(replies)))
    group = await rlm.rollout_group(env, task, 4, model="m", base_url=server.base_url, max_retries=0)
    assert sorted(r.reward for r in group) == [0.0, 0.0, 1.0, 1.0]
    assert sorted(round(r.advantage, 3) for r in group) == [-1.0, -1.0, 1.0, 1.0]
    assert sorted(r.seed for r in group) == [0, 1, 2, 3]


def test_readme_grpo_example_runs(scripted, tmp_path):
    """The README's GRPO block, run as written. The scripted policy solves every other rollout, with
    replies of known length, so the printed loss is predictable: at ratio 1 it is minus the
    token-weighted mean advantage, and each group of 4 holds two +1 and two -1 advantages."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"<!-- grpo-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    tasks = MathPython().generate(2, seed=0)
    right = {task.prompt: fenced(oracle_code("math_python", task)) for task in tasks}
    wrong = fenced("answer['content'] = 'no idea'\nanswer['ready'] = True")
    solves = itertools.cycle([True, False])
    server = scripted(lambda request: right[request["messages"][1]["content"]] if next(solves) else wrong)
    script = tmp_path / "grpo.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RLM_MODEL": "policy", "RLM_BASE_URL": server.base_url})
    assert done.returncode == 0, done.stderr[-3000:]
    sequences, tokens, loss = re.fullmatch(
        r"(\d+) sequences, (\d+) trained tokens, loss at the sampling policy (-?[\d.]+)\n", done.stdout).groups()
    length = {reply: len(reply + "<|end|>") for reply in [*right.values(), wrong]}  # the toy template's ids
    assert int(sequences) == 8 and len(server.root_requests) == 8
    assert int(tokens) == sum(2 * (length[right[t.prompt]] + length[wrong]) for t in tasks)
    expected = -sum(2 * (length[right[t.prompt]] - length[wrong]) for t in tasks) / int(tokens)
    assert float(loss) == pytest.approx(expected, abs=1e-4)
