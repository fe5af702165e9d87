"""The records of an evaluation: one `Rollout` per line of results.jsonl, read back to resume a
partial run, and the `Summary` table of reward ± standard error per environment × mode."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, Field

from rlm import MODES, Mode, Status, TokenUsage

#: A rollout's place in an evaluation: (environment, mode, task id).
Key = tuple[str, str, str]


class Rollout(BaseModel):
    """One line of results.jsonl."""

    task_id: str
    environment: str
    mode: Mode
    reward: float
    metrics: dict[str, float] = Field(default_factory=dict)
    status: Status
    error: str | None = None
    answer: str = ""
    root_usage: TokenUsage
    sub_usage: TokenUsage
    turns: int
    seconds: float
    trajectory: str

    @property
    def key(self) -> Key:
        return (self.environment, self.mode, self.task_id)


class Row(BaseModel):
    """One environment × mode of the summary."""

    environment: str
    mode: Mode
    rollouts: int
    reward_mean: float
    reward_stderr: float
    root_tokens: float
    sub_tokens: float
    turns: float
    seconds: float
    failures: int


class Summary(BaseModel):
    rows: list[Row]
    results_path: str

    def table(self) -> str:
        """The rows as plain text (`rlm eval` prints them with rich)."""
        head = (f"{'environment':14} {'mode':9} {'n':>4} {'reward':>15} {'root tok':>10} {'sub tok':>10} "
                f"{'turns':>6} {'sec':>7} {'fail':>5}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.environment:14} {r.mode:9} {r.rollouts:4d} {r.reward_mean:7.3f} ± {r.reward_stderr:5.3f} "
                f"{r.root_tokens:10.0f} {r.sub_tokens:10.0f} {r.turns:6.1f} {r.seconds:7.1f} {r.failures:5d}"
            )
        return "\n".join(lines)


class ResultsFile:
    """results.jsonl: appended one rollout at a time, so an interrupted run loses at most the
    line being written, and read back to skip what a partial run already did."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def done(self) -> dict[Key, Rollout]:
        found = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rollout = Rollout.model_validate_json(line)
                except ValueError:
                    continue  # a line cut short by an interrupted run
                found[rollout.key] = rollout
        return found

    def append(self, rollout: Rollout) -> None:
        with self.path.open("a") as f:
            f.write(rollout.model_dump_json() + "\n")


def summarize(rollouts: list[Rollout]) -> list[Row]:
    groups: dict[tuple[str, Mode], list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault((r.environment, r.mode), []).append(r)
    rows = []
    for (env, mode), group in groups.items():
        count = len(group)
        rewards = [r.reward for r in group]
        mean = sum(rewards) / count
        variance = sum((x - mean) ** 2 for x in rewards) / (count - 1) if count > 1 else 0.0
        rows.append(Row(
            environment=env, mode=mode, rollouts=count, reward_mean=mean, reward_stderr=math.sqrt(variance / count),
            root_tokens=sum(r.root_usage.total_tokens for r in group) / count,
            sub_tokens=sum(r.sub_usage.total_tokens for r in group) / count,
            turns=sum(r.turns for r in group) / count, seconds=sum(r.seconds for r in group) / count,
            failures=sum(r.status == "error" for r in group),
        ))
    order = {m: i for i, m in enumerate(MODES)}
    return sorted(rows, key=lambda row: (row.environment, order[row.mode]))
