"""Verbatim copy: reproduce a text exactly. The text is in the prompt in every mode; fragments
cut from several generated pieces break natural token boundaries."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from .base import Environment, Score, Task, read_records, similarity

#: Default length of each content type, and the mix used by content_type="all".
DEFAULT_LENGTHS = {"words": 200, "json": 500, "csv": 500, "codes": 300, "mixed": 600}
ALL_MIX = {"words": 0.20, "json": 0.20, "csv": 0.20, "codes": 0.25, "mixed": 0.15}

_VOCAB = ["alpha", "bravo", "delta", "orbit", "quiet", "lemon", "tiger", "maple", "cobalt", "drift", "ember", "frost", "glide", "harbor", "ivory", "jungle", "kernel", "lunar", "marble", "nectar", "oasis", "pepper", "quiver", "raven", "saffron", "tundra", "umber", "velvet"]


def _words(rng: random.Random, length: int) -> str:
    out = ""
    while len(out) < length:
        out += rng.choice(_VOCAB) + " "
    return out[:length]


def _json(rng: random.Random, length: int) -> str:
    records = []
    while len(json.dumps(records)) < length:
        records.append({"id": rng.randint(1, 99999), "name": rng.choice(_VOCAB),
                        "score": round(rng.uniform(0, 100), 2), "ok": rng.random() < 0.5})
    return json.dumps(records)[:length]


def _csv(rng: random.Random, length: int) -> str:
    rows = ["id,name,city,amount"]
    while len("\n".join(rows)) < length:
        rows.append(f"{rng.randint(1, 9999)},{rng.choice(_VOCAB)},{rng.choice(_VOCAB).upper()},{rng.uniform(0, 1e4):.2f}")
    return "\n".join(rows)[:length]


def _codes(rng: random.Random, length: int) -> str:
    alphabet = string.ascii_uppercase + string.digits
    codes: list[str] = []
    while len(" ".join(codes)) < length:
        codes.append("".join(rng.choices(alphabet, k=4)) + "-" + "".join(rng.choices(alphabet, k=4)))
    return " ".join(codes)[:length]


_GENERATORS = {"words": _words, "json": _json, "csv": _csv, "codes": _codes}


def _mixed(rng: random.Random, length: int) -> str:
    parts: list[str] = []
    while len("\n".join(parts)) < length:
        parts.append(_GENERATORS[rng.choice(list(_GENERATORS))](rng, rng.randint(40, 120)))
    return "\n".join(parts)[:length]


_GENERATORS["mixed"] = _mixed


def make_text(rng: random.Random, content_type: str, length: int, mean_fragment_length: int | None) -> str:
    """Content of one type; with `mean_fragment_length`, slices of several pieces concatenated."""
    generate = _GENERATORS[content_type]
    if not mean_fragment_length:
        return generate(rng, length)
    out = ""
    while len(out) < length:
        piece = generate(rng, max(2 * mean_fragment_length, 64))
        size = max(1, round(rng.expovariate(1 / mean_fragment_length)))
        start = rng.randrange(0, max(1, len(piece) - size))
        out += piece[start : start + size]
    return out[:length]


class VerbatimCopy(Environment):
    """Copy the text between the markers exactly into the answer."""

    name = "verbatim_copy"
    tips = (
        "Build the copy in the REPL, not in your reply: assign the text to answer['content'] with code, "
        "then print(answer['content']) and compare it with the original to iterate until they match."
    )

    def __init__(self, content_type: str = "all", target_length: int | None = None,
                 mean_fragment_length: int | None = None) -> None:
        if content_type not in (*_GENERATORS, "all"):
            raise ValueError(f"content_type must be one of {', '.join([*_GENERATORS, 'all'])}")
        self.content_type = content_type
        self.target_length = target_length
        self.mean_fragment_length = mean_fragment_length

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks = []
        for index in range(n):
            rng = random.Random(f"verbatim-{seed}-{index}")
            kind = self.content_type
            if kind == "all":
                kind = rng.choices(list(ALL_MIX), weights=list(ALL_MIX.values()))[0]
            length = self.target_length or DEFAULT_LENGTHS[kind]
            text = make_text(rng, kind, length, self.mean_fragment_length)
            tasks.append(Task(id=f"verbatim-{seed}-{index}", prompt=_prompt(text), expected=text,
                              info={"content_type": kind, "length": len(text)}))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """Rows with `text` (or `answer`) and optional `content_type`."""
        return [
            Task(id=str(row.get("id", i)), prompt=_prompt(text), expected=text,
                 info={"content_type": row.get("content_type", "unknown"), "length": len(text)})
            for i, row in enumerate(read_records(path))
            for text in [row.get("text") or row["answer"]]
        ]

    def score(self, task: Task, answer: str) -> Score:
        return Score(reward=float(answer == task.expected),
                     metrics={"similarity": similarity(answer, task.expected)})


def _prompt(text: str) -> str:
    return (
        "Copy the text between <copy> and </copy> exactly, character for character, as your answer "
        f"(without the markers).\n<copy>{text}</copy>"
    )
