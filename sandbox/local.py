"""The local backend: a Jupyter kernel under bubblewrap, no Docker needed.

The kernel sees a tmpfs root holding read-only system directories and the Python install,
a private writable work dir and /tmp, only the `lo` interface, its own PID namespace and a clean
environment. When the controller runs as root the kernel also drops to an unprivileged uid,
so root-only host files stay unreadable. Memory and process limits come from a per-sandbox
cgroup where the machine allows one, else from rlimits.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from .base import SandboxStartError, SandboxUnavailable
from .kernel import KernelSandbox

#: Unprivileged identity the kernel drops to when the controller runs as root ("nobody").
SANDBOX_UID = 65534
_SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_INSTALL_HINT = (
    "bubblewrap is not installed: run `apt-get install bubblewrap` (Debian/Ubuntu) or "
    "`dnf install bubblewrap`, or pass sandbox='unsafe-local' to run without isolation"
)


def parse_bytes(size: int | str) -> int:
    """'512m' / '4g' / 1024 -> bytes."""
    if isinstance(size, int):
        return size
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = size.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


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


class Cgroup:
    """A per-sandbox cgroup (v2, or v1 memory + pids) with memory and process limits."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int) -> Cgroup | None:
        """Make the cgroup, or return None where this process may not (no root, no delegation)."""
        base = Path("/sys/fs/cgroup")
        try:
            if (base / "cgroup.controllers").exists():
                enabled = (base / "cgroup.subtree_control").read_text().split()
                if not {"memory", "pids"} <= set(enabled):
                    return None
                path = base / name
                path.mkdir()
                (path / "memory.max").write_text(str(memory_bytes))
                (path / "memory.swap.max").write_text("0")
                (path / "pids.max").write_text(str(max_pids))
                return cls([path])
            memory, pids = base / "memory" / name, base / "pids" / name
            memory.mkdir()
            pids.mkdir()
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            (pids / "pids.max").write_text(str(max_pids))
            return cls([memory, pids])
        except OSError:
            return None

    def enter(self) -> None:
        """Move the calling process in (runs in the child between fork and exec)."""
        for path in self.dirs:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.dirs[-1] / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def destroy(self) -> None:
        """Kill every process inside, then remove the cgroup (retrying while the kernel reaps)."""
        for _ in range(500):
            alive = self.pids()
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            remaining = [path for path in self.dirs if path.exists()]
            for path in remaining if not alive else ():
                try:
                    path.rmdir()
                except OSError:
                    pass
            if not remaining:
                return
            time.sleep(0.01)


class LocalSandbox(KernelSandbox):
    """A kernel on this machine: under bubblewrap (`isolated=True`) or as a plain process.

    `isolated=False` is the documented `unsafe-local` opt-in: no isolation at all, only a clean
    environment and a private work dir. Use it where bubblewrap cannot run and the code is yours.
    """

    def __init__(
        self,
        *,
        isolated: bool = True,
        python: str | None = None,
        memory_limit: int | str = "4g",
        max_processes: int = 256,
        tmp_size: int | str = "1g",
        mounts: Sequence[str | Path] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        if isolated and shutil.which("bwrap") is None:
            raise SandboxUnavailable(_INSTALL_HINT)
        super().__init__(startup_timeout=startup_timeout)
        self.isolated = isolated
        self.python = python or sys.executable
        self.memory_limit = parse_bytes(memory_limit)
        self.max_processes = max_processes
        self.tmp_size = parse_bytes(tmp_size)
        self.mounts = [Path(m).resolve() for m in mounts]
        self._proc: subprocess.Popen[bytes] | None = None
        self._cgroup: Cgroup | None = None
        self._drop_root = isolated and os.geteuid() == 0
        if self._drop_root:
            for path in (self.root, self.ipcdir, self.workdir):
                os.chown(path, SANDBOX_UID, SANDBOX_UID)
            for path in self.mounts:
                needed = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
                if path.stat().st_mode & needed != needed:
                    self._cleanup()
                    raise SandboxStartError(
                        f"{path} is not readable by the sandbox's unprivileged user (uid {SANDBOX_UID}): "
                        f"make it world-readable (chmod o+r{'x' if path.is_dir() else ''})"
                    )

    @property
    def log_path(self) -> Path:
        return self.root / "kernel.log"

    def kernel_environment(self) -> dict[str, str]:
        return {
            **super().kernel_environment(),
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONNOUSERSITE": "1",
            # unsafe-local shares the host's /tmp: keep IPython's files in the private work dir
            "IPYTHONDIR": "/tmp/.ipython" if self.isolated else str(self.workdir / ".ipython"),
        }

    def _bwrap_argv(self, connection_file: Path) -> list[str]:
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
        made.add("/tmp")
        for path in _python_prefixes(self.python):
            bind(path)
        bind(str(self.ipcdir), writable=True)
        bind(str(self.workdir), writable=True)
        for path in self.mounts:
            bind(str(path))
        for name, value in self.kernel_environment().items():
            argv += ["--setenv", name, value]
        argv += ["--chdir", str(self.workdir)]
        if self._drop_root:
            argv += [
                "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--",
            ]
        return [*argv, self.python, *self.kernel_args(connection_file)]

    def _limit_child(self) -> None:
        """Runs in the child between fork and exec: enter the cgroup, or fall back to rlimits."""
        if self._cgroup is not None:
            self._cgroup.enter()
            return
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))
        if os.geteuid() != 0:
            # RLIMIT_NPROC counts all of this user's processes, so allow for those already running.
            running = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
            limit = running + self.max_processes
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

    def _launch(self, connection_file: Path) -> None:
        # unsafe-local gets the cgroup too: no isolation, but limits and a sure cleanup.
        self._cgroup = Cgroup.create(f"rlm-{uuid.uuid4().hex[:12]}", self.memory_limit, self.max_processes)
        if self.isolated:
            argv, env, cwd = self._bwrap_argv(connection_file), {}, None
        else:
            argv = [self.python, *self.kernel_args(connection_file)]
            env, cwd = self.kernel_environment(), self.workdir
        with open(self.log_path, "ab") as log:
            try:
                # Launched from the calling thread: bwrap's --die-with-parent follows this thread.
                self._proc = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, preexec_fn=self._limit_child,
                )
            except OSError as exc:
                raise SandboxStartError(f"could not launch the kernel: {exc}") from exc

    def _startup_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._proc.wait()
            self._proc = None
        if self._cgroup is not None:
            self._cgroup.destroy()
            self._cgroup = None
