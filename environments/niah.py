"""Needle in a haystack: find one or several planted facts in a long filler text."""

from __future__ import annotations

import random
from pathlib import Path

from .base import Environment, Score, Task, normalize, read_records

_WORDS = ["river", "stone", "market", "lantern", "autumn", "signal", "garden", "harbor", "copper", "meadow", "window", "engine", "silver", "orchard", "thunder", "canvas", "pillar", "valley", "mirror", "compass", "ember", "timber", "violet", "anchor", "beacon", "prairie", "quartz", "saddle", "tunnel", "willow", "zenith", "basket", "circuit"]


def _filler(rng: random.Random, chars: int) -> list[str]:
    sentences, size = [], 0
    while size < chars:
        words = rng.choices(_WORDS, k=rng.randint(6, 14))
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    return sentences


class NeedleInAHaystack(Environment):
    """`needles` facts "The special magic number for KEY is VALUE." planted at `depths` (0..1)
    of a `length`-character haystack. The answer lists the values in the order the keys are asked."""

    name = "niah"
    tips = (
        "Search `context` with code (str.find, re) for the keys instead of reading it. Print only the "
        "matching sentences, then write the values into answer['content'] exactly as asked."
    )

    def __init__(self, length: int = 100_000, needles: int = 1, depths: list[float] | None = None) -> None:
        self.length = length
        self.needles = needles
        self.depths = depths

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks = []
        for index in range(n):
            rng = random.Random(f"niah-{seed}-{index}")
            sentences = _filler(rng, self.length)
            keys = rng.sample(_WORDS, self.needles)
            values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
            depths = self.depths or [rng.random() for _ in keys]
            for key, value, depth in sorted(zip(keys, values, depths), key=lambda kv: -kv[2]):
                at = round(depth * len(sentences))
                sentences.insert(at, f"The special magic number for {key} is {value}.")
            asked = ", ".join(f"'{key}'" for key in keys)
            prompt = (
                f"The text in `context` hides special magic numbers. What is the special magic number for "
                f"{asked}? Answer with the number{'s' if len(keys) > 1 else ''} only"
                f"{', separated by commas, in the order asked' if len(keys) > 1 else ''}."
            )
            tasks.append(Task(id=f"niah-{seed}-{index}", prompt=prompt, data=" ".join(sentences),
                              expected=values, info={"keys": keys, "depths": depths}))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """RULER-style JSONL rows: `input` (haystack + question) or `context` + `question`,
        and `outputs` (the needle values)."""
        tasks = []
        for i, row in enumerate(read_records(path)):
            expected = row.get("outputs") or row.get("answer")
            expected = expected if isinstance(expected, list) else [str(expected)]
            tasks.append(Task(id=str(row.get("index", i)), prompt=row.get("question", "Find the needle."),
                              data=row.get("context", row.get("input")), expected=[str(e) for e in expected]))
        return tasks

    def score(self, task: Task, answer: str) -> Score:
        found = [part.strip() for part in normalize(answer).replace(",", " ").split()]
        expected = [normalize(v) for v in task.expected]
        recall = sum(1 for v in expected if v in found) / len(expected)
        return Score(reward=float(found == expected), metrics={"recall": recall})
