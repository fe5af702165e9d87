"""Tasks, rewards and tips for evaluating (and training) RLMs, and the harness that runs them.

    import environments
    summary = environments.run_evaluation(["oolong", "niah"], model="qwen3-8b", base_url=URL, n=20)
    print(summary.table())

With `verifiers` installed this package is also its taskset plug-in (`vf-eval environments`):
see `verifiers_adapter`.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from rlm import MODES

from .base import DataFormatError, Environment, Score, Task
from .browsecomp_plus import BrowseCompPlus
from .codeqa import CodeQA
from .deepdive import DeepDive, HTTPSearch, LocalSearch
from .harness import evaluate
from .math_python import MathPython
from .niah import NeedleInAHaystack
from .oolong import Oolong
from .oolong_pairs import OolongPairs
from .results import Rollout, Summary
from .s_niah import SingleNeedle
from .verbatim_copy import VerbatimCopy

ENVIRONMENTS: dict[str, type[Environment]] = {
    cls.name: cls for cls in (DeepDive, Oolong, VerbatimCopy, MathPython, NeedleInAHaystack,
                              OolongPairs, BrowseCompPlus, CodeQA, SingleNeedle)
}


def run_evaluation(*args: Any, **kwargs: Any) -> Summary:
    """`evaluate` for synchronous code."""
    return asyncio.run(evaluate(*args, **kwargs))


__all__ = [
    "ENVIRONMENTS", "MODES", "BrowseCompPlus", "CodeQA", "DataFormatError", "DeepDive", "Environment", "HTTPSearch", "LocalSearch",
    "MathPython", "NeedleInAHaystack", "Oolong", "OolongPairs", "Rollout", "Score", "SingleNeedle", "Summary",
    "Task", "VerbatimCopy", "evaluate", "run_evaluation",
]

# Verifiers finds a plug-in's classes through `__all__`; they import verifiers, an optional
# extra, so they are listed only when it is installed and imported only when asked for.
_VERIFIERS_EXPORTS = ("RLMEnv", "RLMHarness", "RLMTaskset")
if importlib.util.find_spec("verifiers") is not None:
    __all__ += _VERIFIERS_EXPORTS


def __getattr__(name: str) -> Any:
    if name in _VERIFIERS_EXPORTS:
        from . import verifiers_adapter

        return getattr(verifiers_adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
