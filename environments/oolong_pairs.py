"""OOLONG-Pairs (RLM paper, arXiv 2512.24601, Appendix D.1): list every pair of users whose
records satisfy a condition, over oolong-synth trec_coarse contexts, scored by F1 over the pairs."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import rlm

from .base import Environment, Score, Task, read_records
from .oolong import LABELS, _record_text

_HEAD = "In the above data, list all pairs of user IDs (no duplicate pairs, list lower ID first) "
_TAIL = (
    " Each of the questions can be labelled as one of the labels (the data does not provide the labels, you "
    "need to figure out the label from the semantics of the question): description and abstract concept, "
    "entity, human being, numeric value, location, abbreviation. In your answer, list all pairs in the "
    "format (user_id_1, user_id_2), separated by newlines."
)
_DESC, _ENT, _HUM, _NUM, _LOC, _ABBR = (
    "description and abstract concept", "entity", "human being", "numeric value", "location", "abbreviation")

#: A user's records: (label, date) for each of their instances.
Profile = list[tuple[str, dt.date]]
#: One requirement on a user: (label, ">=" or "==", count).
Need = tuple[str, str, int]


@dataclass(frozen=True)
class PairQuery:
    """One of the paper's 20 tasks: its verbatim condition and the rule it states. Symmetric
    tasks need `any_of` for both users, with `dated` = (label, "after"/"before", day) bounding all
    of that label's instances; asymmetric ones need `one` for a user and `other` for the other."""

    condition: str
    any_of: tuple[str, ...] = ()
    dated: tuple[str, str, dt.date] | None = None
    one: tuple[Need, ...] = ()
    other: tuple[Need, ...] = ()

    @property
    def text(self) -> str:
        return _HEAD + self.condition + "." + _TAIL

    def _symmetric(self, profile: Profile) -> bool:
        if not any(label in self.any_of for label, _ in profile):
            return False
        if self.dated is None:
            return True
        label, side, day = self.dated
        return all((when > day) if side == "after" else (when < day) for name, when in profile if name == label)

    @staticmethod
    def _meets(profile: Profile, needs: tuple[Need, ...]) -> bool:
        counts = Counter(label for label, _ in profile)
        return all(counts[label] >= n if op == ">=" else counts[label] == n for label, op, n in needs)

    def holds(self, a: Profile, b: Profile) -> bool:
        if self.any_of:
            return self._symmetric(a) and self._symmetric(b)
        return (self._meets(a, self.one) and self._meets(b, self.other)) or (
            self._meets(b, self.one) and self._meets(a, self.other))


def _both(labels: str) -> str:
    return f"where both users have at least one instance with {labels}"


def _all_dated(article: str, label: str, side: str, day: str) -> str:
    return f", and all instances that are {article} {label} for both users must be {side} {day}"


# The 20 tasks of Appendix D.1, their wording kept verbatim.
QUERIES: tuple[PairQuery, ...] = (
    PairQuery(_both("a numeric value or location"), any_of=(_NUM, _LOC)),
    PairQuery(_both("an entity or human being"), any_of=(_ENT, _HUM)),
    PairQuery(_both("a description and abstract concept or abbreviation"), any_of=(_DESC, _ABBR)),
    PairQuery(_both("a human being or location") + _all_dated("a", _HUM, "after", "January 6, 2023"),
              any_of=(_HUM, _LOC), dated=(_HUM, "after", dt.date(2023, 1, 6))),
    PairQuery(_both("an entity or numeric value") + _all_dated("an", _ENT, "before", "March 15, 2023"),
              any_of=(_ENT, _NUM), dated=(_ENT, "before", dt.date(2023, 3, 15))),
    PairQuery(_both("a location or abbreviation"), any_of=(_LOC, _ABBR)),
    PairQuery(_both("a description and abstract concept or numeric value")
              + _all_dated("a", _NUM, "after", "February 1, 2023"),
              any_of=(_DESC, _NUM), dated=(_NUM, "after", dt.date(2023, 2, 1))),
    PairQuery(_both("a human being or description and abstract concept"), any_of=(_HUM, _DESC)),
    PairQuery(_both("an entity or location") + _all_dated("a", _LOC, "after", "April 10, 2023"),
              any_of=(_ENT, _LOC), dated=(_LOC, "after", dt.date(2023, 4, 10))),
    PairQuery(_both("a numeric value or abbreviation") + _all_dated("an", _ABBR, "before", "May 20, 2023"),
              any_of=(_NUM, _ABBR), dated=(_ABBR, "before", dt.date(2023, 5, 20))),
    PairQuery("such that one user has at least one instance with entity and one with abbreviation, and the other "
              "user has exactly one instance with entity",
              one=((_ENT, ">=", 1), (_ABBR, ">=", 1)), other=((_ENT, "==", 1),)),
    PairQuery("such that one user has at least two instances with numeric value, and the other user has at least "
              "one instance with location and at least one instance with human being",
              one=((_NUM, ">=", 2),), other=((_LOC, ">=", 1), (_HUM, ">=", 1))),
    PairQuery("such that one user has exactly one instance with description and abstract concept, and the other "
              "user has at least one instance with abbreviation and at least one instance with entity",
              one=((_DESC, "==", 1),), other=((_ABBR, ">=", 1), (_ENT, ">=", 1))),
    PairQuery("such that one user has at least one instance with human being and at least one instance with "
              "numeric value, and the other user has exactly two instances with location",
              one=((_HUM, ">=", 1), (_NUM, ">=", 1)), other=((_LOC, "==", 2),)),
    PairQuery("such that one user has at least one instance with entity, at least one instance with location, and "
              "at least one instance with abbreviation, and the other user has exactly one instance with numeric "
              "value", one=((_ENT, ">=", 1), (_LOC, ">=", 1), (_ABBR, ">=", 1)), other=((_NUM, "==", 1),)),
    PairQuery("such that one user has at least one instance with description and abstract concept and at least "
              "one instance with human being, and the other user has at least two instances with entity and "
              "exactly one instance with abbreviation",
              one=((_DESC, ">=", 1), (_HUM, ">=", 1)), other=((_ENT, ">=", 2), (_ABBR, "==", 1))),
    PairQuery("such that one user has exactly one instance with numeric value, and the other user has at least "
              "one instance with location and at least one instance with description and abstract concept",
              one=((_NUM, "==", 1),), other=((_LOC, ">=", 1), (_DESC, ">=", 1))),
    PairQuery("such that one user has at least one instance with abbreviation and exactly one instance with human "
              "being, and the other user has at least one instance with entity and at least one instance with "
              "numeric value", one=((_ABBR, ">=", 1), (_HUM, "==", 1)), other=((_ENT, ">=", 1), (_NUM, ">=", 1))),
    PairQuery("such that one user has at least two instances with location and at least one instance with entity, "
              "and the other user has exactly one instance with description and abstract concept and exactly one "
              "instance with abbreviation",
              one=((_LOC, ">=", 2), (_ENT, ">=", 1)), other=((_DESC, "==", 1), (_ABBR, "==", 1))),
    PairQuery("such that one user has at least one instance with numeric value and at least one instance with "
              "human being, and the other user has at least one instance with location, at least one instance "
              "with entity, and exactly one instance with abbreviation",
              one=((_NUM, ">=", 1), (_HUM, ">=", 1)), other=((_LOC, ">=", 1), (_ENT, ">=", 1), (_ABBR, "==", 1))),
)

_LABELLED = re.compile(r"^Date: (?P<date>[A-Z][a-z]{2} \d{2}, \d{4}) \|\| User: (?P<user>\d+) \|\| Instance: .* "
                       r"\|\| Label: (?P<label>.+)$")
_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")


def gold_pairs(query: PairQuery, profiles: dict[int, Profile]) -> list[list[int]]:
    """Every pair of distinct users (lower id first, sorted) the query's rule accepts."""
    return [[a, b] for a, b in itertools.combinations(sorted(profiles), 2) if query.holds(profiles[a], profiles[b])]


def profiles_from_labelled(text: str) -> dict[int, Profile]:
    """Per-user (label, date) records from oolong-synth's `context_window_text_with_labels`
    (lines "Date: Mon DD, YYYY || User: N || Instance: ... || Label: L"; other lines skipped)."""
    profiles: dict[int, Profile] = {}
    for line in text.splitlines():
        match = _LABELLED.match(line.strip())
        if match:
            day = dt.datetime.strptime(match["date"], "%b %d, %Y").date()
            profiles.setdefault(int(match["user"]), []).append((match["label"].strip(), day))
    return profiles


def parse_pairs(answer: str) -> set[tuple[int, int]]:
    """The "(user_id_1, user_id_2)" pairs of an answer, each ordered lower id first."""
    return {(min(int(a), int(b)), max(int(a), int(b))) for a, b in _PAIR.findall(answer)}


def pair_f1(answer: str, gold: list[list[int]]) -> tuple[float, float, float]:
    """(F1, precision, recall) of the answer's pair set against the gold pairs; an empty answer
    to an empty gold list is exact."""
    predicted, expected = parse_pairs(answer), {(a, b) for a, b in gold}
    if not predicted and not expected:
        return 1.0, 1.0, 1.0
    hits = len(predicted & expected)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(expected) if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return f1, precision, recall


class OolongPairs(Environment):
    """Offline: oolong-synth-style records of `users` users over ~`context_tokens` tokens, one of
    the 20 pair queries per task. `load` rebuilds the paper's tasks from oolong-synth rows."""

    name = "oolong_pairs"
    tips = (
        "Never read `context` yourself. Parse it into (user, date, instance) rows with code, label every "
        "instance with sub-LLMs via llm_batch (chunks of ~50 lines, one label per line, from the six labels "
        "given), then build per-user label counts and enumerate the pairs with itertools.combinations in "
        "code. Print counts, not the rows, and write every pair as (lower_id, higher_id) on its own line."
    )

    def __init__(self, context_tokens: int = 4000, labels: bool = False, queries: list[int] | None = None) -> None:
        """`labels`: show each record's label (an easier, checkable variant); `queries`: which of the
        paper's tasks (1-20) to draw from, all by default."""
        chosen = queries or list(range(1, len(QUERIES) + 1))
        if any(not 1 <= q <= len(QUERIES) for q in chosen):
            raise rlm.ConfigError(f"oolong_pairs queries are numbered 1..{len(QUERIES)}, got {chosen}")
        self.context_tokens = context_tokens
        self.labels = labels
        self.queries = chosen

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks = []
        for index in range(n):
            number = self.queries[index % len(self.queries)]
            for attempt in itertools.count():  # redraw a context whose answer would be empty
                rng = random.Random(f"oolong_pairs-{seed}-{index}-{attempt}")
                lines, profiles = self._records(rng)
                gold = gold_pairs(QUERIES[number - 1], profiles)
                if gold:
                    break
            tasks.append(Task(id=f"oolong_pairs-{seed}-{index}", prompt=QUERIES[number - 1].text,
                              data="\n".join(lines), expected=gold,
                              info={"query": number, "users": len(profiles), "source": "generated"}))
        return tasks

    def _records(self, rng: random.Random) -> tuple[list[str], dict[int, Profile]]:
        records = max(12, self.context_tokens * 4 // 90)  # ~90 characters per record
        users = rng.sample(range(10_000, 100_000), max(4, records // 4))
        start = dt.date(2022, 10, 1)  # a year around the queries' 2023 dates, so they cut both ways
        header = ("The following lines contains questions. Each can be classified as one of the labels: "
                  + ", ".join(LABELS) + ".")
        lines, profiles = [header], {}
        for _ in range(records):
            user, label, day = rng.choice(users), rng.choice(LABELS), start + dt.timedelta(days=rng.randrange(365))
            profiles.setdefault(user, []).append((label, day))
            lines.append(f"Date: {day:%b %d, %Y} || User: {user} || Instance: {_record_text(rng, label)}"
                         + (f" || Label: {label}" if self.labels else ""))
        return lines, profiles

    def load(self, path: str | Path) -> list[Task]:
        """The paper's construction from oolong-synth rows (oolongbench/oolong-synth: `dataset`,
        `context_window_id`, `context_window_text`, `context_window_text_with_labels`): for each
        trec_coarse context window, the chosen queries with gold pairs from the labelled text."""
        tasks, seen = [], set()
        for row in read_records(path):
            window = row.get("context_window_id", row.get("id"))
            labelled = row.get("context_window_text_with_labels") or ""
            if row.get("dataset") != "trec_coarse" or not labelled or window in seen:
                continue
            seen.add(window)
            profiles = profiles_from_labelled(labelled)
            data = labelled if self.labels else row["context_window_text"]
            for number in self.queries:
                tasks.append(Task(id=f"{window}-pairs-{number}", prompt=QUERIES[number - 1].text, data=data,
                                  expected=gold_pairs(QUERIES[number - 1], profiles),
                                  info={"query": number, "users": len(profiles), "source": "oolong-synth",
                                        "context_len": row.get("context_len", 0)}))
        return tasks

    def score(self, task: Task, answer: str) -> Score:
        f1, precision, recall = pair_f1(answer, task.expected)
        return Score(reward=f1, metrics={"precision": precision, "recall": recall, "exact": float(f1 == 1.0)})
