"""The records of an evaluation: one `Rollout` per line of results.jsonl, read back to resume a
partial run, and the `Summary` table per environment × mode (reward ± standard error, per-task
variance over repeats, latency percentiles, tokens and, given a price table, dollars)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from rlm import MODES, ConfigError, Mode, Status, TokenUsage

#: A rollout's place in an evaluation: (environment, mode, task id, repeat index).
Key = tuple[str, str, str, int]


class Rollout(BaseModel):
    """One line of results.jsonl."""

    task_id: str
    repeat: int = 0  # lines written before --repeats existed are each task's first repeat
    environment: str
    mode: Mode
    reward: float
    metrics: dict[str, float] = Field(default_factory=dict)
    status: Status
    error: str | None = None
    answer: str = ""
    root_usage: TokenUsage
    sub_usage: TokenUsage
    #: Usage per model name (root and sub calls at every depth); None on lines from before it was kept.
    usage_by_model: dict[str, TokenUsage] | None = None
    turns: int
    seconds: float
    trajectory: str
    #: The Ray node that ran it (`evaluate(..., ray_address=...)`); None in one process.
    node: str | None = None

    @property
    def key(self) -> Key:
        return (self.environment, self.mode, self.task_id, self.repeat)


class Price(BaseModel):
    """Dollars per million tokens of one model."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


#: A user's price table: model name -> its price.
Prices = dict[str, Price]


def load_prices(path: str | Path) -> Prices:
    """prices.json: {"model": {"input": $/M tokens, "output": $/M tokens}, ...}."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--prices {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--prices {path}: expected an object mapping model names to prices")
    try:
        return {model: Price.model_validate(price) for model, price in raw.items()}
    except ValidationError as exc:
        raise ConfigError(f"--prices {path}: each model needs numeric 'input' and 'output' >= 0 ($/M tokens): "
                          f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from None


def check_priced(prices: Prices, models: Sequence[str]) -> None:
    """Refuse to start a run whose models the price table does not cover: a missing price would
    otherwise read as a free model."""
    missing = sorted({m for m in models if m not in prices})
    if missing:
        raise ConfigError(f"the price table has no price for model(s) {missing}; it prices {sorted(prices)}")


def rollout_cost(rollout: Rollout, prices: Prices) -> float | None:
    """Dollars one rollout spent, each model's tokens at its own price; None when the line
    predates per-model usage."""
    if rollout.usage_by_model is None:
        return None
    check_priced(prices, list(rollout.usage_by_model))
    return sum(usage.prompt_tokens * prices[model].input + usage.completion_tokens * prices[model].output
               for model, usage in rollout.usage_by_model.items()) / 1e6


class Row(BaseModel):
    """One environment × mode of the summary; token, turn, second and cost columns are means
    per rollout."""

    environment: str
    mode: Mode
    rollouts: int
    tasks: int
    reward_mean: float
    reward_stderr: float
    #: Mean over tasks of the variance of the reward across repeats; None with a single repeat.
    task_variance: float | None
    root_tokens: float
    sub_tokens: float
    total_tokens: float
    turns: float
    seconds: float
    seconds_p50: float
    seconds_p95: float
    cost: float | None = None
    failures: int


class Summary(BaseModel):
    rows: list[Row]
    results_path: str

    def table(self) -> str:
        """The rows as plain text (`rlm eval` prints them with rich)."""
        head = (f"{'environment':16} {'mode':9} {'n':>4} {'reward':>15} {'task var':>8} {'root tok':>10} "
                f"{'total tok':>10} {'p50 s':>7} {'p95 s':>7} {'cost $':>9} {'fail':>5}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.environment:16} {r.mode:9} {r.rollouts:4d} {r.reward_mean:7.3f} ± {r.reward_stderr:5.3f} "
                f"{format_optional(r.task_variance, '.3f'):>8} {r.root_tokens:10.0f} {r.total_tokens:10.0f} "
                f"{r.seconds_p50:7.1f} {r.seconds_p95:7.1f} {format_optional(r.cost, '.4f'):>9} {r.failures:5d}"
            )
        return "\n".join(lines)


def format_optional(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


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


def summarize(rollouts: list[Rollout], prices: Prices | None = None) -> list[Row]:
    groups: dict[tuple[str, Mode], list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault((r.environment, r.mode), []).append(r)
    rows = [_row(env, mode, group, prices) for (env, mode), group in groups.items()]
    order = {m: i for i, m in enumerate(MODES)}
    return sorted(rows, key=lambda row: (row.environment, order[row.mode]))


def _row(environment: str, mode: Mode, group: list[Rollout], prices: Prices | None) -> Row:
    count = len(group)
    rewards = [r.reward for r in group]
    variance = statistics.variance(rewards) if count > 1 else 0.0
    by_task: dict[str, list[float]] = {}
    for r in group:
        by_task.setdefault(r.task_id, []).append(r.reward)
    repeated = [statistics.variance(task_rewards) for task_rewards in by_task.values() if len(task_rewards) > 1]
    seconds = [r.seconds for r in group]
    costs = [rollout_cost(r, prices) for r in group] if prices is not None else [None]
    return Row(
        environment=environment, mode=mode, rollouts=count, tasks=len(by_task),
        reward_mean=statistics.fmean(rewards), reward_stderr=math.sqrt(variance / count),
        task_variance=statistics.fmean(repeated) if repeated else None,
        root_tokens=statistics.fmean(r.root_usage.total_tokens for r in group),
        sub_tokens=statistics.fmean(r.sub_usage.total_tokens for r in group),
        total_tokens=statistics.fmean(r.root_usage.total_tokens + r.sub_usage.total_tokens for r in group),
        turns=statistics.fmean(r.turns for r in group), seconds=statistics.fmean(seconds),
        seconds_p50=float(np.percentile(seconds, 50)), seconds_p95=float(np.percentile(seconds, 95)),
        cost=None if None in costs else statistics.fmean(c for c in costs if c is not None),
        failures=sum(r.status == "error" for r in group),
    )
