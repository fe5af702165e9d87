"""Verbatim copy: reproduce a text exactly. The text is in the prompt in every mode. Content
shapes follow the reference generator (PrimeIntellect-ai/research-environments,
environments/verbatim_copy_rlm/verbatim_copy_rlm/data_generation.py): pretty-printed JSON records,
CSV rows, word runs, UUIDs and dashed codes one per line; fragments are slices of one text."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from pathlib import Path

import rlm

from .base import Environment, Score, Task, last_boxed, read_records, similarity

#: Default length of each content type, and the mix used by content_type="all".
DEFAULT_LENGTHS = {"words": 200, "json": 500, "csv": 500, "codes": 300, "mixed": 600}
ALL_MIX = {"words": 0.20, "json": 0.20, "csv": 0.20, "codes": 0.25, "mixed": 0.15}

_VOCAB = (
    "telescope umbrella fourteen marble quantum village keyboard elephant mountain journal cabinet "
    "whisper library diamond blanket thunder penguin harvest factory dolphin chapter balloon mystery "
    "kitchen science chamber lantern century granite weather platform calendar triangle spectrum "
    "hospital argument evidence familiar generous handbook kilogram landmark magnetic parallel "
    "quantity rational sandwich tangible valuable warranty yearbook absolute boundary"
).split()
_FIRST = "Alice Bruno Chen Dana Emeka Fatima Gareth Hana Ivan Julia Kofi Lena Mateo Nadia Omar Priya".split()
_LAST = "Andersen Bauer Costa Dubois Evans Fischer Garcia Haddad Ito Jensen Kowalski Lopez Moreau Novak".split()
_STREETS = "Oak Maple Cedar Pine Elm Willow Birch Chestnut Harbor Mill Station Church".split()
_CITIES = "Lisbon Osaka Denver Tallinn Nairobi Porto Quebec Leeds Adelaide Bergen Cusco Graz".split()
_COUNTRIES = "Portugal Japan Canada Estonia Kenya Brazil Norway Peru Austria Ireland Chile Ghana".split()
_DOMAINS = "example.com example.org mail.example.net post.example.io".split()
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to confuse


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(_VOCAB, k=count))


def _records(rng: random.Random, count: int) -> str:
    records = []
    for _ in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        records.append({
            "id": rng.randint(10000, 99999), "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}@{rng.choice(_DOMAINS)}",
            "phone": f"+1-{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
            "address": f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} Street",
            "city": rng.choice(_CITIES), "country": rng.choice(_COUNTRIES),
        })
    return json.dumps(records, indent=2)


def _csv(rng: random.Random, rows: int) -> str:
    lines = ["id,product,price,quantity,date"]
    for _ in range(rows):
        day = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randrange(13_000))
        lines.append(f"{rng.randint(1000, 9999)},{rng.choice(_VOCAB).capitalize()} {rng.choice(_VOCAB).capitalize()},"
                     f"{rng.randint(10, 999)}.{rng.randint(0, 99):02d},{rng.randint(1, 100)},{day.isoformat()}")
    return "\n".join(lines)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _short_code(rng: random.Random) -> str:
    return "-".join("".join(rng.choices(_CODE_ALPHABET, k=4)) for _ in range(3))


def _codes(rng: random.Random, count: int, uuids: bool = True) -> str:
    """One code a line: UUIDs alternating with dashed codes, or dashed codes only."""
    return "\n".join(_uuid(rng) if uuids and i % 2 == 0 else _short_code(rng) for i in range(count))


def _chunk(rng: random.Random, content_type: str, index: int) -> str:
    """The reference's chunk sizes; `mixed` rotates codes, words, records and CSV."""
    if content_type == "mixed":
        return (lambda: _codes(rng, 5, uuids=False), lambda: _words(rng, 20), lambda: _records(rng, 2),
                lambda: _csv(rng, 4))[index % 4]()
    return {"words": lambda: _words(rng, 50), "json": lambda: _records(rng, 3), "csv": lambda: _csv(rng, 6),
            "codes": lambda: _codes(rng, 10)}[content_type]()


def raw_text(rng: random.Random, content_type: str, length: int) -> str:
    """Chunks of one type joined by newlines, twice `length` long so fragments have room."""
    chunks: list[str] = []
    while sum(map(len, chunks)) < 2 * length:
        chunks.append(_chunk(rng, content_type, len(chunks)))
    return "\n".join(chunks)


def fragments(rng: random.Random, raw: str, length: int, mean_fragment_length: int) -> list[str]:
    """Slices of `raw` from random places, sizes uniform in [0.5, 1.5] x the mean (the last one cut
    to fit), `length` characters in all: concatenated they break natural token boundaries."""
    shortest = max(1, int(0.5 * mean_fragment_length))
    out: list[str] = []
    size = 0
    while size < length:
        longest = min(int(1.5 * mean_fragment_length), length - size)
        fragment = rng.randint(min(shortest, longest), longest)
        start = rng.randint(0, max(0, len(raw) - fragment))
        out.append(raw[start : start + fragment])
        size += fragment
    return out


def make_text(rng: random.Random, content_type: str, length: int, mean_fragment_length: int | None) -> str:
    """`length` characters of one content type; fragmented when `mean_fragment_length` is set and
    at most `length` (the reference turns fragmentation off otherwise)."""
    raw = raw_text(rng, content_type, length)
    if not mean_fragment_length or mean_fragment_length > length:
        return raw[:length]
    return "".join(fragments(rng, raw, length, mean_fragment_length))


def content_plan(n: int, rng: random.Random) -> list[str]:
    """The content types of `n` tasks under `all`: each type's share rounded down, exactly, the
    few left over drawn at random, then shuffled (as the reference's generate_dataset)."""
    kinds = [kind for kind, share in ALL_MIX.items() for _ in range(int(n * share))]
    kinds += rng.choices(list(ALL_MIX), k=n - len(kinds))
    rng.shuffle(kinds)
    return kinds


class VerbatimCopy(Environment):
    """Copy the text between the <text> tags exactly into the answer."""

    name = "verbatim_copy"
    tips = (
        "Build the copy in the REPL, not in your reply: assign the text to answer['content'] with code, "
        "then print(answer['content']) and compare it with the original to iterate until they match."
    )

    def __init__(self, content_type: str = "all", target_length: int | None = None,
                 mean_fragment_length: int | None = None) -> None:
        if content_type not in (*DEFAULT_LENGTHS, "all"):
            raise rlm.ConfigError(f"content_type must be one of {', '.join([*DEFAULT_LENGTHS, 'all'])}")
        if mean_fragment_length is not None and mean_fragment_length <= 0:
            raise rlm.ConfigError("mean_fragment_length must be positive")
        self.content_type = content_type
        self.target_length = target_length
        self.mean_fragment_length = mean_fragment_length

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        kinds = (content_plan(n, random.Random(f"verbatim-{seed}-plan")) if self.content_type == "all"
                 else [self.content_type] * n)
        tasks = []
        for index, kind in enumerate(kinds):
            rng = random.Random(f"verbatim-{seed}-{index}")
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
        """Exact match of the answer, unwrapped from a \\boxed{} as the reference does; an exact copy
        of a text that itself holds a \\boxed{} is not unwrapped."""
        boxed = last_boxed(answer) if answer != task.expected else None
        response = answer if boxed is None else boxed
        return Score(reward=float(response == task.expected),
                     metrics={"similarity": similarity(response, task.expected)})


def _prompt(text: str) -> str:
    return ("Copy the text contained within the <text> tags exactly (do not include the tags themselves):"
            f"\n\n<text>{text}</text>")
