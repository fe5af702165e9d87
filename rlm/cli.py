"""`rlm run "PROMPT" --data FILE --model M --base-url URL`: one RLM run from the shell."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from sandbox import BACKENDS

from . import RLMConfig, RLMError
from .controller import Controller


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm", description="Recursive Language Model runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="answer PROMPT over a data file with an RLM")
    run.add_argument("prompt")
    run.add_argument("--data", type=Path, help="file loaded into the REPL as `context` (text)")
    run.add_argument("--model", help="root model (default: $RLM_MODEL)")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $RLM_BASE_URL)")
    run.add_argument("--sub-model", help="model for llm_batch (default: the root model)")
    run.add_argument("--sandbox", default="local", choices=BACKENDS)
    run.add_argument("--code-format", default="fenced", choices=["fenced", "tool"])
    run.add_argument("--max-turns", type=int, default=20)
    run.add_argument("--max-depth", type=int, default=1)
    run.add_argument("--timeout", type=float, default=1800.0, help="whole run, seconds")
    run.add_argument("--json", type=Path, metavar="OUT", help="write the full Result as JSON")
    run.add_argument("--verbose", "-v", action="store_true", help="show turns as they happen")
    return parser


async def _run(args: argparse.Namespace) -> int:
    settings = {
        "sandbox": args.sandbox, "code_format": args.code_format, "max_turns": args.max_turns,
        "max_depth": args.max_depth, "timeout": args.timeout,
    }
    for name in ("model", "base_url", "sub_model"):
        if getattr(args, name):
            settings[name] = getattr(args, name)
    config = RLMConfig(**settings)
    # A file is mounted read-only and read inside the sandbox: it never passes through us.
    result = await Controller(config).run(args.prompt, args.data)
    if args.json:
        args.json.write_text(result.model_dump_json(indent=2))
    print(result.answer)
    print(result.summary(), file=sys.stderr)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    return 0 if result.status == "ready" else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("rlm")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    if args.data is not None and not args.data.exists():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except (RLMError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
