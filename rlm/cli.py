"""The `rlm` command: `rlm run` (one RLM run), `rlm chat` (follow-up questions at a terminal),
`rlm view` (HTML trajectories), `rlm serve` (a managed model server) and `rlm sandbox` (the Docker
image and leftovers). Other packages add commands through the `rlm.commands` entry point group:
`rlm eval` comes from `environments`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, get_args

from rich.console import Console
from rich.logging import RichHandler

from sandbox import KERNELS

from .config import RLMConfig
from .controller import Controller
from .errors import RLMError
from .render import EventPrinter
from .serving import LlamaCppServer, ManagedServer, VLLMServer

#: What a command runs: its exit status, from async code or not.
Handler = Callable[[argparse.Namespace], "int | Awaitable[int]"]
#: Settings `rlm run` takes from the command line, each an `RLMConfig` field of the same name.
RUN_SETTINGS = ("model", "base_url", "sub_model", "sandbox", "code_format", "max_turns", "max_depth", "timeout")

stderr = Console(stderr=True, soft_wrap=True)  # plain output keeps whole lines


def add_config_options(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """`--name` options for `RLMConfig` fields: types, choices and defaults come from the
    config itself, so the command line never restates them. Unset options stay None."""
    for name in names:
        field = RLMConfig.model_fields[name]
        annotation = field.annotation
        choices = get_args(annotation) if annotation is not None and get_args(annotation) and all(
            isinstance(a, str) for a in get_args(annotation)) else None
        kind = next((t for t in (int, float) if annotation in (t, t | None)), str)
        default = None if field.default_factory is not None else field.default
        text = field.description or name.replace("_", " ")
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, choices=choices, default=None,
                            help=text if default is None else f"{text} (default: {default})")
    if "sandbox" in names:
        parser.add_argument("--kernel", choices=KERNELS, default=None,
                            help="the sandbox's kernel: lean (plain Python, the fastest; default) or ipykernel "
                                 "(IPython's magics and rich display)")


def config_settings(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The `RLMConfig` fields given on the command line (`--kernel` as a sandbox option)."""
    settings = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if getattr(args, "kernel", None) is not None:
        settings["sandbox_options"] = {"kernel": args.kernel}
    return settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm", description="Recursive Language Model runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="answer PROMPT over a data file with an RLM")
    run.add_argument("prompt")
    run.add_argument("--data", type=Path, help="file loaded into the REPL as `context` (text)")
    add_config_options(run, RUN_SETTINGS)
    run.add_argument("--json", type=Path, metavar="OUT", help="write the full Result as JSON")
    run.add_argument("--tiny", action="store_true",
                     help="start the embedded CPU model (SmolLM2-135M) for this run and use it")
    run.add_argument("--verbose", "-v", action="store_true", help="show turns as they happen")
    run.add_argument("--show-prompt", action="store_true",
                     help="print the system prompt the run gave the root model (on stderr, before the summary)")
    run.set_defaults(handler=_run, live_events=True)

    chat = commands.add_parser("chat", help="ask questions about a data file at the terminal, one "
                               "sandbox for the whole chat")
    chat.add_argument("--data", type=Path, help="file loaded into the REPL as `context` (text)")
    add_config_options(chat, RUN_SETTINGS)
    chat.add_argument("--tiny", action="store_true",
                      help="start the embedded CPU model (SmolLM2-135M) for this chat and use it")
    chat.set_defaults(handler=_chat, live_events=True)

    view = commands.add_parser("view", help="write a self-contained HTML view of a result or results dir")
    view.add_argument("path", type=Path, help="a Result JSON (rlm run --json) or an rlm eval --out directory")
    view.add_argument("--out", type=Path, help="the HTML file (or directory, for results) to write")
    view.set_defaults(handler=_view)

    sandbox = commands.add_parser("sandbox", help="manage the Docker sandbox image and containers")
    sandbox_commands = sandbox.add_subparsers(dest="action", required=True)
    build = sandbox_commands.add_parser("build", help="build the sandbox image (once per recipe)")
    build.add_argument("--method", default="auto", choices=["auto", "debootstrap", "dockerfile"])
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    prune = sandbox_commands.add_parser("prune", help="remove the rlm containers and sandbox files whose "
                                        "controller died")
    prune.add_argument("--all", action="store_true", dest="everything",
                       help="also the containers of controllers still running")
    sandbox.set_defaults(handler=_sandbox)

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
    serve.set_defaults(handler=_serve)

    for plugin in entry_points(group="rlm.commands"):
        plugin.load()(commands)  # adds its parser, with `handler` among its defaults
    return parser


def tiny_server(port: int = 0, n_ctx: int = 8192) -> LlamaCppServer:
    """The embedded CPU model's server, for `--tiny`."""
    return LlamaCppServer(port=port, n_ctx=n_ctx)


def _server(args: argparse.Namespace) -> ManagedServer:
    if args.tiny:
        return tiny_server(args.port, args.n_ctx)
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
        with contextlib.suppress(KeyboardInterrupt):
            while server.reused or server.running:
                time.sleep(0.5)
    return 0


def _run_config(args: argparse.Namespace, stack: contextlib.ExitStack) -> RLMConfig:
    """The configuration `rlm run` and `rlm chat` take from their options; `--tiny` starts the
    CPU model on `stack`."""
    if args.data is not None and not args.data.exists():
        raise _UsageError(f"--data {args.data}: no such file")
    settings = config_settings(args, RUN_SETTINGS)
    if args.tiny:
        server = stack.enter_context(tiny_server())
        settings.update(model=server.model_name, base_url=server.base_url, max_tokens=512)
    return RLMConfig(**settings)


async def _run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        config = _run_config(args, stack)
        # A file is mounted read-only and read inside the sandbox: it never passes through us.
        result = await Controller(config).run(args.prompt, args.data,
                                              on_event=EventPrinter(stderr) if args.verbose else None)
    if args.json:
        args.json.write_text(result.model_dump_json(indent=2))
    print(result.answer)
    if args.show_prompt and result.messages:
        stderr.print(f"--- system prompt ---\n{result.messages[0]['content']}\n---", markup=False, highlight=False)
    stderr.print(result.summary(), markup=False, highlight=False)
    if result.error:
        stderr.print(f"error: {result.error}", markup=False, highlight=False)
    return 0 if result.status == "ready" else 1


def _chat(args: argparse.Namespace) -> int:
    from .chat import chat, history_file

    with contextlib.ExitStack() as stack:
        chat(_run_config(args, stack), args.data, Console(), history_file())
    return 0


def _view(args: argparse.Namespace) -> int:
    from .viewer import write_view

    try:
        print(write_view(args.path, args.out))
    except (OSError, ValueError) as exc:
        raise _UsageError(str(exc)) from exc
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from sandbox import reap_orphans
    from sandbox.docker import docker_client, prune
    from sandbox.image import build_image

    client = docker_client()
    if args.action == "build":
        started = time.monotonic()
        tag = build_image(client, args.method, force=args.force)
        print(f"{tag} ready ({time.monotonic() - started:.0f}s)")
    else:
        removed = prune(client, everything=args.everything)
        print(f"removed {removed} container(s) and {reap_orphans()} orphaned sandbox dir(s) and cgroup(s)")
    return 0


class _UsageError(RLMError):
    """A command-line mistake: exit status 2."""


def _logging(verbose: bool, turns: bool) -> None:
    """Turns (unless the command renders events instead) and server logs on stderr: through rich
    on a terminal, as plain lines otherwise (pipes and log files keep every line whole, commands included)."""
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_time=False, show_path=False, show_level=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("rlm")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose and turns else logging.WARNING)
    for name in ("rlm.serve", "rlm.sandbox"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging(getattr(args, "verbose", False), turns=not getattr(args, "live_events", False))
    try:
        status = args.handler(args)
        return int(asyncio.run(status) if asyncio.iscoroutine(status) else status)
    except RLMError as exc:  # sandbox errors too: they are registered as RLMError
        stderr.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the runs' cleanup has run by now (asyncio.run cancels them)
        stderr.print("interrupted", markup=False, highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
