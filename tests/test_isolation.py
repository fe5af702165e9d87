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

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except OSError:  # closed at the end of the test: nobody connected
            pass

    threading.Thread(target=accept, daemon=True).start()
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
    assert writable == ["/tmp/rlm-probe", f"{box.workdir}/rlm-probe"]
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


async def test_fork_bomb_hits_the_process_limit_and_dies_at_close(backend):
    bomb = """
import os, time
spawned, error = 0, None
try:
    while True:
        if os.fork() == 0:
            time.sleep(299.25)
            os._exit(0)
        spawned += 1
except OSError as e:
    error = type(e).__name__
print(spawned < 64, error)
"""
    before = set(sandbox_processes())
    async with create_sandbox(backend, max_processes=64) as sandbox:
        out = await sandbox.execute(bomb, timeout=60)
        assert out.stdout.startswith("True") and "Error" in out.stdout, out
        assert len(set(sandbox_processes()) - before) > 10  # the forks are alive, up to the limit
        assert (await sandbox.execute("print('still here')")).stdout == "still here\n"
    assert set(sandbox_processes()) - before == set()  # forks of the kernel: all gone at close


async def test_cpu_burning_threads_leave_the_controller_and_a_neighbour_responsive(backend):
    async with create_sandbox(backend) as hostile, create_sandbox(backend) as neighbour:
        await hostile.execute(
            "import threading\n"
            "def burn():\n    while True: pass\n"
            "for _ in range(8): threading.Thread(target=burn, daemon=True).start()"
        )
        for i in range(20):
            out = await neighbour.execute(f"print({i} * {i})", timeout=30)
            assert out.stdout == f"{i * i}\n"
        assert (await hostile.execute("print('responsive')", timeout=30)).stdout == "responsive\n"


async def test_hundred_megabytes_of_output_is_cut(box):
    out = await box.execute("import sys\nfor _ in range(100):\n    sys.stdout.write('y' * 1_000_000)", max_output_chars=4000)
    assert len(out.stdout) < 4200 and out.chars_cut >= 99_990_000


async def test_filling_tmp_stops_at_its_size(backend):
    async with create_sandbox(backend, tmp_size="64m") as sandbox:
        out = await sandbox.execute(
            "written, error = 0, None\n"
            "try:\n"
            "    with open('/tmp/fill', 'wb') as f:\n"
            "        while True:\n"
            "            f.write(b'z' * 1_000_000); f.flush(); written += 1\n"
            "except OSError as e:\n"
            "    error = e.errno\n"
            "print(written, error)", timeout=60)
    written, errno_ = out.stdout.split()
    assert int(written) * 1_000_000 <= 64 * 2**20 and errno_ == "28"  # ENOSPC at the tmpfs size


async def test_killing_the_kernel_is_a_typed_crash(box):
    with pytest.raises(SandboxCrashed):
        await box.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    await box.restart()
    assert (await box.execute("print('again')")).stdout == "again\n"
