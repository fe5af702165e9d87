"""Data reaches the kernel through files, never through a prompt or the RPC channel."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlm import ConfigError
from rlm.testing import fenced
from tests.conftest import run_on

REPORT = fenced("print(type(context).__name__, len(context) if context is not None else None)",
                "answer['ready'] = True")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("héllo wörld", "str 11"),
        (b"\x00\x01\xffbytes", "bytes 8"),
        ({"rows": [1, 2, 3], "name": "t"}, "dict 2"),
        ([{"id": i} for i in range(5)], "list 5"),
        (None, "NoneType None"),
    ],
)
async def test_each_kind_of_data_loads_as_context(scripted, data, expected):
    result = await run_on(scripted([REPORT]), data)
    assert result.turns[0].output.splitlines()[0] == expected


async def test_a_path_is_mounted_read_only(scripted, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("line one\nline two\n")
    server = scripted([fenced(
        "print(repr(context))\ntry:\n    open(" + repr(str(file)) + ", 'a').write('x')\nexcept OSError as e:\n"
        "    print('read-only', type(e).__name__)", "answer['ready'] = True")])
    result = await run_on(server, file)
    assert "'line one\\nline two\\n'" in result.turns[0].output
    assert "read-only" in result.turns[0].output
    assert file.read_text() == "line one\nline two\n"

    tmp_path.chmod(0o755)  # the kernel runs unprivileged: a mounted directory must be world-readable
    directory_run = await run_on(scripted([fenced("print(sorted(p.name for p in context.iterdir()))",
                                                  "answer['ready'] = True")]), tmp_path)
    assert directory_run.turns[0].output.splitlines()[0] == "['notes.txt']"


async def test_unserializable_data_is_a_clear_error(scripted):
    with pytest.raises(ConfigError, match="JSON-serializable"):
        await run_on(scripted([]), {"when": object()})


async def test_preview_is_short_and_data_is_not_in_the_rpc_channel(scripted):
    data = "A" * 10_000 + "TAIL"
    server = scripted([fenced("print(llm_batch([context[-4:]]))", "answer['ready'] = True")])
    result = await run_on(server, data, preview_chars=100)
    system = server.root_requests[0]["messages"][0]["content"]
    assert "A" * 100 in system and "A" * 101 not in system
    assert result.turns[0].output.splitlines()[0] == "['echo: TAIL']"


@pytest.mark.slow
def test_one_gigabyte_context_loads(tmp_path):
    """Runs in its own process so the 1 GB string does not stay in the test runner's memory."""
    script = tmp_path / "big.py"
    script.write_text(
        "import asyncio, sys\n"
        "sys.path.insert(0, '.')\n"
        "from tests.conftest import run_on\n"
        "from rlm.testing import ScriptedServer, fenced\n"
        "data = 'x' * (1 << 30) + 'END'\n"
        "with ScriptedServer([fenced('print(len(context), context[-3:])', \"answer['ready'] = True\")]) as s:\n"
        "    r = asyncio.run(run_on(s, data, exec_timeout=600, sandbox_options={'memory_limit': '6g'}))\n"
        "print(r.turns[0].output.splitlines()[0], r.status, max(len(b) for b in s.bodies))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = out.stdout.split()
    assert printed[:3] == [str((1 << 30) + 3), "END", "ready"]
    assert int(printed[3]) < 100_000  # no request body carried the data
