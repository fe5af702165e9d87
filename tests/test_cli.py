"""`rlm run` end to end, as a user types it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from rlm import Result
from rlm.testing import fenced
from tests.conftest import sandbox_dirs, sandbox_processes


def test_rlm_run_prints_answer_summary_and_writes_json(scripted, tmp_path):
    data = tmp_path / "log.txt"
    data.write_text("ok\ntimeout at 3\nok\ntimeout at 9\n")
    server = scripted([
        fenced("n = sum('timeout' in line for line in context.splitlines())"),
        fenced("answer['content'] = str(n); answer['ready'] = True"),
    ])
    out_json = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rlm.cli", "run", "How many timeouts?", "--data", str(data),
         "--model", "scripted-root", "--base-url", server.base_url, "--max-turns", "5",
         "--json", str(out_json), "--verbose"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"
    assert "ready · 2 turns · 0 sub-calls" in proc.stderr
    assert "turn 1:" in proc.stderr and "n = sum(" in proc.stderr  # --verbose shows turns
    result = Result.model_validate_json(out_json.read_text())
    assert result.answer == "2" and len(result.turns) == 2


def test_rlm_run_without_model_is_a_clear_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "rlm.cli", "run", "q"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2 and "no model given" in proc.stderr


def test_rlm_run_show_prompt_prints_what_the_model_was_told(scripted, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("abc")
    server = scripted([fenced("answer['ready'] = True")])
    proc = subprocess.run(
        [sys.executable, "-m", "rlm.cli", "run", "Q?", "--data", str(data), "--model", "m",
         "--base-url", server.base_url, "--show-prompt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown = proc.stderr.split("--- system prompt ---\n", 1)[1].split("\n---\n", 1)[0]
    assert shown == server.root_requests[0]["messages"][0]["content"]  # exactly what the model got


@pytest.mark.parametrize(("option", "ipython"), [([], "False"), (["--kernel", "lean"], "False"),
                                                 (["--kernel", "ipykernel"], "True")])
def test_rlm_run_kernel_picks_the_sandboxs_kernel(scripted, option, ipython):
    """The lean kernel by default; `--kernel ipykernel` for IPython's magics and display."""
    server = scripted([fenced("import sys\nanswer.update(content=str('IPython' in sys.modules), ready=True)")])
    proc = subprocess.run([sys.executable, "-m", "rlm.cli", "run", "Q?", "--model", "m",
                           "--base-url", server.base_url, *option], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ipython


def test_ctrl_c_ends_rlm_run_with_one_line_and_no_sandbox_left(scripted):
    server = scripted([fenced("import time; time.sleep(600)")])
    run = subprocess.Popen([sys.executable, "-m", "rlm.cli", "run", "Q?", "--model", "m", "--base-url", server.base_url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not server.root_requests or not sandbox_processes(f"rlm-{run.pid}-".encode()):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # the cell is running
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130 and stderr.strip() == "interrupted", stderr
    assert sandbox_processes(f"rlm-{run.pid}-".encode()) == []
    assert not any(name.startswith(f"rlm-{run.pid}-") for name in sandbox_dirs())
