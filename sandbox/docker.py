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
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import LogConfig
from typing_extensions import Unpack

from .base import SandboxStartError, SandboxUnavailable
from .cleanup import process_gone
from .image import build_image
from .local import SANDBOX_UID, WORKDIR
from .provisioner import Launch, Provisioner, Resources

log = logging.getLogger("rlm.sandbox")

LABEL = "rlm.sandbox"
CONTROLLER_LABEL = "rlm.controller-pid"
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
        client = docker.from_env(timeout=60)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise SandboxUnavailable(
            "cannot reach a Docker engine: install it (apt-get install docker.io) and start dockerd, "
            f"or use sandbox='local' ({exc})"
        ) from exc
    return client


def prune(client: Any | None = None, *, everything: bool = False) -> int:
    """Remove the containers of ours whose controller process is gone (with `everything`, also
    those of controllers still running); returns how many."""
    client = client or docker_client()
    containers = [container for container in client.containers.list(all=True, filters={"label": LABEL})
                  if everything or _controller_gone(container)]
    for container in containers:
        container.remove(force=True)
    return len(containers)


def _controller_gone(container: Any) -> bool:
    pid = container.labels.get(CONTROLLER_LABEL, "")
    return not pid.isdigit() or process_gone(int(pid))


class DockerProvisioner(Provisioner):
    """Runs the kernel in one locked-down container per launch (see the module docstring).
    The engine is reached and the image built (once per recipe) in `prepare`, off the event loop."""

    def __init__(
        self,
        *,
        image: str | None = None,
        **resources: Unpack[Resources],
    ) -> None:
        super().__init__(**resources)
        self.image = image
        self.workdir = WORKDIR
        self.client: Any = None
        self._container: Any = None
        self._stdin: Any = None
        self._oom_killed = False

    async def prepare(self, root: Path) -> None:
        self.client = await asyncio.to_thread(docker_client)
        if self.image is None:
            self.image = await asyncio.to_thread(build_image, self.client)

    def grant(self, ipcdir: Path) -> None:
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
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                self._container.reload()  # removed meanwhile: what was read before stands
                self._oom_killed |= bool(self._container.attrs["State"].get("OOMKilled"))

    def _create(self, launch: Launch) -> None:
        volumes = {str(launch.ipcdir): {"bind": str(launch.ipcdir), "mode": "rw"},
                   str(launch.inbox): {"bind": str(launch.inbox), "mode": "ro"}}
        volumes.update({str(m): {"bind": str(m), "mode": "ro"} for m in self.mounts})
        # The log keeps at most one small file: what the kernel writes to its own stdout is
        # bounded on host disk, and the tail still explains a failed start.
        log_config = LogConfig(type=LogConfig.types.JSON, config={"max-size": str(launch.log_bytes),
                                                                   "max-file": "1"})
        try:
            self._container = self.client.containers.create(
                self.image,
                ["python3", "-c", WATCHDOG, "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                 "--clear-groups", "--inh-caps=-all", "--", "python3", *launch.args],
                init=True, network_mode="none", read_only=True, user="0:0",
                cap_drop=["ALL"], cap_add=["KILL", "SETUID", "SETGID"], security_opt=["no-new-privileges"],
                mem_limit=self.memory_limit, memswap_limit=self.memory_limit,
                nano_cpus=int(self.cpus * 1e9) if self.cpus else None, pids_limit=self.max_processes,
                tmpfs={"/tmp": f"size={self.tmp_size},mode=1777",
                       # owned by the kernel's user: the engine resets the mode of a tmpfs that is the cwd
                       self.workdir: f"size={self.disk_limit},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID}"},
                volumes=volumes, working_dir=self.workdir,
                environment=launch.environment, log_config=log_config,
                stdin_open=True,  # with the default detach=False this sets StdinOnce too
                labels={LABEL: "1", CONTROLLER_LABEL: str(os.getpid())},
            )
            # Attached before the start, held open for the container's life; when this process
            # dies the engine closes the container's stdin and the watchdog ends it.
            self._stdin = self._container.attach_socket(params={"stdin": 1, "stream": 1})
            self._container.start()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise SandboxStartError(f"could not start the container: {exc}") from exc

    async def launch(self, launch: Launch) -> None:
        # The SDK blocks for the engine's round trips: keep the event loop (other runs) moving.
        # A cancelled start still waits for the thread, so the container it makes is known to
        # `kill` and removed, never left running after the sandbox closed.
        create = asyncio.ensure_future(asyncio.to_thread(self._create, launch))
        try:
            await asyncio.shield(create)
        except asyncio.CancelledError:
            await asyncio.wait([create])
            raise

    def log(self) -> str:
        if self._container is None:
            return ""
        try:
            return str(self._container.logs(tail=40).decode(errors="replace"))
        except (docker.errors.DockerException, requests.RequestException):
            return ""

    def alive(self) -> bool:
        """Whether the container runs; an engine that stops answering is `SandboxUnavailable`,
        not a dead kernel."""
        container = self._container  # once: kill() may clear it from a worker thread
        if container is None:
            return False
        try:
            container.reload()
        except docker.errors.NotFound:
            return False
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise SandboxUnavailable(f"the Docker engine failed while checking the kernel's container: {exc}") from exc
        return container.status in ("created", "running")

    def kill(self) -> None:
        if self._container is not None:
            self._read_oom_record()  # before the container and its record go
            try:
                self._container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.DockerException, requests.RequestException) as exc:
                log.warning("could not remove container %s (`rlm sandbox prune` will): %s", self._container.id, exc)
            self._container = None
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None

