"""Tasks, rewards and tips for evaluating (and training) RLMs, and the harness that runs them.

    import environments
    summary = environments.run_evaluation(["oolong", "niah"], model="qwen3-8b", base_url=URL, n=20)
    print(summary.table())
"""

from __future__ import annotations

import asyncio
from typing import Any

from .base import Environment, Score, Task
from .deepdive import DeepDive, HTTPSearch, LocalSearch
from .harness import MODES, Rollout, Summary, evaluate
from .math_python import MathPython
from .niah import NeedleInAHaystack
from .oolong import Oolong
from .verbatim_copy import VerbatimCopy

ENVIRONMENTS: dict[str, type[Environment]] = {
    cls.name: cls for cls in (DeepDive, Oolong, VerbatimCopy, MathPython, NeedleInAHaystack)
}


def run_evaluation(*args: Any, **kwargs: Any) -> Summary:
    """`evaluate` for synchronous code."""
    return asyncio.run(evaluate(*args, **kwargs))


__all__ = [
    "ENVIRONMENTS", "MODES", "DeepDive", "Environment", "HTTPSearch", "LocalSearch", "MathPython",
    "NeedleInAHaystack", "Oolong", "Rollout", "Score", "Summary", "Task", "VerbatimCopy", "evaluate",
    "run_evaluation",
]
