"""Long runs: compaction that keeps the REPL, and sessions that ask follow-up questions in one
sandbox and one conversation."""

from __future__ import annotations

import json

import pytest

import rlm
from rlm.testing import fenced
from tests.conftest import run_on, sandbox_dirs, sandbox_processes

#: A turn that adds to the REPL and prints 2,000 characters: the conversation grows each turn.
GROW = "steps = globals().get('steps', 0) + 1\nprint('x' * 2000)"
USAGE = {"prompt_tokens": 0, "completion_tokens": 10}


def growing(turns: int, final: str = "answer['content'] = str(steps); answer['ready'] = True"):
    """Root replies: `turns` growing turns then a final one; prompt tokens are counted as
    characters / 4 by the scripted server, so the conversation's size is known."""
    return [fenced(GROW)] * turns + [fenced(final)]


async def test_compaction_replaces_old_turns_and_the_repl_keeps_everything(scripted):
    server = scripted(growing(12), sub=lambda request: "summary: steps counts turns; nothing else.")
    result = await run_on(server, None, compaction="summarize", compact_at=3000, keep_turns=2, max_turns=20)
    assert (result.status, result.answer) == ("ready", "12")  # every variable survived
    assert result.compactions, "no compaction happened"
    first = result.compactions[0]
    assert first.tokens_before >= 3000 and first.tokens_after is not None and first.tokens_after < first.tokens_before
    assert first.summary and first.usage.calls == 1 and first.turns_replaced >= 1
    after = server.root_requests[first.turn - 1]["messages"]  # the request of the compacted turn
    assert after[0]["role"] == "system" and "were compacted" in after[1]["content"]
    assert "Answer the question." in after[1]["content"]  # the task is kept
    assert sum(m["role"] == "assistant" for m in after) == 2  # keep_turns
    summarizing = [r for r in server.requests if "compacting the working notes" in r["messages"][0]["content"]]
    assert len(summarizing) == len(result.compactions)
    assert result.turns[first.turn - 1].compacted and not result.turns[first.turn - 2].compacted


async def test_history_in_the_repl_holds_the_whole_transcript(scripted):
    final = "answer['content'] = json.dumps([len(history), history[1]['content']]); answer['ready'] = True"
    server = scripted([fenced("import json"), *growing(8, final)])
    result = await run_on(server, None, compaction="drop", compact_at=2500, keep_turns=1, max_turns=20)
    assert result.status == "ready" and result.compactions
    length, question = json.loads(result.answer)
    assert question == "Answer the question." and length >= 2 * (result.compactions[-1].turn - 1)
    assert result.compactions[0].summary is None and result.compactions[0].usage.calls == 0  # drop: no call


async def test_compaction_points_are_deterministic(scripted):
    points = []
    for _ in range(2):
        server = scripted(growing(12), sub=lambda request: "summary")
        result = await run_on(server, None, compaction="summarize", compact_at=3000, max_turns=20)
        points.append([(c.turn, c.tokens_before, c.tokens_after) for c in result.compactions])
    assert points[0] == points[1] and points[0]


async def test_compact_at_as_a_fraction_of_the_servers_context_window(scripted):
    server = scripted(growing(10), sub=lambda request: "summary", max_model_len=4000)
    result = await run_on(server, None, compaction="summarize", compact_at=0.75, max_turns=20)
    assert result.status == "ready" and result.compactions and result.compactions[0].tokens_before >= 3000


async def test_a_fraction_without_a_known_window_is_a_clear_error(scripted):
    server = scripted(growing(10))
    result = await run_on(server, None, compaction="drop", compact_at=0.5, max_turns=20)
    assert result.status == "error" and "context_window" in result.error


async def test_a_compaction_starts_a_new_training_sequence(scripted):
    server = scripted(growing(8), sub=lambda request: "summary")
    result = await run_on(server, None, compaction="drop", compact_at=2500, max_turns=20,
                          extra_body={"return_token_ids": True})
    samples = rlm.to_samples(result)
    assert len(samples) == len(result.compactions) + 1


async def test_a_session_answers_follow_ups_in_one_sandbox(scripted):
    server = scripted([
        fenced("rows = context.splitlines()\nanswer['content'] = str(len(rows)); answer['ready'] = True"),
        fenced("answer['content'] = str(sum(r.startswith('admin') for r in rows)); answer['ready'] = True"),
        fenced("answer['content'] = repr(answers); answer['ready'] = True"),
    ])
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    async with rlm.Session(model="m", base_url=server.base_url, max_retries=0, data="admin a\nuser b\nadmin c") as session:
        first = await session.ask("How many users?")
        second = await session.ask("How many admins?")  # `rows` survived the first question
        third = await session.ask("What did you answer so far?")
    assert (first.answer, second.answer, third.answer) == ("3", "2", "['3', '2']")
    assert session.answers == ["3", "2", "['3', '2']"]
    assert len(first.turns) == len(second.turns) == 1
    asked = [m["content"] for m in server.root_requests[-1]["messages"] if m["role"] == "user"]
    assert asked[0] == "How many users?" and "How many admins?" in asked  # one conversation
    assert set(sandbox_processes()) - before_procs == set() and set(sandbox_dirs()) - before_dirs == set()


async def test_a_session_takes_its_sandbox_from_the_pool(scripted):
    server = scripted([fenced("answer['ready'] = True")] * 2)
    async with rlm.SandboxPool("local", 1) as pool:
        async with rlm.Session(model="m", base_url=server.base_url, max_retries=0, pool=pool) as session:
            await session.ask("One?")
            await session.ask("Two?")
        assert pool.handed_out == 1


async def test_interrupting_stops_the_question_not_the_session(scripted):
    import asyncio

    server = scripted([fenced("import time\nx = 41\ntime.sleep(60)"), fenced("answer['content'] = str(x + 1); "
                                                                             "answer['ready'] = True")])
    async with rlm.Session(model="m", base_url=server.base_url, max_retries=0) as session:
        asking = asyncio.ensure_future(session.ask("Sleep."))
        while not server.root_requests:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # inside the sleep
        await session.interrupt()
        stopped = await asyncio.wait_for(asking, 30)
        assert stopped.status == "interrupted" and "KeyboardInterrupt" in stopped.turns[0].output
        after = await session.ask("Go on.")
    assert (after.status, after.answer) == ("ready", "42")  # the REPL kept its state


async def test_a_closed_session_refuses_questions(scripted):
    session = rlm.Session(model="m", base_url=scripted([]).base_url)
    await session.close()
    with pytest.raises(rlm.ConfigError, match="closed"):
        await session.ask("?")
