"""`rlm chat`: questions typed at a terminal, asked in one `Session` over the data, with each
run's events printed live. Ctrl-C stops the running question, never the session.

Input is read with a blocking `input()` (readline editing and history) while the event loop is
idle, so Ctrl-C at the prompt only clears the line; during a question a loop signal handler
turns Ctrl-C into `Session.interrupt()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from types import FrameType, ModuleType

from rich.console import Console
from rich.text import Text

from .config import RLMConfig
from .render import EventPrinter
from .session import Session
from .trajectory import Result

PROMPT = "rlm> "
EXIT = "/exit"


def history_file() -> Path:
    """Where the typed questions are kept between chats."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlm" / "chat_history"


def chat(config: RLMConfig, data: Path | None, console: Console, history: Path | None = None) -> None:
    """Ask each line typed as a question until `/exit` or Ctrl-D; the sandbox is freed on the way
    out, SIGTERM and SIGHUP (a closed terminal) included."""
    readline = _readline(history)
    for hang_up in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(hang_up, _exit)
    console.print(Text(f"rlm chat with {config.model}" + (f" over {data}" if data else "")
                       + f": {EXIT} or Ctrl-D quits, Ctrl-C stops a running question", style="dim"),
                  soft_wrap=True)
    with asyncio.Runner() as runner:
        session = Session(config, data, on_event=EventPrinter(console))
        try:
            while (question := _read_line()) is not None:
                if question == EXIT:
                    break
                if question:
                    _show(console, runner.run(_ask(session, question, console)))
        finally:
            runner.run(session.close())
            if readline is not None and history is not None:
                with contextlib.suppress(OSError):
                    readline.write_history_file(history)


def _readline(history: Path | None) -> ModuleType | None:
    """Line editing and in-memory history for `input()`, loaded from `history` when it exists;
    None where Python has no readline."""
    try:
        import readline
    except ImportError:
        return None
    if history is not None:
        with contextlib.suppress(OSError):
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.read_history_file(history)
    return readline


def _read_line() -> str | None:
    """The next question, stripped; None at end of input. Ctrl-C drops the line being typed."""
    while True:
        try:
            return input(PROMPT).strip()
        except KeyboardInterrupt:
            print()
        except EOFError:
            print()
            return None


async def _ask(session: Session, question: str, console: Console) -> Result:
    loop = asyncio.get_running_loop()
    interrupts: list[asyncio.Task[None]] = []

    def interrupt() -> None:
        console.print(Text("interrupting the running code…", style="yellow"))
        interrupts.append(loop.create_task(session.interrupt()))

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        return await session.ask(question)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await asyncio.gather(*interrupts, return_exceptions=True)


def _show(console: Console, result: Result) -> None:
    console.print(Text("answer: ", style="bold green") + Text(result.answer or "(none)"), soft_wrap=True)
    console.print(Text(result.summary(), style="dim"), soft_wrap=True)
    if result.status == "interrupted":
        console.print(Text("interrupted: the REPL keeps its variables, ask on", style="yellow"))
    elif result.error:
        console.print(Text(f"error: {result.error}", style="red"), soft_wrap=True)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
