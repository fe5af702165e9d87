"""The local backend: a Jupyter kernel under bubblewrap, no Docker needed.

The kernel sees a tmpfs root holding read-only system directories and the Python install,
a private writable work dir and /tmp, only the `lo` interface, its own PID namespace and a clean
environment. When the controller runs as root the kernel also drops to an unprivileged uid,
so root-only host files stay unreadable. Memory and process limits come from a per-sandbox
cgroup where the machine allows one, else from rlimits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from typing_extensions import Unpack

from .base import SandboxStartError, SandboxUnavailable
from .cleanup import controller_gone
from .provisioner import Launch, Provisioner, Resources

#: Unprivileged identity the kernel drops to when the controller runs as root ("nobody").
SANDBOX_UID = 65534
#: The kernel's working directory inside an isolating sandbox: its own size-limited tmpfs.
WORKDIR = "/work"
_SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_INSTALL_HINT = (
    "bubblewrap is not installed: run `apt-get install bubblewrap` (Debian/Ubuntu) or "
    "`dnf install bubblewrap`, or pass sandbox='unsafe-local' to run without isolation"
)


@functools.lru_cache(maxsize=8)
def _python_prefixes(python: str) -> tuple[str, ...]:
    """The directories a Python interpreter needs to run: its prefix, base prefix and real binary."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        found = [sys.prefix, sys.base_prefix]
    else:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
            capture_output=True, text=True, check=True,
        )
        found = out.stdout.split()
    found.append(os.path.dirname(os.path.dirname(os.path.realpath(python))))
    return tuple(dict.fromkeys(os.path.realpath(p) for p in found))


_CPU_PERIOD_US = 100_000


@functools.cache
def _launcher() -> ThreadPoolExecutor:
    """The thread every local kernel is forked from: one, never shut down before the process
    exits (an idle executor thread waits for work and does not end)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlm-kernel-launcher")


class Cgroup:
    """A per-sandbox cgroup (v2, or v1 memory + pids + cpu) with memory, process and CPU limits.

    Only the host writes here: the sandbox mounts no cgroup filesystem.
    """

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs  # v2: [path]; v1: [memory, pids, cpu]

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int, cpus: float | None) -> Cgroup | None:
        """Make the cgroup, or return None where this process may not (no root, no delegation)."""
        base = Path("/sys/fs/cgroup")
        quota = None if cpus is None else max(1000, int(cpus * _CPU_PERIOD_US))
        made: list[Path] = []
        try:
            if (base / "cgroup.controllers").exists():
                enabled = (base / "cgroup.subtree_control").read_text().split()
                if not {"memory", "pids", "cpu"} <= set(enabled):
                    return None
                path = base / name
                path.mkdir()
                made.append(path)
                (path / "memory.max").write_text(str(memory_bytes))
                (path / "memory.swap.max").write_text("0")
                (path / "pids.max").write_text(str(max_pids))
                if quota is not None:
                    (path / "cpu.max").write_text(f"{quota} {_CPU_PERIOD_US}")
                return cls(made)
            for controller in ("memory", "pids", "cpu"):
                (base / controller / name).mkdir()
                made.append(base / controller / name)
            memory, pids, cpu = made
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            (pids / "pids.max").write_text(str(max_pids))
            if quota is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            return cls(made)
        except OSError:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    path.rmdir()
            return None

    @property
    def oom_kills(self) -> int:
        """Processes the memory limit killed (the kernel's own record)."""
        try:  # v2 keeps it in memory.events, v1 in memory.oom_control
            text = (self.dirs[0] / ("memory.events" if len(self.dirs) == 1 else "memory.oom_control")).read_text()
        except OSError:
            return 0
        match = re.search(r"^oom_kill (\d+)$", text, re.M)
        return int(match.group(1)) if match else 0

    def enter(self) -> None:
        """Move the calling process in (runs in the child between fork and exec)."""
        for path in self.dirs:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    @classmethod
    def reap_orphans(cls) -> int:
        """Destroy the cgroups of sandboxes whose controller died; returns how many."""
        base = Path("/sys/fs/cgroup")
        roots = [base] if (base / "cgroup.controllers").exists() else [base / c for c in ("memory", "pids", "cpu")]
        names = {path.name for root in roots for path in root.glob("rlm-*-*") if controller_gone(path.name)}
        for name in names:
            cls([root / name for root in roots]).destroy()
        return len(names)

    def destroy(self) -> None:
        """Kill every process inside, then remove the cgroup (retrying while the kernel reaps)."""
        for _ in range(500):
            alive = self.pids()
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            remaining = [path for path in self.dirs if path.exists()]  # an orphan may lack some
            for path in remaining if not alive else ():
                with contextlib.suppress(OSError):
                    path.rmdir()
            if not remaining:
                return
            time.sleep(0.01)


class OutputTail:
    """Drains a pipe on a thread, keeping only its last `limit` bytes: the kernel process's own
    stdout/stderr reach the host bounded, however much it writes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        read_fd, self.write_fd = os.pipe()
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._drain, args=(read_fd,), daemon=True,
                                        name="rlm-kernel-output")
        self._thread.start()

    def _drain(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                self._tail += chunk
                if len(self._tail) > 2 * self.limit:
                    del self._tail[: len(self._tail) - self.limit]

    def text(self) -> str:
        return bytes(self._tail[-self.limit :]).decode(errors="replace")

    def close(self) -> None:
        """Stop once every writer is gone (call after the kernel's processes are dead)."""
        os.close(self.write_fd)
        self._thread.join(timeout=5)


class LocalProvisioner(Provisioner):
    """Runs the kernel on this machine: under bubblewrap (`isolated=True`) or as a plain process.

    `isolated=False` is the documented `unsafe-local` opt-in: no isolation at all, only a clean
    environment, a private work dir and the cgroup's limits. Use it where bubblewrap cannot run
    and the code is yours.
    """

    def __init__(
        self,
        *,
        isolated: bool = True,
        python: str | None = None,
        **resources: Unpack[Resources],
    ) -> None:
        super().__init__(**resources)
        self.isolated = isolated
        self.python = python or sys.executable
        # isolated: a tmpfs of `disk_limit` bytes inside the sandbox, not on host disk;
        # unsafe-local: no boundary at all, so a plain private host directory (made by `prepare`)
        self.workdir = WORKDIR
        self._proc: subprocess.Popen[bytes] | None = None
        self._cgroup: Cgroup | None = None
        self._tail: OutputTail | None = None
        self._oom_kills = 0
        self._drop_root = isolated and os.geteuid() == 0

    async def prepare(self, root: Path) -> None:
        if self.isolated and shutil.which("bwrap") is None:
            raise SandboxUnavailable(_INSTALL_HINT)
        if not self.isolated:
            self.workdir = str(root / "work")
            os.mkdir(self.workdir, 0o700)
        if self._drop_root:
            for path in self.mounts:
                needed = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
                if path.stat().st_mode & needed != needed:
                    raise SandboxStartError(
                        f"{path} is not readable by the sandbox's unprivileged user (uid {SANDBOX_UID}): "
                        f"make it world-readable (chmod o+r{'x' if path.is_dir() else ''})"
                    )

    def grant(self, ipcdir: Path) -> None:
        if self._drop_root:
            os.chown(ipcdir, SANDBOX_UID, SANDBOX_UID)

    @property
    def oom_killed(self) -> bool:
        return self._oom_kills > 0 or (self._cgroup is not None and self._cgroup.oom_kills > 0)

    def environment(self) -> dict[str, str]:
        return {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONNOUSERSITE": "1",
            # unsafe-local shares the host's /tmp: keep IPython's files in the private work dir
            "IPYTHONDIR": "/tmp/.ipython" if self.isolated else f"{self.workdir}/.ipython",
        }

    def _bwrap_argv(self, launch: Launch) -> list[str]:
        argv = [
            "bwrap", "--die-with-parent", "--new-session", "--clearenv",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox",
        ]
        if self._drop_root:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user"]
        made: set[str] = {"/"}
        bound: list[str] = []

        def mkdirs(path: str) -> None:
            parent = os.path.dirname(path)
            if parent not in made:
                mkdirs(parent)
                argv.extend(["--perms", "0755", "--dir", parent])
                made.add(parent)

        def bind(path: str, *, writable: bool = False) -> None:
            if any(path == b or path.startswith(b + "/") for b in bound):
                return
            mkdirs(path)
            argv.extend(["--bind" if writable else "--ro-bind", path, path])
            bound.append(path)
            made.add(path)

        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                argv.extend(["--symlink", os.readlink(path), path])
                made.add(path)
            elif os.path.isdir(path):
                bind(path)
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", str(self.tmp_size), "--tmpfs", "/tmp"]
        argv += ["--perms", "0777", "--size", str(self.disk_limit), "--tmpfs", self.workdir]
        made.update(("/tmp", self.workdir))
        for path in _python_prefixes(self.python):
            bind(path)
        bind(str(launch.ipcdir), writable=True)
        bind(str(launch.inbox))
        for mount in self.mounts:
            bind(str(mount))
        for name, value in launch.environment.items():
            argv += ["--setenv", name, value]
        argv += ["--chdir", str(self.workdir)]
        if self._drop_root:
            argv += [
                "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--",
            ]
        return [*argv, self.python, *launch.args]

    def _limit_child(self) -> None:
        """Runs in the child between fork and exec: enter the cgroup, or fall back to rlimits."""
        if self._cgroup is not None:
            self._cgroup.enter()
            return
        # The data limit (heap and private mappings), not the address space: an idle kernel maps
        # some 650 MB of address space but uses about 120 MB of data, so RLIMIT_AS would stop a
        # 512m sandbox from starting at all.
        resource.setrlimit(resource.RLIMIT_DATA, (self.memory_limit, self.memory_limit))
        if os.geteuid() != 0:
            # RLIMIT_NPROC counts all of this user's processes, so allow for those already running.
            running = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
            limit = running + self.max_processes
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

    async def launch(self, launch: Launch) -> None:
        # unsafe-local gets the cgroup too: no isolation, but limits and a sure cleanup.
        self._cgroup = Cgroup.create(f"rlm-{os.getpid()}-{uuid.uuid4().hex[:12]}", self.memory_limit,
                                     self.max_processes, self.cpus)
        if self.isolated:
            argv, env, cwd = self._bwrap_argv(launch), {}, None
        else:
            argv, env, cwd = [self.python, *launch.args], launch.environment, self.workdir
        self._tail = OutputTail(launch.log_bytes)
        tail_fd = self._tail.write_fd

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=tail_fd, stderr=tail_fd,
                                    start_new_session=True, preexec_fn=self._limit_child)

        try:
            # Forking a large controller takes milliseconds: off the event loop, on the one
            # launcher thread, which lives as long as the process. bwrap's --die-with-parent
            # follows the launching thread, so a short-lived thread would kill the sandbox.
            spawned = asyncio.get_running_loop().run_in_executor(_launcher(), spawn)
            try:
                self._proc = await asyncio.shield(spawned)
            except asyncio.CancelledError:  # the fork goes on regardless: keep what kill() must end
                with contextlib.suppress(Exception):
                    self._proc = await spawned
                raise
        except OSError as exc:
            raise SandboxStartError(f"could not launch the kernel: {exc}") from exc

    def log(self) -> str:
        return self._tail.text()[-2000:] if self._tail is not None else ""

    def alive(self) -> bool:
        proc = self._proc  # once: kill() may clear it from a worker thread
        return proc is not None and proc.poll() is None

    def kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        if self._cgroup is not None:
            self._oom_kills += self._cgroup.oom_kills
            self._cgroup.destroy()
            self._cgroup = None
        if self._tail is not None:
            self._tail.close()
            self._tail = None

