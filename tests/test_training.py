"""Rollouts as training data: exact multi-turn token bookkeeping, masks, rewards, advantages."""

from __future__ import annotations

import rlm
from environments import NeedleInAHaystack
from rlm.trajectory import Result, Turn
from tests.oracles import oracle_code
from tests.scripted_server import fenced


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
    generated = "".join(chr(i) for i, m in zip(sample.input_ids, sample.loss_mask) if m)
    assert generated == "".join(t.assistant + "<|end|>" for t in out.result.turns)
    masked = "".join(chr(i) for i, m in zip(sample.input_ids, sample.loss_mask) if not m)
    assert "persistent Python REPL" in masked and str(len(task.data)) in masked  # system, REPL output
    assert len(sample.logprobs) == len(sample.input_ids)
    assert all((lp == -0.5) == bool(m) for lp, m in zip(sample.logprobs, sample.loss_mask))


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
