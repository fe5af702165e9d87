"""The README's promises about the `rlm` command, held as a user sees them: exit statuses, the
embedded model's run, `rlm serve` stopping its whole process group, and `rlm eval`'s progress
output and summary.json."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from environments import NeedleInAHaystack
from rlm import Result
from rlm.testing import fenced
from tests.oracles import oracle_code

TINY_MODEL = "smollm2-135m"


def rlm_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlm.cli", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (parent pid, process group, command line) of every live process (zombies left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return found


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def tokens(usage: dict[str, int]) -> int:
    return usage["prompt_tokens"] + usage["completion_tokens"]


def test_run_exits_1_when_the_model_never_sets_ready(scripted, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("abc")
    server = scripted([fenced("answer['content'] = 'draft'")] * 2)
    done = rlm_cli("run", "q", "--data", str(data), "--model", "m", "--base-url", server.base_url, "--max-turns", "2")
    assert done.returncode == 1, done.stderr
    assert done.stdout == "draft\n"  # the last content is still printed
    assert "max_turns · 2 turns" in done.stderr


def test_run_tiny_runs_on_the_embedded_model_and_stops_it(tmp_path):
    data, out = tmp_path / "data.txt", tmp_path / "result.json"
    data.write_text("The quick brown fox jumps over the lazy dog.\n")
    done = rlm_cli("run", "Print the length of `context`.", "--data", str(data), "--tiny", "--max-turns", "1",
                   "--json", str(out), "--verbose", timeout=600)
    result = Result.model_validate_json(out.read_text())
    assert done.returncode == (0 if result.status == "ready" else 1), done.stderr[-3000:]
    assert result.model == TINY_MODEL and len(result.turns) == 1 and result.turns[0].assistant
    assert result.usage.root.calls == 1 and result.usage.root.prompt_tokens > 0
    assert f"{result.status} · 1 turns" in done.stderr
    port = re.search(r"llama_cpp\.server .*--port (\d+)", done.stderr).group(1)  # --verbose logs the command
    assert not answers(f"http://127.0.0.1:{port}/v1/models")
    ours = f"--port {port} ".encode()
    assert [cmd for _, _, cmd in processes().values() if b"llama_cpp.server" in cmd and ours in cmd] == []


def test_serve_stops_its_whole_process_group_on_sigterm():
    port = free_port()
    command = [sys.executable, "-m", "rlm.cli", "serve", "--tiny", "--port", str(port), "--n-ctx", "1024"]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        first, second = serve.stdout.readline(), serve.stdout.readline()
        assert first == f"serving {TINY_MODEL} at {url}\n", first + serve.stderr.read()
        assert second.split() == [f"RLM_BASE_URL={url}", f"RLM_MODEL={TINY_MODEL}"]
        assert answers(url + "/models")
        children = [pid for pid, (parent, _, _) in processes().items() if parent == serve.pid]
        groups = {serve.pid} | {processes()[pid][1] for pid in children}
        assert len(groups) == 2  # the model server runs in a process group of its own
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        left = {pid: cmd for pid, (_, group, cmd) in processes().items() if group in groups}
        assert left == {}, left
        assert not answers(url + "/models")
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def test_eval_reports_progress_and_writes_summary_json(scripted, tmp_path):
    """Two niah tasks in the llm and rlm modes: the rlm mode solves both (an oracle program), the
    llm mode answers nothing useful, so every mean and the progress line's running mean are known."""
    tasks = NeedleInAHaystack(length=3000).generate(2, seed=0)
    by_prompt = {task.prompt: task for task in tasks}
    server = scripted(lambda request: fenced(oracle_code("niah", by_prompt[request["messages"][1]["content"]])),
                      sub=lambda request: "no idea")
    done = rlm_cli("eval", "niah", "--model", "m", "--base-url", server.base_url, "--mode", "llm,rlm", "-n", "2",
                   "--seed", "0", "--out", str(tmp_path), "--option", "niah.length=3000", "--concurrency", "1")
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if re.match(r"\[[#.]+\] \d+/4 ", line)]
    assert [re.search(r"\] (\d)/4 ", line).group(1) for line in progress] == ["1", "2", "3", "4"]
    assert re.search(r"\[#{24}\] 4/4 mean reward 0\.500 · failures 0 · \d+s$", progress[-1]), progress[-1]

    rollouts = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["results_path"] == str(tmp_path / "results.jsonl")
    rows = {row["mode"]: row for row in summary["rows"]}
    assert list(rows) == ["llm", "rlm"] and {row["environment"] for row in rows.values()} == {"niah"}
    for mode, reward in (("llm", 0.0), ("rlm", 1.0)):
        mine = [r for r in rollouts if r["mode"] == mode]
        row = rows[mode]
        assert (row["rollouts"], row["reward_mean"], row["reward_stderr"], row["failures"]) == (2, reward, 0.0, 0)
        assert row["root_tokens"] == pytest.approx(sum(tokens(r["root_usage"]) for r in mine) / 2)
        assert row["sub_tokens"] == pytest.approx(sum(tokens(r["sub_usage"]) for r in mine) / 2)
        assert row["turns"] == sum(r["turns"] for r in mine) / 2 and row["seconds"] > 0
    assert rows["rlm"]["turns"] == 1 and rows["llm"]["root_tokens"] > 0
