"""Math with a Python REPL (numpy, scipy and sympy installed): problems with exact answers,
rewarded by symbolic or numeric equivalence."""

from __future__ import annotations

import random
import re
from pathlib import Path

import sympy

from .base import Environment, Score, Task, read_records

#: The only names an answer may use: anything else is refused before sympy parses it.
_SAFE_NAMES = {"sqrt", "pi", "E", "I", "oo", "log", "exp", "sin", "cos", "tan", "Rational", "x"}
_SAFE_CHARS = re.compile(r"^[\w\s+\-*/^().,]*$")
_FRAC = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


def parse_answer(text: str) -> sympy.Expr | None:
    """The final expression of an answer (a \\boxed{} value, or what follows the last '=' or ':'),
    parsed by sympy only if it uses nothing but numbers, operators and a few math names."""
    boxed = _BOXED.findall(text)
    candidate = boxed[-1] if boxed else text.strip().splitlines()[-1] if text.strip() else ""
    candidate = _FRAC.sub(r"(\1)/(\2)", re.split(r"[=:]", candidate)[-1].strip().rstrip("."))
    candidate = candidate.replace("{", "(").replace("}", ")").replace("\\", "").replace(",", "")
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
    name = "math_python"
    tips = (
        "Compute with sympy (exact arithmetic) rather than by hand or with floats, print the result, "
        "and put only the final value in answer['content'], e.g. '7/3'."
    )

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks = []
        for index in range(n):
            question, value = _problems(random.Random(f"math-{seed}-{index}"))
            tasks.append(Task(id=f"math-{seed}-{index}", prompt=question + " Answer with the value only.",
                              expected=sympy.sstr(value)))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """Rows with `problem` or `question`, and `answer` (or a `solution` ending in \\boxed{})
        — the format of the MATH and GSM8K-style datasets ('#### 42' answers included)."""
        tasks = []
        for i, row in enumerate(read_records(path)):
            answer = str(row.get("answer") or row.get("solution", ""))
            if "####" in answer:
                answer = answer.split("####")[-1]
            boxed = _BOXED.findall(answer)
            tasks.append(Task(id=str(row.get("id", row.get("unique_id", i))),
                              prompt=row.get("problem") or row["question"],
                              expected=(boxed[-1] if boxed else answer).strip()))
        return tasks

    def score(self, task: Task, answer: str) -> Score:
        predicted, gold = parse_answer(answer), parse_answer(str(task.expected))
        correct = predicted is not None and gold is not None and equivalent(predicted, gold)
        return Score(reward=float(correct), metrics={"parsed": float(predicted is not None)})
