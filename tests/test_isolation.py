"""Isolation of every isolating backend (bubblewrap and Docker) against hostile code: network,
environment, filesystem, memory and process limits, leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rlm.testing import fenced
from sandbox import LocalProvisioner, SandboxCrashed, SandboxUnavailable, create_sandbox
from tests.conftest import ISOLATING, KERNELS, run_on, sandbox_dirs, sandbox_processes

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V2 = (CGROUP_ROOT / "cgroup.controllers").exists()


# What the host records about a sandbox, read from the host's side: the limits are asserted on
# the kernel's own accounting of the sandbox's cgroup (or the container's), not on what the code
# inside reports or on how a crash looks.


def cgroup_dir(box, controller: str) -> Path:
    """The sandbox's own cgroup directory for `controller` (v1), or its single v2 directory."""
    if isinstance(box.provisioner, LocalProvisioner):
        assert box.provisioner._cgroup is not None, "the local sandbox runs without a cgroup"
        dirs = box.provisioner._cgroup.dirs  # v2: [path]; v1: [memory, pids, cpu]
        return dirs[0] if len(dirs) == 1 else dirs[("memory", "pids", "cpu").index(controller)]
    cid = box.provisioner._container.id
    if CGROUP_V2:
        candidates = [CGROUP_ROOT / "system.slice" / f"docker-{cid}.scope", CGROUP_ROOT / "docker" / cid]
    else:
        candidates = [CGROUP_ROOT / controller / "docker" / cid]
    found = [path for path in candidates if path.is_dir()]
    assert found, f"no cgroup of container {cid[:12]} at {candidates}"
    return found[0]


def cgroup_read(box, controller: str, v1_name: str, v2_name: str) -> str:
    return (cgroup_dir(box, controller) / (v2_name if CGROUP_V2 else v1_name)).read_text().strip()


def cgroup_stat(box, controller: str, name: str) -> dict[str, int]:
    text = (cgroup_dir(box, controller) / name).read_text()
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


def host_pids(box) -> list[int]:
    """PIDs of every process of the sandbox, as the host numbers them."""
    if isinstance(box.provisioner, LocalProvisioner):
        return [int(p) for p in (cgroup_dir(box, "memory") / "cgroup.procs").read_text().split()]
    top = box.provisioner._container.top()
    column = top["Titles"].index("PID")
    return [int(row[column]) for row in top["Processes"]]


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def host_cpu_seconds(box) -> float:
    """CPU time used so far by the sandbox's processes, from the host's accounting."""
    if CGROUP_V2:
        return cgroup_stat(box, "cpu", "cpu.stat")["usage_usec"] / 1e6
    if not isinstance(box.provisioner, LocalProvisioner):
        return int(cgroup_read(box, "cpuacct", "cpuacct.usage", "")) / 1e9
    usage = cgroup_dir(box, "cpu") / "cpuacct.usage"
    if usage.exists():  # cpu and cpuacct mounted together
        return int(usage.read_text()) / 1e9
    # cpuacct is a hierarchy of its own here, where the sandbox has no group: sum its members
    return sum(process_cpu_seconds(pid) for pid in host_pids(box))


def cpu_quota(box) -> float:
    """The CPUs the sandbox's cgroup may use, as configured in the kernel."""
    if CGROUP_V2:
        quota, period = cgroup_read(box, "cpu", "", "cpu.max").split()
    else:
        quota = cgroup_read(box, "cpu", "cpu.cfs_quota_us", "")
        period = cgroup_read(box, "cpu", "cpu.cfs_period_us", "")
    return int(quota) / int(period) if quota not in ("max", "-1") else float("inf")


def processes_with(marker: bytes) -> list[int]:
    """Live processes whose command line holds `marker` (a zombie's command line is empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmdline and marker in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture(params=ISOLATING)
def backend(request):
    return request.param


@pytest.fixture
def kernel() -> str | None:
    """The default kernel; tests of what a kernel itself does are parametrized over every one."""
    return None


@pytest.fixture
async def box(backend, kernel):
    sandbox = create_sandbox(backend, memory_limit="512m", max_processes=64, kernel=kernel)
    try:  # closed even when the start fails: the sandbox's directory exists from its creation
        await sandbox.start()
        yield sandbox
    finally:
        await sandbox.close()


async def test_only_loopback_interface(box):
    out = await box.execute("import socket; print([name for _, name in socket.if_nameindex()])")
    assert out.stdout == "['lo']\n"


async def test_host_loopback_server_is_unreachable(box):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test: nobody connected
            accepted.append(listener.accept())

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


async def test_system_dirs_python_inbox_and_mounts_are_read_only_mounts(backend, tmp_path):
    # The kernel's uid may not write to root-owned system dirs whatever their mount, so a refused
    # write proves nothing: the shared directory and the delivery are world-writable on the host,
    # and only a read-only mount can refuse the write, with EROFS. A writable bind fails this.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    data = shared / "data.txt"
    data.write_bytes(b"host data\n")
    data.chmod(0o666)
    before = data.stat()
    async with create_sandbox(backend, mounts=[shared]) as sandbox:
        delivery = sandbox.delivery()
        delivered = delivery.write("delivered.txt", [b"delivered\n"])
        delivery.host.chmod(0o777)
        (delivery.host / "delivered.txt").chmod(0o666)
        code = f"""
import json, os, sys
paths = ['/usr', '/etc', sys.prefix, sys.base_prefix, {str(delivery.host)!r}, {str(shared)!r}]
report = {{'uid': os.getuid(), 'prefix': sys.prefix,
          'read_only': {{p: bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in paths}}, 'errno': {{}}}}
for path in [{str(data)!r}, {delivered!r}]:
    for name, target, mode in [('append', path, 'a'), ('create', os.path.dirname(path) + '/new.txt', 'x')]:
        try:
            with open(target, mode) as f:
                f.write('sandbox was here')
            report['errno'][name + ' ' + path] = 0
        except OSError as e:
            report['errno'][name + ' ' + path] = e.errno
print(json.dumps(report))
"""
        out = await sandbox.execute(code)
        report = json.loads(out.stdout)
        assert sorted(os.listdir(delivery.host)) == ["delivered.txt"]
        assert (delivery.host / "delivered.txt").read_bytes() == b"delivered\n"
    assert report["uid"] == 65534
    if backend == "local":
        assert report["prefix"] == sys.prefix  # the host's Python install, bound in
    assert all(report["read_only"].values()), report["read_only"]
    assert report["errno"] == {f"{action} {path}": errno.EROFS for path in (str(data), delivered)
                               for action in ("append", "create")}
    assert sorted(os.listdir(shared)) == ["data.txt"]
    after = data.stat()
    assert data.read_bytes() == b"host data\n"
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


async def test_host_home_and_secrets_are_not_readable(box):
    probe = Path.home() / ".rlm-isolation-probe"
    probe.write_text("host secret")
    # world-readable on the host: only its absence from the sandbox's filesystem hides it
    public = Path(tempfile.mkdtemp(prefix="rlm-isolation-probe-", dir="/var/tmp"))
    public.chmod(0o755)
    (public / "secret").write_text("host secret")
    (public / "secret").chmod(0o644)
    try:
        code = f"""
for path in ['/etc/shadow', {str(probe)!r}, {str(public / "secret")!r}]:
    try:
        open(path).read()
        print('readable', path)
    except OSError as e:
        print('hidden', path, e.errno)
"""
        out = (await box.execute(code)).stdout
    finally:
        probe.unlink()
        shutil.rmtree(public)
    assert out.count("hidden") == 3, out
    assert out.splitlines()[2] == f"hidden {public / 'secret'} {errno.ENOENT}"


MEMORY_BOMB = "chunks = []\nwhile True:\n    chunks.append(bytearray(50_000_000))"


async def test_memory_limit_stops_a_memory_bomb(box, backend):
    # The host's own OOM killer also ends a bomb in a crash, so a crash proves nothing: assert the
    # limit the host applied, the OOM record of the sandbox's own cgroup / container, and the
    # cgroup's high-water mark. Without the limit the configured value and the peak both fail.
    if isinstance(box.provisioner, LocalProvisioner) and box.provisioner._cgroup is None:  # no cgroup (not root): RLIMIT_DATA
        limits = Path(f"/proc/{box.provisioner._proc.pid}/limits").read_text()
        assert re.search(rf"^Max data size\s+{512 * MIB}\s+{512 * MIB}\s", limits, re.MULTILINE), limits
        out = await box.execute(MEMORY_BOMB, timeout=60)
        assert out.error_name == "MemoryError", out
        assert (await box.execute("print('alive')")).stdout == "alive\n"
        return
    assert int(cgroup_read(box, "memory", "memory.limit_in_bytes", "memory.max")) == 512 * MIB
    if backend == "docker":
        host_config = box.provisioner._container.attrs["HostConfig"]
        assert host_config["Memory"] == 512 * MIB and host_config["MemorySwap"] == 512 * MIB
    assert not box.oom_killed
    with pytest.raises(SandboxCrashed, match="memory limit"):
        await box.execute(MEMORY_BOMB, timeout=60)
    assert box.oom_killed  # read from the cgroup's oom_kill counter / the engine's State.OOMKilled
    await box.restart()
    # A bomb in a child process: the limit's OOM kill takes the child, the kernel lives, and the
    # host sees the cgroup's peak at the limit, never above it.
    out = await box.execute(
        f"import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', {MEMORY_BOMB!r}]).returncode)",
        timeout=60)
    assert out.stdout == f"{-signal.SIGKILL}\n", out
    peak = int(cgroup_read(box, "memory", "memory.max_usage_in_bytes", "memory.peak"))
    assert 448 * MIB < peak <= 512 * MIB
    assert (await box.execute("print('alive')")).stdout == "alive\n"


def pids_limit(box) -> int:
    """The process limit the host applied to the sandbox."""
    value = int(cgroup_read(box, "pids", "pids.max", "pids.max"))
    if not isinstance(box.provisioner, LocalProvisioner):
        assert box.provisioner._container.attrs["HostConfig"]["PidsLimit"] == value
    return value


def tasks(box) -> int:
    """Tasks (processes and threads) in the sandbox's cgroup, as the process limit counts them."""
    return int(cgroup_read(box, "pids", "pids.current", "pids.current"))


async def test_process_limit_stops_a_fork_flood(box):
    code = """
import subprocess
procs, failed = [], None
try:
    for _ in range(200):
        procs.append(subprocess.Popen(['sleep', '30']))
except OSError as e:
    failed = e.errno
print(len(procs), failed)
"""
    # without the limit all 200 start (and the cgroup counts ~213 tasks)
    assert pids_limit(box) == 64
    started, failed = (await box.execute(code)).stdout.split()
    assert failed == str(errno.EAGAIN) and 40 < int(started) < 64
    assert tasks(box) == 64  # the children live: the sandbox is at its cap, exactly
    await box.execute("for p in procs:\n    p.kill()\n    p.wait()")
    assert tasks(box) < 64 - 40


async def test_missing_bubblewrap_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    box = create_sandbox("local")  # construction stores options; the check is part of acquiring
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        await box.start()
    await box.close()


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
    error = e.errno
print(spawned, error)
"""
    # Without the limit the bomb runs until the cell's timeout; a close that killed only the kernel
    # would leave the forks alive.
    async with create_sandbox(backend, max_processes=64) as sandbox:
        assert pids_limit(sandbox) == 64
        spawned, error = (await sandbox.execute(bomb, timeout=60)).stdout.split()
        assert error == str(errno.EAGAIN) and 40 < int(spawned) < 64
        assert tasks(sandbox) == 64  # the forks are alive, exactly up to the limit
        forks = host_pids(sandbox)
        assert len(forks) > int(spawned)
        assert (await sandbox.execute("print('still here')")).stdout == "still here\n"
    # forks of the kernel (they carry its command line): all gone at close
    assert set(forks) & set(sandbox_processes()) == set()


CPU_BURNERS = ("import subprocess, sys\n"
               "burners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(4)]")


async def _burn_window(hostile, neighbour, seconds: float) -> dict[str, float]:
    """Host-side CPU use and throttling of `hostile` over `seconds`, while `neighbour` answers cells."""
    started, used_before = time.monotonic(), host_cpu_seconds(hostile)
    throttled_before = cgroup_stat(hostile, "cpu", "cpu.stat")["nr_throttled"]
    i = 0
    while time.monotonic() - started < seconds:
        # The neighbour answers every cell within a generous timeout (its latency depends on the
        # machine's other work: a speed, measured in benchmarks/, not asserted here).
        out = await neighbour.execute(f"print({i} * {i})", timeout=30)
        assert out.stdout == f"{i * i}\n", f"the neighbour did not answer cell {i}: {out}"
        i += 1
        await asyncio.sleep(0.2)  # a busy loop here would take the spare CPU from the burners
    wall = time.monotonic() - started
    return {"wall": wall, "used": host_cpu_seconds(hostile) - used_before, "cells": i,
            "throttled": cgroup_stat(hostile, "cpu", "cpu.stat")["nr_throttled"] - throttled_before}


async def test_cpu_burning_processes_get_one_cpu_and_leave_a_neighbour_responsive(backend):
    # Processes, not threads: threads share one GIL, so they never use more than one CPU anyway.
    # Without the limit 4 burners take both CPUs (~2x wall) and the quota never throttles them.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell a one-CPU limit from the machine's own size")
    async with create_sandbox(backend, cpus=1.0) as hostile, create_sandbox(backend) as neighbour:
        assert cpu_quota(hostile) == 1.0
        if backend == "docker":
            assert hostile.provisioner._container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
        # A heavy scheduling weight, so that on a machine busy with other work the burners still
        # want more than one CPU and get it: the quota alone then holds them to one.
        weight = ("cpu.weight", "10000") if CGROUP_V2 else ("cpu.shares", str(16 * 1024))
        (cgroup_dir(hostile, "cpu") / weight[0]).write_text(weight[1])
        await hostile.execute(CPU_BURNERS)
        windows = []
        for _ in range(10):  # a machine busy with other work may keep them under their quota for a while
            window = await _burn_window(hostile, neighbour, 3.0)
            windows.append(window)
            assert window["used"] <= 1.3 * window["wall"], window  # never above one CPU
            if window["throttled"] > 0 and window["used"] >= 0.6 * window["wall"]:
                break  # the burners wanted more than one CPU, got about one, and the quota's own
                # record says it held them back
        else:
            pytest.fail(f"the burners never reached their quota, the machine is too busy to tell: {windows}")
        assert (await hostile.execute("print('responsive')", timeout=30)).stdout == "responsive\n"


CONTROLLER = """
import asyncio, json, sys, time
from sandbox import create_sandbox

async def main():
    box = create_sandbox(sys.argv[1])
    await box.start()
    await box.execute("import subprocess; subprocess.Popen(['sleep', '297.5'])")
    info = {"root": str(box.root)}
    if sys.argv[1] == "local":
        info.update(pids=box.provisioner._cgroup.pids(), cgroups=[str(d) for d in box.provisioner._cgroup.dirs])
    else:
        info.update(container=box.provisioner._container.id)
    print(json.dumps(info), flush=True)
    time.sleep(600)

asyncio.run(main())
"""


def _container_running(container_id: str) -> bool:
    from docker.errors import NotFound

    from sandbox.docker import docker_client

    try:
        container = docker_client().containers.get(container_id)
    except NotFound:
        return False
    return container.status in ("created", "running")


def _remove_controller_leftovers(info: dict) -> None:
    """What a SIGKILLed controller could not clean: its container, cgroup and private directory."""
    for pid in processes_with(b"sleep 297.5"):  # only if the test failed: our kernel's child
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if "container" in info:
        from docker.errors import NotFound

        from sandbox.docker import LABEL, docker_client

        try:
            container = docker_client().containers.get(info["container"])
            if LABEL in container.labels:
                container.remove(force=True)
        except NotFound:
            pass
    for cgroup in map(Path, info.get("cgroups", [])):
        for _ in range(200):
            if not cgroup.exists():
                break
            try:
                for pid in (cgroup / "cgroup.procs").read_text().split():  # only if the test failed
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                cgroup.rmdir()
            except OSError:  # busy until the kernel has reaped what was killed
                time.sleep(0.01)
    root = Path(info.get("root", ""))
    if root.name.startswith("rlm-") and root.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(root, ignore_errors=True)


async def test_a_kernel_dies_when_its_controller_is_killed(backend):
    # Fails without bubblewrap's --die-with-parent (local) or the container's stdin watchdog
    # (docker): the kernel and its child then outlive the controller (both checked by hand).
    controller = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CONTROLLER, backend, cwd=REPO, stdout=asyncio.subprocess.PIPE)
    info: dict = {}
    try:
        info = json.loads(await asyncio.wait_for(controller.stdout.readline(), 120))
        assert processes_with(b"sleep 297.5"), "the kernel's child did not start"
        controller.kill()  # SIGKILL: the controller cleans nothing up
        await controller.wait()

        def survivors() -> list:
            left: list = processes_with(b"sleep 297.5")
            if backend == "local":  # bubblewrap and the kernel too, not only the kernel's child
                left += sorted(set(info["pids"]) & set(processes_with(b"")))
            elif _container_running(info["container"]):
                left.append(info["container"])
            return left

        deadline = time.monotonic() + 60
        while survivors() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert survivors() == []
    finally:
        if controller.returncode is None:
            controller.kill()
            await controller.wait()
        _remove_controller_leftovers(info)


@pytest.mark.parametrize("kernel", KERNELS)
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


@pytest.mark.parametrize("kernel", KERNELS)
async def test_killing_the_kernel_is_a_typed_crash(box):
    with pytest.raises(SandboxCrashed):
        await box.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    await box.restart()
    assert (await box.execute("print('again')")).stdout == "again\n"
