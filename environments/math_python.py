"""Math with a Python REPL (numpy, scipy and sympy installed): problems with exact answers, graded
as the reference math environment grades them (math-verify), or offline by a safe sympy subset."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import re
from pathlib import Path
from typing import Any, Literal

import sympy

import rlm

from .base import DataFormatError, Environment, Score, Task, last_boxed, read_records, strip_reasoning
from .math_grading import grade

#: The only names an answer may use: anything else is refused before sympy parses it.
_SAFE_NAMES = {"sqrt", "pi", "E", "I", "oo", "log", "exp", "sin", "cos", "tan", "Rational", "x"}
_SAFE_CHARS = re.compile(r"^[\w\s+\-*/^().]*$")
_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # a whole answer like 1,000

BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."
Grader = Literal["math_verify", "sympy"]


def final_answer(reply: str) -> str:
    """What the reference grades: the last \\boxed{} of the reply after any reasoning block, or the
    whole reply when nothing is boxed (verifiers' `extract_boxed_answer` passes text through)."""
    reply = strip_reasoning(reply)
    boxed = last_boxed(reply)
    return reply if boxed is None else boxed


def gold_answer(row: dict[str, Any]) -> str | None:
    """The gold of a MATH / MATH-500 / GSM8K / question-answer row: `answer` (after '####' for
    GSM8K), else the last \\boxed{} of `solution` (MATH rows carry only that)."""
    answer = row.get("answer")
    if answer is not None and str(answer).strip():
        return str(answer).split("####")[-1].strip()
    boxed = last_boxed(str(row.get("solution") or ""))
    return boxed.strip() if boxed is not None else None


def parse_answer(candidate: str) -> sympy.Expr | None:
    """The offline grader's reading of a final answer: what follows its last '=' or ':', parsed by
    sympy only if it uses nothing but numbers, operators and a few math names. No LaTeX beyond
    flat \\frac, no tuples, sets or intervals: those need math-verify."""
    candidate = candidate.strip().splitlines()[-1] if candidate.strip() else ""
    candidate = _FRAC.sub(r"(\1)/(\2)", re.split(r"[=:]", candidate)[-1].strip().rstrip("."))
    if _THOUSANDS.fullmatch(candidate):  # 1,000 is a number; (3,100) stays a tuple, never equal to one
        candidate = candidate.replace(",", "")
    candidate = candidate.replace("{", "(").replace("}", ")").replace("\\", "")
    if not candidate or len(candidate) > 200 or not _SAFE_CHARS.match(candidate):
        return None
    if any(name not in _SAFE_NAMES for name in re.findall(r"[A-Za-z_]+", candidate)):
        return None
    try:
        return sympy.sympify(candidate.replace("^", "**"))
    except (sympy.SympifyError, SyntaxError, TypeError, ValueError):
        return None


def equivalent(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Exact for two rationals (a huge integer off by one is wrong); otherwise symbolic, then
    numeric to a relative 1e-6 (a decimal given for an exact value)."""
    if a.is_Rational and b.is_Rational:
        return bool(a == b)
    try:
        if sympy.simplify(a - b) == 0:
            return True
        return abs(complex(sympy.N(a - b))) <= 1e-6 * max(1.0, abs(complex(sympy.N(b))))
    except (TypeError, ValueError, AttributeError):
        return False


def _problems(rng: random.Random) -> tuple[str, sympy.Expr]:
    x = sympy.Symbol("x")
    kind = rng.randrange(6)
    if kind == 0:
        a, b, c = rng.randint(2, 19), rng.randint(-50, 50), rng.randint(-50, 50)
        return f"Solve {a}*x + {b} = {c} for x. Give the exact value.", sympy.Rational(c - b, a)
    if kind == 1:
        coeffs = [rng.randint(-9, 9) for _ in range(4)]
        poly = sum(c * x**i for i, c in enumerate(coeffs))
        lo, hi = sorted(rng.sample(range(-4, 6), 2))
        return (f"Compute the exact value of the integral of {sympy.sstr(poly)} dx from {lo} to {hi}.",
                sympy.integrate(poly, (x, lo, hi)))
    if kind == 2:
        n, k = rng.randint(50, 500), rng.randint(2, 5)
        return f"Compute the sum of i**{k} for i = 1 to {n}.", sympy.Integer(sum(i**k for i in range(1, n + 1)))
    if kind == 3:
        a, b, m = rng.randint(2, 10**6), rng.randint(10**3, 10**9), rng.randint(10**3, 10**6)
        return f"Compute {a}**{b} mod {m}.", sympy.Integer(pow(a, b, m))
    if kind == 4:
        matrix = sympy.Matrix(4, 4, [rng.randint(-9, 9) for _ in range(16)])
        return f"Compute the determinant of the matrix {matrix.tolist()}.", matrix.det()
    a, b = rng.randint(10**5, 10**9), rng.randint(10**5, 10**9)
    return f"Compute lcm({a}, {b}) / gcd({a}, {b}).", sympy.Rational(sympy.ilcm(a, b), sympy.igcd(a, b))


class MathPython(Environment):
    """`grader="math_verify"` (default) scores as the reference environment does; `"sympy"` is the
    fallback for installs without math-verify: safe, but it reads plain expressions only, so a
    LaTeX answer (nested fractions, intervals, tuples, \\text{} choices) scores 0 there."""

    name = "math_python"
    tips = (
        "Compute with sympy (exact arithmetic) rather than by hand or with floats, print the result, "
        "and put only the final value in answer['content'], e.g. '7/3'."
    )

    def __init__(self, grader: Grader = "math_verify") -> None:
        if grader not in ("math_verify", "sympy"):
            raise rlm.ConfigError(f"grader must be 'math_verify' or 'sympy', not {grader!r}")
        if grader == "math_verify" and importlib.util.find_spec("math_verify") is None:
            raise ImportError("math_python grades with math-verify: pip install math-verify, "
                              "or choose the offline fallback with MathPython(grader='sympy')")
        self.grader = grader

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks = []
        for index in range(n):
            question, value = _problems(random.Random(f"math-{seed}-{index}"))
            tasks.append(Task(id=f"math-{seed}-{index}", prompt=question + " Answer with the value only.",
                              expected=sympy.sstr(value)))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """MATH and MATH-500 rows (`problem`, `solution`, `answer`), GSM8K rows (`question`, an
        `answer` ending in '#### 42') and `question`/`answer` rows like Prime Intellect's math sets."""
        tasks = []
        for i, row in enumerate(read_records(path)):
            question, gold = row.get("problem") or row.get("question"), gold_answer(row)
            if not question or gold is None:
                raise DataFormatError(f"{path}, row {i}: a math row needs `problem` or `question`, and `answer` "
                                 "or a `solution` with a \\boxed{} answer")
            tasks.append(Task(id=str(row.get("id", row.get("unique_id", i))),
                              prompt=f"{question}\n\n{BOXED_INSTRUCTION}", expected=gold))
        return tasks

    def score(self, task: Task, answer: str) -> Score:
        response, gold = final_answer(answer), str(task.expected)
        if self.grader == "math_verify":
            correct, parsed = grade(gold, response)
        else:
            predicted, expected = parse_answer(response), parse_answer(gold)
            parsed = predicted is not None
            correct = parsed and expected is not None and equivalent(predicted, expected)
        return Score(reward=float(correct), metrics={"parsed": float(parsed)})

    async def ascore(self, task: Task, answer: str) -> Score:
        # Grading waits on a worker process for up to its hard timeout: not on the event loop.
        return await asyncio.to_thread(self.score, task, answer)
