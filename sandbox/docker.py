"""The Docker backend: the same persistent Jupyter kernel, in a locked-down container.

One container per sandbox, made with the Docker SDK: no network, read-only root filesystem,
tmpfs /tmp and work dir (size-limited, charged to the container's memory), an unprivileged
user, every capability dropped, no-new-privileges, memory / CPU / pids limits, the per-launch
IPC dir bind-mounted, the inbox and data mounted read-only, a log capped at a small size, and
labels that mark it as ours so `prune()` can always find leftovers. A watchdog inside ends the
container when the controller's attached stdin closes: the kernel dies with its controller.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from docker.types import LogConfig

from .base import KernelLimits, SandboxStartError, SandboxUnavailable
from .image import build_image
from .kernel import KernelSandbox
from .local import SANDBOX_UID, WORKDIR, parse_bytes

LABEL = "rlm.sandbox"
#: PID 1's child in the container: runs the kernel, and kills everything in the container when
#: its stdin (attached by the controller, closed by the engine once the controller is gone) ends.
#: It runs as root with only the capabilities to kill and to drop to the kernel's user, so the
#: kernel (uid 65534, no capabilities) can neither signal nor trace it.
WATCHDOG = """\
import os, subprocess, sys, threading
kernel = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def orphaned():
    sys.stdin.buffer.read()
    os.kill(-1, 9)
threading.Thread(target=orphaned, daemon=True).start()
sys.exit(kernel.wait())
"""


def docker_client() -> Any:
    """A connected Docker client, or `SandboxUnavailable` saying how to get one."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a core dependency
        raise SandboxUnavailable("the docker package is missing: pip install docker") from exc
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests or socket errors
        raise SandboxUnavailable(
            "cannot reach a Docker engine: install it (apt-get install docker.io) and start dockerd, "
            f"or use sandbox='local' ({exc})"
        ) from exc
    return client


def prune(client: Any | None = None) -> int:
    """Remove every container of ours, running or not; returns how many."""
    client = client or docker_client()
    containers = client.containers.list(all=True, filters={"label": LABEL})
    for container in containers:
        container.remove(force=True)
    return len(containers)


class DockerSandbox(KernelSandbox):
    def __init__(
        self,
        *,
        image: str | None = None,
        memory_limit: int | str = "4g",
        cpus: float = 1.0,
        max_processes: int = 256,
        tmp_size: int | str = "1g",
        disk_limit: int | str = "2g",
        mounts: Sequence[str | Path] = (),
        startup_timeout: float = 60.0,
        limits: KernelLimits | Mapping[str, int] | None = None,
    ) -> None:
        self.client = docker_client()
        super().__init__(startup_timeout=startup_timeout, limits=limits)
        self.image = image or build_image(self.client)
        self.memory_limit = parse_bytes(memory_limit)
        self.cpus = cpus
        self.max_processes = max_processes
        self.tmp_size = parse_bytes(tmp_size)
        self.disk_limit = parse_bytes(disk_limit)
        self.mounts = [Path(m).resolve() for m in mounts]
        self.workdir = WORKDIR
        self._container: Any = None
        self._stdin: Any = None
        self._oom_killed = False

    def _grant(self, ipcdir: Path) -> None:
        if os.geteuid() == 0:
            os.chown(ipcdir, SANDBOX_UID, SANDBOX_UID)
        else:
            ipcdir.chmod(0o777)  # the container's unprivileged user must create its sockets here

    @property
    def oom_killed(self) -> bool:
        self._read_oom_record()
        return self._oom_killed

    def _read_oom_record(self) -> None:
        """Fold the engine's OOM record of the current container in (kept after its removal)."""
        if self._container is not None:
            try:
                self._container.reload()
                self._oom_killed |= bool(self._container.attrs["State"].get("OOMKilled"))
            except Exception:  # removed meanwhile: what was read before stands
                pass

    def _launch(self, connection_file: Path) -> None:
        volumes = {str(self.ipcdir): {"bind": str(self.ipcdir), "mode": "rw"},
                   str(self.inbox): {"bind": str(self.inbox), "mode": "ro"}}
        volumes.update({str(m): {"bind": str(m), "mode": "ro"} for m in self.mounts})
        # The log keeps at most one small file: what the kernel writes to its own stdout is
        # bounded on host disk, and the tail still explains a failed start.
        log_config = LogConfig(type=LogConfig.types.JSON, config={"max-size": str(self.limits.raw_output_bytes),
                                                                   "max-file": "1"})
        try:
            self._container = self.client.containers.create(
                self.image,
                ["python3", "-c", WATCHDOG, "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                 "--clear-groups", "--inh-caps=-all", "--", "python3", *self.kernel_args(connection_file)],
                init=True, network_mode="none", read_only=True, user="0:0",
                cap_drop=["ALL"], cap_add=["KILL", "SETUID", "SETGID"], security_opt=["no-new-privileges"],
                mem_limit=self.memory_limit, memswap_limit=self.memory_limit,
                nano_cpus=int(self.cpus * 1e9), pids_limit=self.max_processes,
                tmpfs={"/tmp": f"size={self.tmp_size},mode=1777",
                       # owned by the kernel's user: the engine resets the mode of a tmpfs that is the cwd
                       self.workdir: f"size={self.disk_limit},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID}"},
                volumes=volumes, working_dir=self.workdir,
                environment=self.kernel_environment(), log_config=log_config,
                stdin_open=True,  # with the default detach=False this sets StdinOnce too
                labels={LABEL: "1", "rlm.controller-pid": str(os.getpid())},
            )
            # Attached before the start, held open for the container's life; when this process
            # dies the engine closes the container's stdin and the watchdog ends it.
            self._stdin = self._container.attach_socket(params={"stdin": 1, "stream": 1})
            self._container.start()
        except Exception as exc:
            raise SandboxStartError(f"could not start the container: {exc}") from exc

    async def _launch_async(self, connection_file: Path) -> None:
        # The SDK blocks for the engine's round trips: keep the event loop (other runs) moving.
        # A cancelled start still waits for the thread, so the container it makes is known to
        # `_kill` and removed, never left running after the sandbox closed.
        launch = asyncio.ensure_future(asyncio.to_thread(self._launch, connection_file))
        try:
            await asyncio.shield(launch)
        except asyncio.CancelledError:
            await asyncio.wait([launch])
            raise

    def _startup_log(self) -> str:
        try:
            return self._container.logs(tail=40).decode(errors="replace") if self._container else ""
        except Exception:
            return ""

    def _alive(self) -> bool:
        if self._container is None:
            return False
        try:
            self._container.reload()
        except Exception:
            return False
        return self._container.status in ("created", "running")

    def _kill(self) -> None:
        if self._container is not None:
            try:
                self._read_oom_record()  # before the container and its record go
                self._container.remove(force=True)
            except Exception:  # already gone
                pass
            self._container = None
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None
