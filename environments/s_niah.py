"""S-NIAH as the RLM paper runs it: RULER's single needle in a haystack over a range of context
lengths (2^13 to 2^18 tokens), scored with RULER's `string_match_all`."""

from __future__ import annotations

import re
from pathlib import Path

import rlm

from .base import DataFormatError, Score, Task, read_records
from .niah import NeedleInAHaystack

#: The paper's lengths in tokens (Figure 1: 2^13 .. 2^18), and characters per token for the haystack.
PAPER_LENGTHS = [2**k for k in range(13, 19)]
CHARS_PER_TOKEN = 4

# RULER's single-needle niah input (NVIDIA/RULER scripts/data/synthetic/niah.py with
# scripts/data/synthetic/constants.py's template, made singular): a header line, the haystack,
# then the question line.
_RULER_INPUT = re.compile(r"^(?P<header>[^\n]*)\n(?P<haystack>.*)\n(?P<question>What (?:is|are all) the special "
                          r"magic [^\n]*\?)\s*$", re.DOTALL)


def string_match_all(answer: str, references: list[str]) -> float:
    """RULER's niah metric (NVIDIA/RULER scripts/eval/synthetic/constants.py): the share of
    references found, case-insensitively, anywhere in the answer."""
    return sum(ref.lower() in answer.lower() for ref in references) / len(references)


class SingleNeedle(NeedleInAHaystack):
    """One needle per task; task i has `lengths[i % len(lengths)]` tokens of haystack, so n tasks
    spread evenly over the lengths. `load` reads RULER's niah_single rows."""

    name = "s_niah"

    def __init__(self, lengths: list[int] | None = None) -> None:
        self.lengths = list(lengths or PAPER_LENGTHS)
        if any(length < 16 for length in self.lengths):
            raise rlm.ConfigError(f"s_niah lengths are in tokens and must be at least 16, got {self.lengths}")
        super().__init__(length=self.lengths[0] * CHARS_PER_TOKEN, needles=1)

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        count = len(self.lengths)
        # Each length draws its own tasks; seed * count + slot keeps every (seed, length) draw distinct.
        by_length = [NeedleInAHaystack(length=tokens * CHARS_PER_TOKEN, needles=1)
                     .generate(len(range(slot, n, count)), seed=seed * count + slot)
                     for slot, tokens in enumerate(self.lengths)]
        tasks = []
        for i in range(n):
            task = by_length[i % count][i // count]
            tasks.append(task.model_copy(update={
                "id": f"s_niah-{seed}-{i}", "info": {**task.info, "length_tokens": self.lengths[i % count]}}))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """RULER niah jsonl rows (`input`: the prompt with the haystack, `outputs`: the needle values,
        `length`: tokens). The row's `index` is not used as id: RULER overwrites it with the answer's
        character position, so ids are the line numbers."""
        tasks = []
        for i, row in enumerate(read_records(path)):
            match = _RULER_INPUT.match(row["input"])
            if match is None:
                raise DataFormatError(f"row {i} is not a RULER niah input (header, haystack, question line)")
            tasks.append(Task(id=f"s_niah-{i}", prompt=match["question"], data=match["haystack"],
                              expected=[str(v) for v in row["outputs"]], info={"length_tokens": row.get("length", 0)}))
        return tasks

    def score(self, task: Task, answer: str) -> Score:
        found = string_match_all(answer, task.expected)
        return Score(reward=found, metrics={"recall": found})
