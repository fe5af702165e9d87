"""`EventPrinter`: a run's live events as terminal lines, for `rlm run --verbose` and `rlm chat`.
Styled (highlighted code) on a terminal, plain unwrapped lines otherwise, so logs keep every line whole."""

from __future__ import annotations

from rich.console import Console
from rich.padding import Padding
from rich.syntax import Syntax
from rich.text import Text

from .events import CodeRan, Compacted, Finished, ModelReplied, RunEvent, SubCallDone, TurnStarted
from .prompts import extract_code

#: How much of an execution's output is shown: its first lines, each cut to a width.
OUTPUT_LINES = 12
LINE_CHARS = 300


class EventPrinter:
    """Prints each event as it arrives: the turn, the code (before it runs when the reply shows
    it), a cut of the output, the sub-calls of the execution, compactions, nested runs' ends.
    The root run's end is left to the caller, which prints the answer its own way."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._shown_code: list[str] = []  # code already printed from a reply, not to print twice
        self._sub_calls: dict[int, list[SubCallDone]] = {}  # per depth, since the last execution

    def __call__(self, event: RunEvent) -> None:
        indent = 2 * event.depth
        if isinstance(event, TurnStarted):
            depth = f" (depth {event.depth})" if event.depth else ""
            self._line(indent, f"turn {event.turn}:{depth}", "bold cyan")
        elif isinstance(event, ModelReplied):
            usage = event.usage
            self._line(indent + 2, f"model: {usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} "
                       "completion tokens", "dim")
            for code in extract_code(event.content):
                self._code(indent + 2, code)
                self._shown_code.append(code)
        elif isinstance(event, CodeRan):
            self._execution(indent + 2, event)
        elif isinstance(event, SubCallDone):
            self._sub_calls.setdefault(event.depth, []).append(event)
        elif isinstance(event, Compacted):
            self._line(indent, f"compacted: {event.tokens_before:,} → {event.tokens_after:,} tokens", "magenta")
        elif isinstance(event, Finished) and event.depth:
            self._line(indent, f"done (depth {event.depth}): {event.result.summary()}", "dim")

    def _execution(self, indent: int, event: CodeRan) -> None:
        if event.code in self._shown_code:
            self._shown_code.remove(event.code)
        else:  # tool calls: the reply's text holds no code
            self._code(indent, event.code)
        lines = event.output.splitlines()
        for line in lines[:OUTPUT_LINES]:
            self._line(indent, "│ " + (line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + "…"), None)
        if len(lines) > OUTPUT_LINES:
            self._line(indent, f"│ … {len(lines) - OUTPUT_LINES:,} more lines", "dim")
        calls = self._sub_calls.pop(event.depth, [])
        if calls:
            failed = sum(call.error is not None for call in calls)
            self._line(indent, f"{len(calls)} sub-call(s)" + (f", {failed} failed" if failed else ""), "yellow")
        if event.error:
            self._line(indent, f"error: {event.error}", "red")

    def _code(self, indent: int, code: str) -> None:
        if self.console.is_terminal:
            syntax = Syntax(code, "python", theme="ansi_dark", background_color="default", word_wrap=True)
            self.console.print(Padding(syntax, (0, 0, 0, indent)))
        else:
            for line in code.splitlines():
                self._line(indent, line, None)

    def _line(self, indent: int, text: str, style: str | None) -> None:
        self.console.print(Text(" " * indent + text, style=style or ""), soft_wrap=True, highlight=False)
