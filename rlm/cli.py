"""The `rlm` command: `rlm run` (one RLM run), `rlm eval` (the evaluation harness), `rlm view`
(HTML trajectories), `rlm serve` (a managed model server) and `rlm sandbox` (the Docker image)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import os
import sys
import time
from typing import Any
from pathlib import Path

from pydantic import ValidationError

from sandbox import BACKENDS, SandboxError

from . import ConfigError, RLMConfig, RLMError
from .controller import Controller
from .serving import LlamaCppServer, ManagedServer, VLLMServer


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
    run.add_argument("--tiny", action="store_true",
                     help="start the embedded CPU model (SmolLM2-135M) for this run and use it")
    run.add_argument("--verbose", "-v", action="store_true", help="show turns as they happen")

    evaluate = commands.add_parser("eval", help="evaluate environments in llm / rlm / rlm+tips modes")
    evaluate.add_argument("environments", nargs="+", metavar="ENV",
                          help="deepdive, oolong, verbatim_copy, math_python, niah")
    evaluate.add_argument("--model", help="root model (default: $RLM_MODEL)")
    evaluate.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $RLM_BASE_URL)")
    evaluate.add_argument("--sub-model", help="model for llm_batch (default: the root model)")
    evaluate.add_argument("--mode", default="llm,rlm,rlm+tips", help="comma-separated: llm, rlm, rlm+tips")
    evaluate.add_argument("-n", type=int, default=50, help="tasks per environment")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--concurrency", type=int, default=16, help="rollouts at a time")
    evaluate.add_argument("--out", type=Path, default=Path("results"), help="results.jsonl, trajectories, summary")
    evaluate.add_argument("--option", action="append", default=[], metavar="ENV.KEY=VALUE",
                          help="an environment's constructor option, e.g. oolong.context_tokens=8000 (repeatable)")
    evaluate.add_argument("--sandbox", default="local", choices=BACKENDS)
    evaluate.add_argument("--max-turns", type=int, default=20)
    evaluate.add_argument("--max-tokens", type=int, help="per completion")
    evaluate.add_argument("--tiny", action="store_true", help="evaluate the embedded CPU model")
    evaluate.add_argument("--verbose", "-v", action="store_true", help="log every turn")

    view = commands.add_parser("view", help="write a self-contained HTML view of a result or results dir")
    view.add_argument("path", type=Path, help="a Result JSON (rlm run --json) or an rlm eval --out directory")
    view.add_argument("--out", type=Path, help="the HTML file (or directory, for results) to write")

    sandbox = commands.add_parser("sandbox", help="manage the Docker sandbox image and containers")
    sandbox_commands = sandbox.add_subparsers(dest="action", required=True)
    build = sandbox_commands.add_parser("build", help="build the sandbox image (once per recipe)")
    build.add_argument("--method", default="auto", choices=["auto", "debootstrap", "dockerfile"])
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    sandbox_commands.add_parser("prune", help="remove every leftover rlm container, and the files of "
                                "sandboxes whose controller died")

    serve = commands.add_parser("serve", help="run a model server until interrupted")
    which = serve.add_mutually_exclusive_group(required=True)
    which.add_argument("--tiny", action="store_true", help="SmolLM2-135M on the CPU via llama.cpp")
    which.add_argument("--vllm", metavar="MODEL", help="vLLM on the GPU serving MODEL")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name")
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--gpu-memory-utilization", type=float)
    serve.add_argument("--tensor-parallel-size", type=int, default=1)
    serve.add_argument("--no-prefix-caching", action="store_true")
    serve.add_argument("--tool-call-parser", help="enables code_format='tool' (e.g. hermes)")
    serve.add_argument("--max-logprobs", type=int, help="for RL: logprobs per token the server may return")
    serve.add_argument("--n-ctx", type=int, default=8192, help="context length of the tiny model")
    serve.add_argument("--verbose", "-v", action="store_true", help="stream the server's log")
    return parser


def _server(args: argparse.Namespace) -> ManagedServer:
    if args.command == "run" or args.tiny:
        return LlamaCppServer(port=getattr(args, "port", 0), n_ctx=getattr(args, "n_ctx", 8192))
    return VLLMServer(
        model=args.vllm, port=args.port, served_model_name=args.served_model_name,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size, prefix_caching=not args.no_prefix_caching,
        tool_call_parser=args.tool_call_parser, max_logprobs=args.max_logprobs,
    )


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends `rlm serve` the way Ctrl-C does, so the server is always stopped."""
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    server = _server(args)
    signal.signal(signal.SIGTERM, _interrupt)
    with server:
        print(f"serving {server.model_name} at {server.base_url}" + (" (reused)" if server.reused else ""), flush=True)
        print(f"  RLM_BASE_URL={server.base_url} RLM_MODEL={server.model_name}", flush=True)
        try:
            while server.reused or server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = {
        "sandbox": args.sandbox, "code_format": args.code_format, "max_turns": args.max_turns,
        "max_depth": args.max_depth, "timeout": args.timeout,
    }
    for name in ("model", "base_url", "sub_model"):
        if getattr(args, name):
            settings[name] = getattr(args, name)
    with contextlib.ExitStack() as stack:
        if args.tiny:
            server = stack.enter_context(_server(args))
            settings.update(model=server.model_name, base_url=server.base_url, max_tokens=512)
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


async def _eval(args: argparse.Namespace) -> int:
    import environments

    settings: dict[str, Any] = {"sandbox": args.sandbox, "max_turns": args.max_turns}
    if args.sub_model:
        settings["sub_model"] = args.sub_model
    if args.max_tokens:
        settings["max_tokens"] = args.max_tokens
    model = args.model or os.environ.get("RLM_MODEL")
    base_url = args.base_url or os.environ.get("RLM_BASE_URL")
    with contextlib.ExitStack() as stack:
        if args.tiny:
            server = stack.enter_context(_server(args))
            model, base_url = server.model_name, server.base_url
            settings.setdefault("max_tokens", 512)
        if not model:
            raise ConfigError("no model given: pass --model or set RLM_MODEL")
        summary = await environments.evaluate(
            _environments(args.environments, args.option), model=model, base_url=base_url,
            modes=args.mode.split(","), n=args.n,
            seed=args.seed, concurrency=args.concurrency, out=args.out, **settings,
        )
    print(summary.table())
    print(f"results: {summary.results_path}")
    return 0


def _environments(names: list[str], options: list[str]) -> list[Any]:
    """Environment instances built with the `--option ENV.KEY=VALUE` settings (values read as
    JSON where they parse, else as text)."""
    from environments.harness import environment_class

    settings: dict[str, dict[str, Any]] = {}
    for option in options:
        target, has_value, value = option.partition("=")
        name, _, key = target.partition(".")
        if not (has_value and key and name in names):
            raise ConfigError(f"--option {option!r}: expected ENV.KEY=VALUE for one of {', '.join(names)}")
        try:
            settings.setdefault(name, {})[key] = json.loads(value)
        except ValueError:
            settings[name][key] = value
    built = []
    for name in names:
        try:
            built.append(environment_class(name)(**settings.get(name, {})))
        except TypeError as exc:
            raise ConfigError(f"--option for {name}: {exc}") from None
    return built


def _sandbox(args: argparse.Namespace) -> int:
    from sandbox.docker import docker_client, prune
    from sandbox.image import build_image
    from sandbox import reap_orphans

    client = docker_client()
    if args.action == "build":
        started = time.monotonic()
        tag = build_image(client, args.method, force=args.force)
        print(f"{tag} ready ({time.monotonic() - started:.0f}s)")
    else:
        print(f"removed {prune(client)} container(s) and {reap_orphans()} orphaned sandbox dir(s) and cgroup(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("rlm")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    for name in ("rlm.serve", "rlm.sandbox"):
        logging.getLogger(name).setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    if args.command == "view":
        from .viewer import write_view

        try:
            print(write_view(args.path, args.out))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("serve", "sandbox"):
        try:
            return _serve(args) if args.command == "serve" else _sandbox(args)
        except (RLMError, SandboxError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "run" and args.data is not None and not args.data.exists():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args) if args.command == "run" else _eval(args))
    except (RLMError, ValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
