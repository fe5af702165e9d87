"""`rlm eval`: the evaluation harness on the command line. Added to the `rlm` command through the
`rlm.commands` entry point, so rlm itself never imports this package."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import rlm
from rlm.cli import add_config_options, config_settings, tiny_server

from .base import Environment
from .harness import environment_class, evaluate
from .presets import PRESETS, Preset, preset
from .report import write_report
from .results import Summary, format_optional, load_prices

#: What `--tiny` caps unless given: the embedded model shows the machinery, not a score.
TINY_LIMITS = {"max_tokens": 256, "max_turns": 3}
#: Settings `rlm eval` takes from the command line, each an `RLMConfig` field of the same name.
EVAL_SETTINGS = ("sub_model", "sandbox", "max_turns", "max_tokens")


def register(commands: Any) -> None:
    """Add `eval` to the `rlm` command's subparsers."""
    from . import ENVIRONMENTS

    parser = commands.add_parser("eval", help="evaluate environments in llm / rlm / rlm+tips modes")
    parser.add_argument("environments", nargs="*", metavar="ENV",
                        help=f"{', '.join(ENVIRONMENTS)} (with --preset: a subset of its environments)")
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="a published experiment: its environments, options, modes and limits; the report "
                             "shows its published figures beside yours")
    add_config_options(parser, ("model", "base_url"))
    parser.add_argument("--mode", help="comma-separated: " + ", ".join(rlm.MODES) + " (default: all, or the preset's)")
    parser.add_argument("-n", type=int, default=50, help="tasks per environment")
    parser.add_argument("--repeats", type=int, default=1, help="rollouts per task and mode, for per-task variance")
    parser.add_argument("--prices", type=Path, metavar="PRICES.json",
                        help='a cost column: {"model": {"input": $/M tokens, "output": $/M tokens}}')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16, help="rollouts at a time (with --ray: per worker)")
    parser.add_argument("--ray", metavar="auto|ADDRESS", help="run the rollouts on a Ray cluster (pip install "
                        "'rlm-lab[ray]'): one worker per node, results written here")
    parser.add_argument("--cores-per-worker", type=int, metavar="N", help="with --ray: a worker per N cores of "
                        "each node instead of one per node")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results.jsonl, trajectories, summary")
    parser.add_argument("--option", action="append", default=[], metavar="ENV.KEY=VALUE",
                        help="an environment's constructor option, e.g. oolong.context_tokens=8000 (repeatable)")
    add_config_options(parser, EVAL_SETTINGS)
    parser.add_argument("--tiny", action="store_true", help="evaluate the embedded CPU model")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every turn")
    parser.set_defaults(handler=run_eval)


async def run_eval(args: argparse.Namespace) -> int:
    chosen = preset(args.preset) if args.preset else None
    modes = args.mode.split(",") if args.mode else list(chosen.modes if chosen else rlm.MODES)
    unknown = [m for m in modes if m not in rlm.MODES]
    if unknown:
        raise rlm.ConfigError(f"--mode: unknown mode(s) {unknown}; choose from {', '.join(rlm.MODES)}")
    settings = {**(chosen.settings if chosen else {}), **config_settings(args, EVAL_SETTINGS)}
    endpoint = config_settings(args, ("model", "base_url"))
    prices = load_prices(args.prices) if args.prices else None
    envs = build_environments(selected_environments(args.environments, chosen), args.option,
                              chosen.environments if chosen else {})
    with contextlib.ExitStack() as stack:
        if args.tiny:
            server = stack.enter_context(tiny_server())
            endpoint = {"model": server.model_name, "base_url": server.base_url}
            # A 135M model on a CPU answers one request at a time: short replies and few turns keep
            # a preset's dozens of rollouts to minutes. Given values win.
            settings.setdefault("max_tokens", TINY_LIMITS["max_tokens"])
            settings.setdefault("max_turns", TINY_LIMITS["max_turns"])
        config = rlm.RLMConfig(**endpoint, **settings)  # the environment fallbacks, and their errors
        summary = await evaluate(envs, model=config.model, base_url=config.base_url, modes=modes, n=args.n,
                                 repeats=args.repeats, seed=args.seed, concurrency=args.concurrency, out=args.out,
                                 prices=prices, ray_address=args.ray, cores_per_worker=args.cores_per_worker,
                                 **settings)
    # off a terminal rich assumes 80 columns and would squeeze the twelve columns into ellipses
    Console(width=None if sys.stdout.isatty() else 200).print(summary_table(summary))
    report = write_report(summary, args.out, chosen)
    print(f"results: {summary.results_path}")
    print(f"report: {report.html} (and {report.markdown})")
    return 0


def selected_environments(names: list[str], chosen: Preset | None) -> list[str]:
    """The environments named on the command line; with a preset, all of its own by default."""
    if chosen is None:
        if not names:
            raise rlm.ConfigError("name the environments to evaluate, or choose a --preset")
        return names
    foreign = [name for name in names if name not in chosen.environments]
    if foreign:
        raise rlm.ConfigError(f"--preset {chosen.name} has no environment(s) {foreign}; "
                              f"it runs {', '.join(chosen.environments)}")
    return names or list(chosen.environments)


def summary_table(summary: Summary) -> Table:
    table = Table(title="rlm eval")
    for column in ("environment", "mode", "n", "reward", "task var", "root tok", "total tok", "turns", "p50 s",
                   "p95 s", "cost $", "fail"):
        table.add_column(column, justify="left" if column in ("environment", "mode") else "right")
    for r in summary.rows:
        table.add_row(r.environment, r.mode, str(r.rollouts), f"{r.reward_mean:.3f} ± {r.reward_stderr:.3f}",
                      format_optional(r.task_variance, ".3f"), f"{r.root_tokens:.0f}", f"{r.total_tokens:.0f}",
                      f"{r.turns:.1f}", f"{r.seconds_p50:.1f}", f"{r.seconds_p95:.1f}", format_optional(r.cost, ".4f"),
                      str(r.failures))
    return table


def build_environments(names: list[str], options: list[str],
                       defaults: dict[str, dict[str, Any]] | None = None) -> list[Environment]:
    """Environment instances built with `defaults` (a preset's options) overridden by the
    `--option ENV.KEY=VALUE` settings (values read as JSON where they parse, else as text)."""
    settings: dict[str, dict[str, Any]] = {name: dict((defaults or {}).get(name, {})) for name in names}
    for option in options:
        target, has_value, value = option.partition("=")
        name, _, key = target.partition(".")
        if not (has_value and key and name in names):
            raise rlm.ConfigError(f"--option {option!r}: expected ENV.KEY=VALUE for one of {', '.join(names)}")
        try:
            settings[name][key] = json.loads(value)
        except ValueError:
            settings[name][key] = value
    built = []
    for name in names:
        try:
            built.append(environment_class(name)(**settings[name]))
        except TypeError as exc:
            raise rlm.ConfigError(f"--option for {name}: {exc}") from None
    return built
