"""deepdive grades with DeepDive's own judge prompt and reads its verdict tolerantly; without a
judge, only an answer that is the gold scores.

Judge prompt and verdict format: THUDM/DeepDive, training/reward_server/launch_server.py
(`JUDGE_PROMPT`, "Correct: yes/no" parsed by `_parse_answer_correctness`; an empty response scores 0
without a judge call). Rows: zai-org/DeepDive (question, answer).
"""

from __future__ import annotations

import json

import pytest

from environments import DeepDive, Task
from environments.deepdive import judge_verdict
from rlm.models import ModelClient

TASK = Task(id="dd-1", prompt="Which firm was founded by the chemist who studied at the oldest university of Corvia?",
            expected="Arden Works")

DEEPDIVE_REPLY = "Correct: yes\nExtracted final answer: Arden Works\nReason: The response names the reference firm."


@pytest.mark.parametrize(("reply", "verdict"), [
    (DEEPDIVE_REPLY, True),  # DeepDive's own format
    ("Correct: no\nExtracted final answer: Blythe Company\nReason: A different firm.", False),
    ("**Correct:** Yes\n**Extracted final answer:** Arden Works", True),  # markdown
    ("## Verdict\n- Correct: **no**", False),
    ("<think>If I said Correct: no it would be wrong.</think>\nCorrect: yes", True),  # reasoning block
    ("The reply matches, so\n</think>\n\nCorrect: no", False),  # template without the opening tag
    ("<think>still thinking, Correct: yes", None),  # cut off inside its reasoning: no verdict
    ("yes", True), ("No.", False),  # a bare verdict, as verifiers' JudgeRubric asks for
    ("Incorrect.", False),
    ("I cannot judge this.", None),
])
def test_judge_verdicts(reply, verdict):
    assert judge_verdict(reply) is verdict


async def test_judge_gets_deepdives_prompt_and_its_reply_decides(scripted):
    replies = iter([DEEPDIVE_REPLY, "<think>Compare names.</think>\n**Correct:** no", "I cannot tell."])
    server = scripted([], sub=lambda request: next(replies))
    judge = ModelClient("judge", base_url=server.base_url, max_retries=0)
    env = DeepDive(judge=judge)
    try:
        right = await env.ascore(TASK, "The firm is Arden Works.")
        wrong = await env.ascore(TASK, "Arden Works, or maybe Blythe Company.")
        unparsed = await env.ascore(TASK, "Arden Works")
        empty = await env.ascore(TASK, "  ")
    finally:
        await judge.close()
    assert (right.reward, right.metrics) == (1.0, {"exact": 0.0, "judge": 1.0, "judge_parsed": 1.0})
    assert (wrong.reward, wrong.metrics["judge"]) == (0.0, 0.0)
    assert (unparsed.reward, unparsed.metrics["judge_parsed"], unparsed.metrics["exact"]) == (0.0, 0.0, 1.0)
    assert empty.reward == 0.0 and len(server.requests) == 3  # no judge call for an empty response
    prompt = server.requests[0]["messages"][-1]["content"]
    assert prompt.startswith("You are judging a DeepDive deep-search agent answer.")
    assert (f"Question:\n{TASK.prompt}\n\nReference answer:\nArden Works\n\n"
            "Agent response:\nThe firm is Arden Works.\n") in prompt
    assert "Return exactly:\nCorrect: yes/no\nExtracted final answer: <short answer>\nReason: <one sentence>" in prompt


async def test_generated_tasks_show_the_judge_the_question_without_our_instruction(scripted):
    task = DeepDive().generate(1, seed=0)[0]
    server = scripted([], sub=lambda request: "Correct: yes")
    judge = ModelClient("judge", base_url=server.base_url, max_retries=0)
    try:
        assert (await DeepDive(judge=judge).ascore(task, task.expected)).reward == 1.0
    finally:
        await judge.close()
    prompt = server.requests[0]["messages"][-1]["content"]
    assert f"Question:\n{task.info['question']}\n" in prompt and "Answer with the name only" not in prompt


@pytest.mark.parametrize(("answer", "reward"), [
    ("Arden Works", 1.0), ("arden works.", 1.0), ("**Arden Works**", 1.0),
    ("**Answer:** Arden Works", 1.0), ("The hops check out.\nFinal answer: Arden Works", 1.0),
    (r"\boxed{Arden Works}", 1.0), ("<think>Blythe?</think>Arden Works", 1.0),
    ("It was not Arden Works but Blythe Company.", 0.0),  # contains the gold: not enough
    ("Arden Works or Blythe Company", 0.0), ("Arden", 0.0), ("", 0.0),
])
def test_without_a_judge_only_the_gold_itself_scores(answer, reward):
    score = DeepDive().score(TASK, answer)
    assert score.reward == score.metrics["exact"] == reward


def test_published_rows_load(tmp_path):
    path = tmp_path / "deepdive.jsonl"
    rows = [{"question": "What is the name of the river flowing through the capital of the country that won "
                         "the 1954 World Cup?", "answer": "Spree"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task, = DeepDive().load(path)
    assert (task.prompt, task.expected, task.data) == (rows[0]["question"], "Spree", None)
    assert DeepDive().score(task, "Spree").reward == 1.0
