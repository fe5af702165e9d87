"""Conformance: every sandbox backend must pass these, driven through the `Sandbox` protocol."""

from __future__ import annotations

import asyncio
import json

import pytest

from sandbox import Reply, SandboxCrashed, create_sandbox
from sandbox.rpc import PREFIX as RPC_PREFIX
from tests.conftest import BACKENDS, KERNELS, sandbox_dirs, sandbox_processes

pytestmark = [pytest.mark.parametrize("backend", BACKENDS), pytest.mark.parametrize("kernel", KERNELS)]


@pytest.fixture
async def box(backend, kernel):
    sandbox = create_sandbox(backend, kernel=kernel)
    await sandbox.start()
    yield sandbox
    await sandbox.close()


async def test_captures_stdout_stderr_results_and_tracebacks(box):
    out = await box.execute("import sys; print('out'); print('err', file=sys.stderr); 6 * 7")
    assert out.stdout == "out\n42\n" and out.stderr == "err\n" and out.ok
    failed = await box.execute("raise ValueError('nope')")
    assert failed.error_name == "ValueError" and "nope" in failed.error and "\x1b[" not in failed.error


async def test_state_persists_between_executions(box):
    await box.execute("counter = 1")
    await box.execute("counter += 1")
    assert (await box.execute("print(counter)")).stdout == "2\n"


async def test_timeout_interrupts_and_keeps_state(box):
    await box.execute("kept = 'yes'")
    result = await box.execute("while True:\n    pass", timeout=1)
    assert result.timed_out and not result.restarted
    assert (await box.execute("print(kept)")).stdout == "yes\n"


async def test_kernel_that_ignores_interrupts_is_restarted(box):
    box.interrupt_grace = 1.0
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)"
    result = await box.execute(code, timeout=1)
    assert result.timed_out and result.restarted
    assert (await box.execute("print(1 + 1)")).stdout == "2\n"


async def test_dead_kernel_raises_sandbox_crashed_and_restarts(box):
    with pytest.raises(SandboxCrashed):
        await box.execute("import os; os._exit(3)")
    with pytest.raises(SandboxCrashed):
        await box.execute("1")
    await box.restart()
    assert (await box.execute("print('fresh')")).stdout == "fresh\n"


async def test_stdin_rpc_round_trip_and_plain_input(box):
    seen = []

    async def handler(request):
        seen.append(request)
        return Reply(result=request["x"] * 2)

    code = f"import json; print(json.loads(input({RPC_PREFIX!r} + json.dumps({{'x': 21}})))['result'])"
    result = await box.execute(code, on_request=handler)
    assert result.stdout == "42\n" and seen == [{"x": 21}]
    plain = await box.execute("print(repr(input('name? ')))", on_request=handler)
    assert plain.stdout == "''\n" and "not available" in plain.stderr


async def test_large_rpc_payload(box):
    async def handler(request):
        return Reply(result=len(request["blob"]))

    code = f"import json; print(json.loads(input({RPC_PREFIX!r} + json.dumps({{'blob': 'x' * 5_000_000}})))['result'])"
    assert (await box.execute(code, on_request=handler)).stdout == "5000000\n"


async def test_output_is_bounded_with_a_count_of_what_was_cut(box):
    result = await box.execute("print('a' * 100_000)", max_output_chars=1000)
    marker = f"\n[... {result.chars_cut:,} characters cut ...]\n"
    assert marker in result.stdout and len(result.stdout) <= 1000
    shown = len(result.stdout) - len(marker)
    assert shown > 900 and result.chars_cut == 100_001 - shown  # every character is shown or counted


async def test_user_expressions(box):
    await box.execute("import json; value = {'a': [1, 2]}")
    result = await box.execute("", user_expressions={"v": "json.dumps(value)", "bad": "undefined_name"})
    assert json.loads(result.expressions["v"]) == {"a": [1, 2]} and result.expressions["bad"] is None


async def test_close_leaves_nothing_behind(backend, kernel):
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    sandbox = create_sandbox(backend, kernel=kernel)
    await sandbox.start()
    await sandbox.execute("import subprocess; subprocess.Popen(['sleep', '299.5'], start_new_session=True)")
    assert sandbox_processes(b"sleep 299.5")
    await sandbox.close()
    await sandbox.close()  # idempotent
    assert set(sandbox_processes()) - before_procs == set()
    assert sandbox_processes(b"sleep 299.5") == []
    assert set(sandbox_dirs()) - before_dirs == set()


async def test_a_close_cancelled_on_the_way_still_leaves_nothing_behind(backend, kernel):
    """Teardown often runs while its task is being cancelled (a caller's timeout, Ctrl-C)."""
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    sandbox = create_sandbox(backend, kernel=kernel)
    await sandbox.start()
    await sandbox.execute("import subprocess; subprocess.Popen(['sleep', '298.5'], start_new_session=True)")
    closing = asyncio.ensure_future(sandbox.close())
    await asyncio.sleep(0)  # the close has started and waits at its first await
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert set(sandbox_processes()) - before_procs == set()
    assert sandbox_processes(b"sleep 298.5") == []
    assert set(sandbox_dirs()) - before_dirs == set()


async def test_a_long_container_is_shown_over_lines(box):
    result = await box.execute("{f'key{i}': list(range(5)) for i in range(8)}")
    lines = result.stdout.splitlines()
    assert len(lines) == 8 and lines[0] == "{'key0': [0, 1, 2, 3, 4]," and lines[-1] == " 'key7': [0, 1, 2, 3, 4]}"


async def test_a_shell_line_runs_or_says_why_not(box, kernel):
    result = await box.execute("!echo hi")
    if kernel == "ipykernel":
        assert result.stdout.strip() == "hi"  # through a pty: "hi\r\n"
    else:  # plain Python: the error says what this kernel does not do
        assert result.error_name == "SyntaxError" and "`!` shell commands" in result.error
