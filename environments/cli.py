"""`rlm eval`: the evaluation harness on the command line. Added to the `rlm` command through the
`rlm.commands` entry point, so rlm itself never imports this package."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import rlm
from rlm.cli import add_config_options, config_settings, tiny_server

from .base import Environment
from .harness import environment_class, evaluate
from .results import Summary

#: Settings `rlm eval` takes from the command line, each an `RLMConfig` field of the same name.
EVAL_SETTINGS = ("sub_model", "sandbox", "max_turns", "max_tokens")


def register(commands: Any) -> None:
    """Add `eval` to the `rlm` command's subparsers."""
    from . import ENVIRONMENTS

    parser = commands.add_parser("eval", help="evaluate environments in llm / rlm / rlm+tips modes")
    parser.add_argument("environments", nargs="+", metavar="ENV", help=", ".join(ENVIRONMENTS))
    add_config_options(parser, ("model", "base_url"))
    parser.add_argument("--mode", default=",".join(rlm.MODES), help="comma-separated: " + ", ".join(rlm.MODES))
    parser.add_argument("-n", type=int, default=50, help="tasks per environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16, help="rollouts at a time")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results.jsonl, trajectories, summary")
    parser.add_argument("--option", action="append", default=[], metavar="ENV.KEY=VALUE",
                        help="an environment's constructor option, e.g. oolong.context_tokens=8000 (repeatable)")
    add_config_options(parser, EVAL_SETTINGS)
    parser.add_argument("--tiny", action="store_true", help="evaluate the embedded CPU model")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every turn")
    parser.set_defaults(handler=run_eval)


async def run_eval(args: argparse.Namespace) -> int:
    modes = args.mode.split(",")
    unknown = [m for m in modes if m not in rlm.MODES]
    if unknown:
        raise rlm.ConfigError(f"--mode: unknown mode(s) {unknown}; choose from {', '.join(rlm.MODES)}")
    settings = config_settings(args, EVAL_SETTINGS)
    endpoint = config_settings(args, ("model", "base_url"))
    envs = build_environments(args.environments, args.option)
    with contextlib.ExitStack() as stack:
        if args.tiny:
            server = stack.enter_context(tiny_server())
            endpoint = {"model": server.model_name, "base_url": server.base_url}
            settings.setdefault("max_tokens", 512)
        config = rlm.RLMConfig(**endpoint, **settings)  # the environment fallbacks, and their errors
        summary = await evaluate(envs, model=config.model, base_url=config.base_url, modes=modes, n=args.n,
                                 seed=args.seed, concurrency=args.concurrency, out=args.out, **settings)
    Console().print(summary_table(summary))
    print(f"results: {summary.results_path}")
    return 0


def summary_table(summary: Summary) -> Table:
    table = Table(title="rlm eval")
    for column in ("environment", "mode", "n", "reward", "root tok", "sub tok", "turns", "sec", "fail"):
        table.add_column(column, justify="left" if column in ("environment", "mode") else "right")
    for r in summary.rows:
        table.add_row(r.environment, r.mode, str(r.rollouts), f"{r.reward_mean:.3f} ± {r.reward_stderr:.3f}",
                      f"{r.root_tokens:.0f}", f"{r.sub_tokens:.0f}", f"{r.turns:.1f}", f"{r.seconds:.1f}",
                      str(r.failures))
    return table


def build_environments(names: list[str], options: list[str]) -> list[Environment]:
    """Environment instances built with the `--option ENV.KEY=VALUE` settings (values read as
    JSON where they parse, else as text)."""
    settings: dict[str, dict[str, Any]] = {}
    for option in options:
        target, has_value, value = option.partition("=")
        name, _, key = target.partition(".")
        if not (has_value and key and name in names):
            raise rlm.ConfigError(f"--option {option!r}: expected ENV.KEY=VALUE for one of {', '.join(names)}")
        try:
            settings.setdefault(name, {})[key] = json.loads(value)
        except ValueError:
            settings[name][key] = value
    built = []
    for name in names:
        try:
            built.append(environment_class(name)(**settings.get(name, {})))
        except TypeError as exc:
            raise rlm.ConfigError(f"--option for {name}: {exc}") from None
    return built
