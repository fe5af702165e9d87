"""`rlm chat` in a real terminal: tmux runs it, keys are typed into it, the screen is read back."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm.testing import fenced

from .conftest import sandbox_dirs, sandbox_processes

WAIT = 30.0  # seconds any one thing may take to appear on the screen (a sandbox start included)


class Terminal:
    """A detached 200x50 tmux session on a server of its own (so it inherits this process's
    environment, whatever other tmux servers run), read through `capture-pane`."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "tmux.sock"
        self.conf = directory / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\n")  # the screen stays readable after the program ends
        self.status = directory / "status"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-S", str(self.socket), "-f", str(self.conf), *args], capture_output=True,
                              text=True, timeout=10)
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start(self, command: list[str]) -> None:
        """Run `command` in the pane. A shell writes its exit status to a file (tmux may reap a
        program late and then not know it); its no-op INT trap keeps it alive through Ctrl-C
        without making the program ignore Ctrl-C."""
        script = f'trap : INT; "$@"; echo $? > {shlex.quote(str(self.status))}'
        self.tmux("new-session", "-d", "-x", "200", "-y", "50", "sh", "-c", script, "sh", *command)

    def program_pid(self) -> int:
        """The pid of the program the pane's shell runs."""
        shell = int(self.tmux("display-message", "-p", "#{pane_pid}"))
        return int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])

    def exit_status(self, timeout: float) -> int:
        """The program's exit status, once it ended; fails with the screen after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (self.status.exists() and (status := self.status.read_text().strip())):
            if time.monotonic() > deadline:
                pytest.fail(f"still running after {timeout:g}s; the screen:\n{self.screen()}")
            time.sleep(0.2)
        return int(status)

    def screen(self) -> str:
        """Everything the pane shows or scrolled past, wrapped lines joined."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)
        self.tmux("send-keys", "Enter")

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """The screen once `text` shows on it; fails with the screen after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen()):
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} did not show within {timeout:g}s; the screen:\n{screen}")
            time.sleep(0.2)
        return screen

    def wait_for_prompt(self) -> str:
        """The screen once the chat waits for a question (the prompt is its last line)."""
        deadline = time.monotonic() + WAIT
        while not (screen := self.screen()).rstrip().endswith("rlm>"):
            if time.monotonic() > deadline:
                pytest.fail(f"no prompt within {WAIT:g}s; the screen:\n{screen}")
            time.sleep(0.2)
        return screen


def kernels_of(controller: int) -> list[int]:
    """The sandbox kernels (and their bwrap wrappers) a controller process started: their
    command lines name its sandbox directory, rlm-<pid>-*."""
    found = []
    for pid in sandbox_processes():
        with contextlib.suppress(OSError):
            if f"/rlm-{controller}-".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        subprocess.run(["tmux", "-S", str(term.socket), "kill-server"], capture_output=True, timeout=10)


def test_chat_answers_follow_ups_survives_ctrl_c_and_frees_its_sandbox(scripted, terminal, tmp_path):
    data = tmp_path / "log.txt"
    data.write_text("alpha\nbeta\ngamma\n")
    server = scripted([
        fenced("rows = context.splitlines()\nanswer['content'] = f'{len(rows)} rows'; answer['ready'] = True"),
        fenced("answer['content'] = 'first is ' + rows[0]; answer['ready'] = True"),
        fenced("import time\nmarker = 'kept'\ntime.sleep(120)"),
        fenced("answer['content'] = marker + ' and ' + rows[-1]; answer['ready'] = True"),
    ])
    terminal.start(["env", f"XDG_CACHE_HOME={tmp_path / 'cache'}", sys.executable, "-m", "rlm.cli", "chat",
                    "--data", str(data), "--model", "scripted-root", "--base-url", server.base_url,
                    "--max-turns", "3"])
    terminal.wait_for_prompt()
    chat = terminal.program_pid()  # sandbox directories and kernels carry their controller's pid (other tests may run)

    terminal.type("How many rows?")
    terminal.wait_for("answer: 3 rows")
    screen = terminal.wait_for_prompt()
    assert "turn 1:" in screen and "rows = context.splitlines()" in screen  # the run's events
    assert kernels_of(chat) and any(d.startswith(f"rlm-{chat}-") for d in sandbox_dirs())

    terminal.type("And the first?")  # `rows` is still in the REPL
    terminal.wait_for("answer: first is alpha")
    terminal.wait_for_prompt()

    terminal.type("Sleep.")
    terminal.wait_for("time.sleep(120)")  # shown as the reply arrives, before it runs
    time.sleep(2.0)  # let the cell start
    deadline = time.monotonic() + WAIT
    while "interrupted ·" not in terminal.screen():  # a Ctrl-C before the cell started reaches no code
        assert time.monotonic() < deadline, terminal.screen()
        terminal.tmux("send-keys", "C-c")
        time.sleep(3.0)
    screen = terminal.wait_for_prompt()
    assert "KeyboardInterrupt" in screen and "interrupted: the REPL keeps its variables" in screen

    terminal.tmux("send-keys", "-l", "half a thought")
    terminal.tmux("send-keys", "C-c")  # at the prompt: drops the line, not the chat
    terminal.type("Go on.")  # the session survived, with `marker` set before the interruption
    terminal.wait_for("answer: kept and gamma")
    terminal.wait_for_prompt()
    assert server.root_requests[-1]["messages"][-1]["content"].startswith("Go on.")

    terminal.type("/exit")
    assert terminal.exit_status(WAIT) == 0
    # Killed kernels may take a moment to leave /proc on a loaded machine: their end is awaited,
    # a kernel still there after WAIT seconds is a leak.
    deadline = time.monotonic() + WAIT
    while (left := kernels_of(chat)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
    assert not any(d.startswith(f"rlm-{chat}-") for d in sandbox_dirs())
    assert len(server.root_requests) == 4
    history = (tmp_path / "cache" / "rlm" / "chat_history").read_text()
    assert "And the first?" in history and "/exit" in history


def test_run_verbose_renders_sub_calls_cut_output_and_each_turn_once(scripted, tmp_path):
    """`rlm run --verbose` prints through the same event renderer as the chat, off a terminal."""
    server = scripted([
        fenced("print('\\n'.join(f'line {i}' for i in range(30)))\nr = llm_batch(['a', 'b', 'c'])"),
        fenced("answer['content'] = r[0]; answer['ready'] = True"),
    ])
    proc = subprocess.run([sys.executable, "-m", "rlm.cli", "run", "Go.", "--model", "scripted-root",
                           "--base-url", server.base_url, "--verbose"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "echo: a"
    lines = proc.stderr.splitlines()
    assert lines.count("turn 1:") == 1 and lines.count("turn 2:") == 1  # events only, no turn log too
    assert "  r = llm_batch(['a', 'b', 'c'])" in lines  # the code, as the reply showed it
    assert "  │ line 11" in lines and "  │ line 12" not in lines and "  │ … 18 more lines" in lines
    assert "  3 sub-call(s)" in lines
    assert lines[-1].startswith("ready · 2 turns · 3 sub-calls")
