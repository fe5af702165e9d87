"""The sandbox boundary seen from the host: hostile code must not change a host file, fill the
host's disk, or grow the controller's memory, whatever it writes, plants or sends.

Every assertion here is made on the host: its files and their modes, its free disk space, the
controller's peak memory measured in a process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

import rlm
from rlm.testing import fenced
from sandbox import KernelLimits, SandboxProtocolError, create_sandbox
from tests.conftest import ISOLATING, KERNELS, run_on
from tests.controller_process import run_controller

each_backend = pytest.mark.parametrize("backend", ISOLATING)
each_kernel = pytest.mark.parametrize("kernel", KERNELS)
MB = 1 << 20


class Victim:
    """A host file (0600) in a host directory (0700) outside any sandbox, with a fingerprint."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "victim"
        self.dir.mkdir(mode=0o700)
        self.file = self.dir / "secret"
        self.file.write_bytes(os.urandom(4096))
        self.file.chmod(0o600)
        self.before = self.fingerprint()

    def fingerprint(self) -> tuple[object, ...]:
        file, folder = os.lstat(self.file), os.lstat(self.dir)
        return (hashlib.sha256(self.file.read_bytes()).hexdigest(), stat.S_IMODE(file.st_mode), file.st_uid,
                file.st_mtime_ns, file.st_nlink, stat.S_IMODE(folder.st_mode), folder.st_uid,
                sorted(os.listdir(self.dir)))


class HostDisk:
    """The host disk's use since this was made: what a sandbox's writes cost the host."""

    #: Allowance for whatever else writes on this machine meanwhile.
    margin = 32 * MB

    def __init__(self) -> None:
        self.before = shutil.disk_usage("/").used

    def assert_unchanged(self, what: str) -> None:
        grown = shutil.disk_usage("/").used - self.before
        assert grown < self.margin, f"host disk grew by {grown / MB:.0f} MB {what}"


@pytest.fixture
def victim() -> Victim:
    root = Path("/var/tmp") / f"rlm-victim-{os.getpid()}-{os.urandom(4).hex()}"  # not under the sandboxes' /tmp
    root.mkdir(mode=0o700)
    try:
        yield Victim(root)
    finally:
        shutil.rmtree(root)


def _plant(victim: Victim) -> str:
    """Model code that plants links to the victim wherever the host might write next: every name
    the controller ever wrote in the work dir, and the IPC directory of the next launch."""
    return f"""
import glob, os
targets = [{str(victim.file)!r}, {str(victim.dir)!r}]
names = ['context.txt', 'context.bin', 'context.json', '.rlm-wheelhouse', 'kernel.json', 'start.py', 'lean_kernel.py']
places = [os.getcwd(), '/tmp'] + glob.glob('/tmp/rlm-*') + glob.glob('/tmp/rlm-*/*')
planted = 0
for place in places:
    for name in names + ['kernel-2.json', 'ipc-2', 'ipc-3', '1', '2', '3']:
        for target in targets:
            try:
                os.symlink(target, os.path.join(place, name if target == targets[0] else name + '.d'))
                planted += 1
            except OSError:
                pass
for wheel in glob.glob('/tmp/rlm-*/inbox/*/*'):  # delivered files: read-only, but try
    try:
        os.unlink(wheel)
    except OSError:
        pass
print('planted', planted)
"""


@each_backend
async def test_planted_links_never_redirect_a_host_write(scripted, victim, backend):
    """The restore path after a crash, the restart after a timeout, and a pip delivery, each
    preceded by links planted everywhere the sandbox can write."""
    server = scripted([
        fenced("answer['content'] = 'kept'"),
        fenced(_plant(victim) + "\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
        fenced(_plant(victim) + "\nimport signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
               "while True:\n    time.sleep(0.05)"),
        fenced(_plant(victim) + "\nprint(pip_install(['inflection==0.5.1']))\nimport inflection"),
        fenced("print(len(context), answer['content'])\nanswer['ready'] = True"),
    ])
    rlm.RLMConfig(model="m").wheelhouse.mkdir(parents=True, exist_ok=True)
    result = await run_on(server, "0123456789", sandbox=backend, allow_pip=["inflection"], exec_timeout=3)
    assert victim.fingerprint() == victim.before
    assert result.status == "ready" and result.turns[1].restarted and result.turns[2].restarted
    assert "inflection-0.5.1" in result.turns[3].output
    assert result.turns[4].output.strip() == "10 kept"


@each_backend
async def test_filling_the_work_dir_stops_at_its_limit_not_at_the_host_disk(backend):
    limit = 64 * MB
    disk = HostDisk()
    async with create_sandbox(backend, disk_limit=limit) as box:
        out = await box.execute(
            "written, error = 0, None\n"
            "try:\n"
            "    with open('fill', 'wb') as f:\n"
            "        while True:\n"
            "            f.write(b'z' * 1_000_000); f.flush(); written += 1\n"
            "except OSError as e:\n"
            "    error = e.errno\n"
            "print(written, error)", timeout=60)
        disk.assert_unchanged("during the fill")
    written, errno_ = out.stdout.split()
    assert errno_ == "28" and int(written) * 1_000_000 <= limit  # ENOSPC inside, at the limit


def _file_size(path: str) -> int:
    """A file's size; a log being rotated is briefly missing, so give it a moment to return."""
    for _ in range(50):
        with contextlib.suppress(FileNotFoundError):
            return os.path.getsize(path)
        time.sleep(0.02)
    return 0


@each_backend
@each_kernel
async def test_raw_output_reaches_the_host_only_as_a_capped_tail(backend, kernel):
    limits = KernelLimits(raw_output_bytes=64 * 1024)
    disk = HostDisk()
    async with create_sandbox(backend, limits=limits, kernel=kernel) as box:
        out = await box.execute(
            "import os, sys\n"
            "for _ in range(300):\n"
            "    os.write(1, b'o' * 1_000_000); os.write(2, b'e' * 100_000)\n"
            "print('done', file=sys.__stdout__, flush=True)", timeout=120, max_output_chars=1000)
        disk.assert_unchanged("for 330 MB of raw output")
        if backend == "docker":
            box.provisioner._container.reload()
            log_size = _file_size(box.provisioner._container.attrs["LogPath"])
            assert log_size <= 4 * limits.raw_output_bytes, f"container log is {log_size} bytes"
        assert len(box.provisioner.log()) <= limits.raw_output_bytes
        assert sorted(p.name for p in box.root.iterdir()) == ["inbox", "ipc-1"]  # no log file of ours
    assert out.ok and out.chars_cut > 290_000_000  # it reached the REPL output, cut there


@each_backend
async def test_oversized_and_overlong_messages_cut_the_channel(backend):
    """Raw messages past the limits, sent on the kernel's own sockets: the host reads none of
    them whole, names the limit, and a restart gives a working kernel."""
    limits = KernelLimits(output_message_bytes=1 * MB, message_bytes=2 * MB)
    attacks = {
        "one frame over the limit": "k.session.send(k.iopub_socket, 'stream', "
                                    "{'name': 'stdout', 'text': 'x' * 3_000_000}, parent=k.get_parent())",
        "many frames, each small": "k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'x'}, "
                                   "parent=k.get_parent(), buffers=[b'z' * 100] * 500)",
        "a request over the limit": "k.session.send(k.stdin_socket, 'input_request', {'prompt': 'p' * 5_000_000}, "
                                    "parent=k.get_parent(), ident=k._parent_ident['shell'])",
    }
    # forged through ipykernel's session object; the host's limits are the same for any kernel
    async with create_sandbox(backend, limits=limits, kernel="ipykernel") as box:
        for name, attack in attacks.items():
            with pytest.raises(SandboxProtocolError, match=r"limit|parts"):
                await box.execute(f"k = get_ipython().kernel\n{attack}\nimport time; time.sleep(5)", timeout=30)
            await box.restart()
            assert (await box.execute("print('fresh')")).stdout == "fresh\n", name


@each_backend
@each_kernel
async def test_a_flood_of_output_messages_is_counted_and_dropped(backend, kernel):
    limits = KernelLimits(output_messages=500)
    async with create_sandbox(backend, limits=limits, kernel=kernel) as box:
        out = await box.execute("for i in range(5000):\n    display(i)",
                                timeout=120, max_output_chars=2000)
    assert out.ok and out.messages_dropped >= 4000
    assert "dropped" in out.stderr


@each_backend
async def test_controller_memory_stays_bounded_under_answer_and_output_floods(scripted, backend):
    """Six turns of a 200 MB answer, then floods of output, display data and hostile replies,
    against a controller in its own process: its peak memory is measured, not pytest's."""
    flood = [fenced("answer['content'] = 'a' * 200_000_000 + str(len(answer['content']))")] * 6 + [
        fenced("import os\nfor _ in range(200): os.write(1, b'o' * 1_000_000)"),
        fenced("print('p' * 150_000_000)"),
        fenced("'r' * 150_000_000"),
        fenced("from IPython.display import display\nfor i in range(20000): display('d' * 100)"),
        fenced("import rlm_runtime\nrlm_runtime.answer_state = lambda namespace: 's' * 15_000_000"),
        fenced("import rlm_runtime\nrlm_runtime.answer_state = lambda namespace: 's' * 100_000_000"),
        fenced("answer = {'content': 'done', 'ready': True}"),
    ]
    baseline = run_controller(scripted([fenced("answer = {'content': 'done', 'ready': True}")]).base_url,
                              sandbox=backend)
    report = run_controller(scripted(flood).base_url, sandbox=backend, max_turns=len(flood))
    assert report["status"] == "ready", report
    assert all("answer_cut" in events for events in report["events"][:6]), report["events"]
    assert report["turn_answers"][:6] == [2_000_000] + [None] * 5  # cut once, unchanged after: no copies
    assert "kernel_restarted" in report["events"][11] and "state_unreadable" in report["events"][10]
    grown = report["peak_rss_mb"] - baseline["peak_rss_mb"]
    print(f"controller peak {report['peak_rss_mb']:.0f} MB, baseline {baseline['peak_rss_mb']:.0f} MB")
    assert grown < 250, f"controller peak grew by {grown:.0f} MB (baseline {baseline['peak_rss_mb']:.0f} MB)"


async def test_files_of_a_killed_controller_are_reaped_without_following_links(victim, tmp_path):
    import subprocess
    import tempfile

    from sandbox import reap_orphans

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = Path(tempfile.gettempdir()) / f"rlm-{dead.pid}-test"
    (orphan / "ipc-1").mkdir(parents=True)
    (orphan / "ipc-1" / "link").symlink_to(victim.dir)
    (orphan / "inbox").symlink_to(victim.dir)
    live = Path(tempfile.mkdtemp(prefix=f"rlm-{os.getppid()}-"))  # pytest's parent runs: not an orphan
    try:
        assert reap_orphans() >= 1
        assert not orphan.exists() and live.exists()
        assert victim.fingerprint() == victim.before
    finally:
        shutil.rmtree(live)
        shutil.rmtree(orphan, ignore_errors=True)


@each_backend
async def test_work_dir_is_a_tmpfs_of_the_default_disk_limit_and_the_inbox_is_read_only(backend):
    async with create_sandbox(backend) as box:
        where = box.delivery().write("data.txt", [b"host bytes"])
        out = await box.execute(
            "import os\n"
            "work, inbox = os.statvfs('/work'), os.statvfs(os.path.dirname(DATA))\n"
            "print(work.f_blocks * work.f_frsize, bool(inbox.f_flag & os.ST_RDONLY), os.getcwd())\n"
            "try:\n    open(DATA, 'a')\nexcept OSError as e:\n    print(e.errno)".replace("DATA", repr(where)))
    size, read_only, cwd, errno_ = out.stdout.split()
    assert (int(size), read_only, cwd) == (2 << 30, "True", "/work")
    assert errno_ in ("13", "30")  # not the owner (root's 0644 file), on a read-only mount either way


def test_limits_too_small_to_work_are_refused():
    with pytest.raises(ValueError, match="message_bytes >= 65,536"):
        KernelLimits(message_bytes=1000)


def test_cgroups_of_a_killed_controller_are_reaped():
    import subprocess

    from sandbox import reap_orphans
    from sandbox.local import Cgroup

    dead = subprocess.Popen(["true"])
    dead.wait()
    cgroup = Cgroup.create(f"rlm-{dead.pid}-test", 64 * MB, 8, 1.0)
    if cgroup is None:
        pytest.skip("no cgroup delegation without root")
    reap_orphans()
    assert not any(path.exists() for path in cgroup.dirs)


async def _until_stopped(box, timeout: float = 60) -> None:
    """Wait until the host sees the sandbox's kernel stopped (state T): the kernel's command line
    names its connection file under the sandbox's private directory."""
    marker = f"{box.root}/ipc-".encode()
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                    states.append((entry / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if "T" in states:
            return
        assert time.monotonic() < deadline, f"the kernel did not stop within {timeout:g}s: states {states}"
        await asyncio.sleep(0.05)


@each_backend
async def test_a_kernel_that_stops_reading_cannot_block_the_controller(backend, monkeypatch):
    import sandbox.kernel

    monkeypatch.setattr(sandbox.kernel, "_SEND_SECONDS", 2.0)
    async with create_sandbox(backend) as box:
        await box.execute("import os, signal, threading\n"
                          "threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGSTOP)).start()")
        await _until_stopped(box)  # stopped: its socket buffers fill and stay full
        started = time.monotonic()
        with pytest.raises(SandboxProtocolError, match="took no message"):
            await box.execute("x = '" + "a" * 10_000_000 + "'", timeout=120)
        # a send bounded by its 2 s limit, not by the execution's 120 s (nor by a kernel that never reads)
        assert time.monotonic() - started < 60
        await box.restart()
        assert (await box.execute("print('fresh')")).stdout == "fresh\n"


@each_backend
async def test_the_ipc_directory_is_taken_back_before_any_code_runs(backend):
    """It is on host disk: a kernel that could create files there could fill the disk, or plant
    a tree too deep for the host's cleanup."""
    disk = HostDisk()
    async with create_sandbox(backend) as box:
        out = await box.execute(
            "import errno, glob, os\n"
            "ipc = glob.glob('/tmp/rlm-*/ipc-*')[0]\n"
            "for attempt in (lambda: open(ipc + '/fill', 'wb'), lambda: os.mkdir(ipc + '/d'),\n"
            "                lambda: os.symlink('/', ipc + '/l'), lambda: os.chmod(ipc, 0o777)):\n"
            "    try:\n        attempt(); print('done')\n    except OSError as e:\n"
            "        print(errno.errorcode[e.errno])")
        listing = os.listdir(box.ipcdir)
        mode = os.lstat(box.ipcdir)
    assert out.stdout.split() == ["EACCES", "EACCES", "EACCES", "EPERM"], out
    assert (mode.st_uid, stat.S_IMODE(mode.st_mode)) == (os.geteuid(), 0o755)
    assert listing and all(name.startswith("k-") for name in listing), listing  # the kernel's sockets only
    disk.assert_unchanged("after the attempts")


def test_a_tree_too_deep_for_rmtree_is_still_reaped(victim):
    import subprocess
    import tempfile

    from sandbox import reap_orphans

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = Path(tempfile.gettempdir()) / f"rlm-{dead.pid}-deep"
    orphan.mkdir()
    fd = os.open(orphan, os.O_RDONLY)
    for _ in range(3000):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.symlink(victim.dir, "link", dir_fd=fd)
    os.close(fd)
    assert reap_orphans() >= 1
    assert not orphan.exists() and victim.fingerprint() == victim.before


@each_backend
async def test_a_message_of_too_many_json_items_is_cut_before_it_is_parsed(backend):
    async with create_sandbox(backend, kernel="ipykernel") as box:  # forged through ipykernel's session
        with pytest.raises(SandboxProtocolError, match="JSON items"):
            await box.execute("k = get_ipython().kernel\n"
                              "k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'x': [{}] * 300_000},"
                              " parent=k.get_parent())\nimport time; time.sleep(5)", timeout=30)


async def test_the_docker_kernel_cannot_signal_its_watchdog():
    async with create_sandbox("docker") as box:
        out = await box.execute("import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGSTOP)\n"
                                "except PermissionError:\n    print('refused')")
    assert out.stdout == "refused\n"


async def test_a_cancelled_docker_start_leaves_no_container(monkeypatch):
    import docker.models.containers

    from sandbox.docker import LABEL, docker_client

    create = docker.models.containers.ContainerCollection.create

    def slow_engine(self, *args, **kwargs):
        time.sleep(1)
        return create(self, *args, **kwargs)

    monkeypatch.setattr(docker.models.containers.ContainerCollection, "create", slow_engine)
    box = create_sandbox("docker")
    start = asyncio.ensure_future(box.start())
    await asyncio.sleep(0.3)  # inside the engine call
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    await box.close()
    assert docker_client().containers.list(all=True, filters={"label": LABEL}) == []
    assert box.root is None or not box.root.exists()  # None: cancelled before the root was kept


async def test_sub_call_prompts_are_recorded_up_to_the_run_budget(scripted):
    server = scripted([fenced("r = llm_batch(['a' * 3000, 'b' * 3000, 'c' * 3000])"), fenced("answer['ready'] = True")])
    result = await run_on(server, "data", max_recorded_chars=5000)
    kept = sorted(len(call.prompt) for call in result.sub_calls)
    assert kept[-1] == 3000 and all(length < 1200 for length in kept[:-1])  # heads once the budget is spent
    assert sum("not recorded" in call.prompt for call in result.sub_calls) == 2
