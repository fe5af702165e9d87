"""`Environment`: tasks, a reward, named metrics, tips and sub-LLM tools. Environments know
nothing of sandboxes or models: the harness runs them and hands `score` the final answer."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

import rlm


class DataFormatError(rlm.RLMError, ValueError):
    """A dataset file or row does not have the published format a loader reads."""


class Task(BaseModel):
    """One problem: the question, the data the REPL holds, and what a correct answer is."""

    id: str
    prompt: str
    data: Any = None
    expected: Any = None
    info: dict[str, Any] = Field(default_factory=dict)


class Score(BaseModel):
    reward: float
    metrics: dict[str, float] = Field(default_factory=dict)


class Environment(abc.ABC):
    """A family of tasks with its reward. Subclasses set `name` and `tips` and implement
    `generate` (deterministic offline tasks) and `score`; `load` reads the published format."""

    name: ClassVar[str]
    tips: ClassVar[str] = ""

    @abc.abstractmethod
    def generate(self, n: int, seed: int = 0) -> list[Task]:
        """`n` offline tasks, the same for the same seed."""

    @abc.abstractmethod
    def score(self, task: Task, answer: str) -> Score:
        """Reward in [0, 1] and named metrics for a final answer."""

    async def ascore(self, task: Task, answer: str) -> Score:
        """`score` for the harness; environments with a model-based judge override this."""
        return self.score(task, answer)

    def load(self, path: str | Path) -> list[Task]:
        """Tasks from a local file in the published dataset's format."""
        raise NotImplementedError(f"{self.name} has no published-format loader")

    def sub_tools(self, task: Task) -> list[Callable[..., Any]]:
        """Tools offered to sub-LLMs (never to the root model) for this task."""
        return []

    def llm_prompt(self, task: Task) -> str:
        """The single prompt of the plain-LLM mode: the data inline, then the question."""
        if task.data is None:
            return task.prompt
        data = task.data if isinstance(task.data, str) else json.dumps(task.data)
        return f"<data>\n{data}\n</data>\n\n{task.prompt}"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (a list) or Parquet file, the formats datasets are published in."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only for parquet files

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
        return rows if isinstance(rows, list) else rows.get("data", [])
    return [json.loads(line) for line in text.splitlines() if line.strip()]


_REASONING_OPEN = re.compile(r"<(?:think|thinking|reasoning)>", re.IGNORECASE)
_REASONING_CLOSE = re.compile(r"</(?:think|thinking|reasoning)>", re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """The reply after its reasoning block: what follows the last closing tag (templates often drop
    the opening one), or, when a block is never closed, what precedes it."""
    closings = list(_REASONING_CLOSE.finditer(text))
    if closings:
        return text[closings[-1].end():].strip()
    opening = _REASONING_OPEN.search(text)
    return (text[: opening.start()] if opening else text).strip()


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced (so `\\frac{\\sqrt{3}}{2}` survives);
    None when there is none or it is never closed."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            if depth == 0:
                return text[begin:position]
            depth -= 1
    return None


def normalize(text: str) -> str:
    """Lowercase, strip markdown and punctuation, collapse spaces: for lenient exact match."""
    text = re.sub(r"[*_`\"']", "", text.lower())
    text = re.sub(r"[^\w\s.-]", " ", text)
    return " ".join(text.split()).strip(" .")


def levenshtein(a: str, b: str) -> int:
    """Edit distance in O(len(a) * len(b)) time and O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def similarity(a: str, b: str) -> float:
    """1 - normalized edit distance."""
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))
