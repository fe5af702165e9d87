"""Needle in a haystack: find one or several planted facts in a long filler text, scored as
RULER scores it."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from .base import DataFormatError, Environment, Score, Task, read_records

_WORDS = ["river", "stone", "market", "lantern", "autumn", "signal", "garden", "harbor", "copper", "meadow", "window", "engine", "silver", "orchard", "thunder", "canvas", "pillar", "valley", "mirror", "compass", "ember", "timber", "violet", "anchor", "beacon", "prairie", "quartz", "saddle", "tunnel", "willow", "zenith", "basket", "circuit"]


# RULER's niah template (NVIDIA/RULER, scripts/data/synthetic/constants.py and niah.py): an intro
# sentence, the haystack, then the question; for one needle 'Some'/'are all'/'are' become 'A'/'is'.
_RULER_INTRO = re.compile(r"(?:Some|A) special magic [\w-]+ (?:are|is) hidden within the following text\. "
                          r"Make sure to memorize it\. I will quiz you about the [\w-]+ afterwards\.")
_RULER_QUESTION = re.compile(r"What (?:are all|is) the special magic [\w-]+ for .+? mentioned in the provided text\?",
                             re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f]")


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's niah metric for one prediction (scripts/eval/synthetic/constants.py): the fraction of
    references found in it as case-insensitive substrings, in any order."""
    prediction = _CONTROL.sub("\n", prediction.strip()).strip().lower()  # its postprocess_pred
    return sum(reference.lower() in prediction for reference in references) / len(references)


def split_ruler_input(text: str) -> tuple[str, str]:
    """(haystack, question) of a RULER `input`: the question is the template's last one, the
    haystack what lies between the intro sentence and it. Model-template tokens around the task
    (RULER's template.py) and newlines removed by --remove_newline_tab do not matter."""
    questions = list(_RULER_QUESTION.finditer(text))
    if questions:
        question = questions[-1]
        intro = _RULER_INTRO.search(text, 0, question.start())
        return text[intro.end() if intro else 0 : question.start()].strip(), question.group(0)
    haystack, _, question = text.strip().rpartition("\n")
    if not haystack or not question.strip():
        raise DataFormatError("no question found in a RULER input: expected the niah template's "
                         "'What ... special magic ... mentioned in the provided text?' or a last line")
    return haystack.strip(), question.strip()


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
    of a `length`-character haystack. The reward is RULER's: the share of the values the answer
    contains, in any order."""

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
            for key, value, depth in sorted(zip(keys, values, depths, strict=True), key=lambda kv: -kv[2]):
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
        """RULER niah rows: `input` (template, haystack and question; RULER sends it followed by
        `answer_prefix`) and `outputs`. In rlm modes the question is the prompt and the haystack
        the data; the llm mode sends the row's text as RULER does. Rows with `context` (or `input`)
        and a separate `question` are read as they are. Ids are row numbers: RULER's `index` is the
        needle's character offset, not unique."""
        tasks = []
        for i, row in enumerate(read_records(path)):
            tasks.append(self._task(str(i), row, where=f"{path}, row {i}"))
        return tasks

    @staticmethod
    def _task(task_id: str, row: dict[str, Any], where: str) -> Task:
        expected = row.get("outputs", row.get("answer"))
        if expected is None or (isinstance(expected, list) and not expected):
            raise DataFormatError(f"{where}: a niah row needs `outputs` (the needle values)")
        expected = [str(e) for e in expected] if isinstance(expected, list) else [str(expected)]
        info: dict[str, Any] = {key: row[key] for key in ("index", "length") if key in row}
        if row.get("question"):
            return Task(id=task_id, prompt=row["question"], data=row.get("context", row.get("input")),
                        expected=expected, info=info)
        if "input" not in row:
            raise DataFormatError(f"{where}: a niah row needs `input`, or `context` and `question`")
        try:
            haystack, question = split_ruler_input(row["input"])
        except ValueError as exc:
            raise DataFormatError(f"{where}: {exc}") from None
        info["llm_prompt"] = row["input"] + row.get("answer_prefix", "")
        return Task(id=task_id, prompt=question, data=haystack, expected=expected, info=info)

    def llm_prompt(self, task: Task) -> str:
        return task.info.get("llm_prompt") or super().llm_prompt(task)

    def score(self, task: Task, answer: str) -> Score:
        recall = string_match_all(answer, task.expected)
        return Score(reward=recall, metrics={"recall": recall, "all_found": float(recall == 1.0)})
