"""math_python scores as the reference environment scores: math-verify on the gold and the final
answer, each wrapped in \\boxed{}, the response's last \\boxed{} taken when it has one.

Reference scorer: PrimeIntellect-ai/research-environments, environments/math_env_rlm/math_env_rlm.py
(`math_verify_score`) and PrimeIntellect-ai/verifiers, verifiers/rubrics/math_rubric.py
(`verify_response`). Row schemas: HuggingFaceH4/MATH-500 (problem, solution, answer, subject, level,
unique_id), hendrycks competition_math (problem, level, type, solution), openai/gsm8k (question,
answer ending in '#### N'), PrimeIntellect/INTELLECT-3-RL math (question, answer, info).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from math_verify import parse, verify

from environments import MathPython, Task, math_grading
from environments.math_python import final_answer

# (gold, final answer, what the reference scorer gives): the LaTeX answers of the issue.
CASES = [
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{2}", 1.0),
    (r"\frac{\sqrt{3}}{2}", r"So $\cos 30^\circ = \boxed{\dfrac{\sqrt3}{2}}$.", 1.0),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt{2}}{2}}", 0.0),
    (r"2\sqrt{5}", r"2\sqrt{5}", 1.0),
    (r"2\sqrt{5}", "2*sqrt(5)", 1.0),
    (r"(-\infty, 3]", r"\boxed{(-\infty,3]}", 1.0),
    (r"(-\infty, 3]", r"(-\infty, 3)", 0.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)", 1.0),
    ("(3, 1)", "(3,1)", 1.0),
    ("(3, 1)", "31", 0.0),  # a tuple is not the integer its digits spell
    (r"30^\circ", r"30^\circ", 1.0),
    (r"30^\circ", "30", 1.0),
    (r"\text{(C)}", r"\text{(C)}", 1.0),
    (r"\text{(C)}", "C", 1.0),
    (r"\text{(C)}", r"\text{(D)}", 0.0),
    ("72", r"Natalia sold 72 clips. \boxed{72}", 1.0),
    ("72", "The answer is 72", 0.0),  # unboxed prose is parsed whole, as the reference does
    ("1,000", "1000", 1.0),
    ("7/3", "2.33333333333", 1.0),
    ("1234567891011121314", "1234567891011121315", 0.0),
]


def reference_score(gold: str, reply: str) -> float:
    """The reference's call, written out: the reply's last \\boxed{} (or the reply), then
    verify(parse(boxed gold), parse(boxed response))."""
    response = final_answer(reply)
    return float(verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{response}}}")))


@pytest.mark.parametrize(("gold", "reply", "reward"), CASES)
def test_scores_agree_with_the_reference_grader(gold, reply, reward):
    assert reference_score(gold, reply) == reward
    assert MathPython().score(Task(id="t", prompt="?", expected=gold), reply).reward == reward


def test_final_answer_takes_the_last_box_with_nested_braces_after_reasoning():
    assert final_answer(r"<think>maybe \boxed{1}</think>so \boxed{\frac{\sqrt{3}}{2}} then \boxed{\frac{1}{2}}") \
        == r"\frac{1}{2}"
    assert final_answer("x = 7/3") == "x = 7/3"


def write_rows(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_loader_reads_each_published_row_shape(tmp_path):
    rows = [
        {"problem": r"Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
         "solution": r"We have that $r = \sqrt{0^2 + 3^2} = 3.$ ... $\boxed{\left( 3, \frac{\pi}{2} \right)}.$",
         "answer": r"\left( 3, \frac{\pi}{2} \right)", "subject": "Precalculus", "level": 2,
         "unique_id": "test/precalculus/807.json"},  # MATH-500
        {"problem": r"What is $\cos 30^\circ$?", "level": "Level 1", "type": "Precalculus",
         "solution": r"From the unit circle, $\cos 30^\circ = \boxed{\frac{\sqrt{3}}{2}}$."},  # MATH: solution only
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                     "May. How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"},  # GSM8K
        {"question": "Find the sum of all positive divisors of 12.", "answer": "28",
         "info": {"source": "math"}},  # INTELLECT-3-RL math
        {"question": "AIME-style row with an integer answer", "answer": 204},
    ]
    tasks = MathPython().load(write_rows(tmp_path, rows))
    assert [t.expected for t in tasks] == [
        r"\left( 3, \frac{\pi}{2} \right)", r"\frac{\sqrt{3}}{2}", "72", "28", "204"]
    assert tasks[0].id == "test/precalculus/807.json" and tasks[2].id == "2"
    assert tasks[1].prompt.startswith(r"What is $\cos 30^\circ$?") and tasks[1].prompt.endswith(r"\boxed{}.")
    env = MathPython()
    replies = [r"\boxed{(3, \frac{\pi}{2})}", r"\boxed{\frac{\sqrt{3}}{2}}", r"\boxed{72}", "28", r"\boxed{204}"]
    assert [env.score(t, reply).reward for t, reply in zip(tasks, replies, strict=True)] == [1.0] * 5


def test_loader_refuses_a_row_without_a_gold(tmp_path):
    path = write_rows(tmp_path, [{"problem": "What is 1+1?", "solution": "It is two."}])
    with pytest.raises(ValueError, match="row 0"):
        MathPython().load(path)


def test_an_answer_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    hostile = f"\\boxed{{__import__('os').system('touch {marker}')}}"
    assert MathPython().score(Task(id="t", prompt="?", expected="0"), hostile).reward == 0.0
    assert not marker.exists()


def test_a_stuck_grading_scores_zero_and_the_next_one_still_works(monkeypatch):
    # math-verify spends its own 5 s timeout on 9^(9^9); a shorter hard limit kills the worker.
    monkeypatch.setattr(math_grading, "HARD_TIMEOUT", 0.5)
    assert math_grading.grade("5", "9^{9^{9}}") == math_grading.Grade(False, False)
    monkeypatch.undo()
    assert math_grading.grade("5", "5") == math_grading.Grade(True, True)


async def test_ascore_grades_off_the_event_loop():
    env, task = MathPython(), Task(id="t", prompt="?", expected=r"\frac{5}{6}")
    scores = await asyncio.gather(*(env.ascore(task, answer) for answer in ("5/6", r"\boxed{\frac{10}{12}}", "6/5")))
    assert [s.reward for s in scores] == [1.0, 1.0, 0.0]


def test_sympy_fallback_reads_plain_answers_only():
    env = MathPython(grader="sympy")
    task = Task(id="t", prompt="?", expected="7/3")
    assert [env.score(task, a).reward for a in ("7/3", r"\boxed{\frac{7}{3}}", "14/6", "2.33333333333")] == [1.0] * 4
    assert env.score(Task(id="t", prompt="?", expected="(3, 1)"), "31").reward == 0.0  # commas are kept
    assert env.score(Task(id="t", prompt="?", expected="3100"), "(3,100)").reward == 0.0
    assert env.score(Task(id="t", prompt="?", expected="1000"), "1,000").reward == 1.0  # thousands separator
    # Documented limit: nested LaTeX needs math-verify.
    assert env.score(Task(id="t", prompt="?", expected=r"\frac{\sqrt{3}}{2}"), r"\frac{\sqrt{3}}{2}").reward == 0.0
    with pytest.raises(ValueError, match="grader"):
        MathPython(grader="exact")
