"""Isolation of every isolating backend (bubblewrap and Docker) against hostile code: network,
environment, filesystem, memory and process limits, leftovers."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from sandbox import LocalSandbox, SandboxCrashed, SandboxUnavailable, create_sandbox
from tests.conftest import ISOLATING, run_on, sandbox_dirs, sandbox_processes
from tests.scripted_server import fenced


@pytest.fixture(params=ISOLATING)
def backend(request):
    return request.param


@pytest.fixture
async def box(backend):
    sandbox = create_sandbox(backend, memory_limit="512m", max_processes=64)
    await sandbox.start()
    yield sandbox
    await sandbox.close()


async def test_only_loopback_interface(box):
    out = await box.execute("import socket; print([name for _, name in socket.if_nameindex()])")
    assert out.stdout == "['lo']\n"


async def test_host_loopback_server_is_unreachable(box):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    code = (
        "import socket\ntry:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n"
        "except OSError as e:\n    print('refused', type(e).__name__)"
    )
    out = await box.execute(code)
    listener.close()
    assert out.stdout.startswith("refused") and not accepted


async def test_no_host_secrets_in_environment(monkeypatch, backend):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    async with create_sandbox(backend) as sandbox:
        out = await sandbox.execute(
            "import os; print(sorted(os.environ)); print(any('secret' in v or 'sk-' in v for v in os.environ.values()))"
        )
        proc = await sandbox.execute(
            "import os; print(sum(1 for p in os.listdir('/proc') if p.isdigit()))"
        )
    assert "OPENAI_API_KEY" not in out.stdout and "AWS_SECRET_ACCESS_KEY" not in out.stdout
    assert out.stdout.strip().endswith("False")
    assert int(proc.stdout) < 10  # its own PID namespace: the controller's /proc/PID/environ is not there


async def test_only_workdir_and_tmp_are_writable(box):
    code = """
import os
targets = ['/etc/rlm-probe', '/usr/rlm-probe', '/rlm-probe', os.path.expanduser('~root') + '/rlm-probe',
           '/var/rlm-probe', '/tmp/rlm-probe', os.getcwd() + '/rlm-probe']
for path in targets:
    try:
        with open(path, 'w') as f:
            f.write('x')
        print('writable', path)
    except OSError:
        print('denied', path)
"""
    out = (await box.execute(code)).stdout.splitlines()
    writable = [line.split()[1] for line in out if line.startswith("writable")]
    assert writable == ["/tmp/rlm-probe", str(box.workdir / "rlm-probe")]
    assert not os.path.exists("/tmp/rlm-probe")  # the sandbox's /tmp is private


async def test_host_home_and_secrets_are_not_readable(box):
    probe = Path.home() / ".rlm-isolation-probe"
    probe.write_text("host secret")
    try:
        code = f"""
for path in ['/etc/shadow', {str(probe)!r}]:
    try:
        open(path).read()
        print('readable', path)
    except OSError:
        print('hidden', path)
"""
        out = (await box.execute(code)).stdout
    finally:
        probe.unlink()
    assert out.count("hidden") == 2, out


async def test_memory_limit_stops_a_memory_bomb(box):
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50_000_000))"
    try:  # a cgroup OOM-kills the kernel; an rlimit makes allocation fail
        out = await box.execute(bomb, timeout=60)
        assert out.error_name == "MemoryError", out
    except SandboxCrashed:
        await box.restart()
    assert (await box.execute("print('alive')")).stdout == "alive\n"


async def test_process_limit_stops_a_fork_flood(box):
    code = """
import subprocess
procs, failed = [], None
try:
    for _ in range(200):
        procs.append(subprocess.Popen(['sleep', '30']))
except OSError as e:
    failed = type(e).__name__
print(len(procs) < 200, failed)
for p in procs:
    p.kill()
"""
    out = await box.execute(code)
    assert out.stdout.startswith("True"), out


async def test_missing_bubblewrap_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        LocalSandbox()


async def test_no_process_or_directory_left_after_20_runs(scripted, backend):
    before_procs, before_dirs = set(sandbox_processes()), set(sandbox_dirs())
    for _ in range(20):
        server = scripted([fenced("import subprocess; subprocess.Popen(['sleep', '298.5'])\nanswer['ready'] = True")])
        result = await run_on(server, "data", sandbox=backend)
        assert result.status == "ready"
    assert set(sandbox_processes()) - before_procs == set()
    assert sandbox_processes(b"sleep 298.5") == []
    assert set(sandbox_dirs()) - before_dirs == set()
    if backend == "docker":
        from sandbox.docker import LABEL, docker_client

        assert docker_client().containers.list(all=True, filters={"label": LABEL}) == []
