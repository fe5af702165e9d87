"""The Docker backend: the same persistent Jupyter kernel, in a locked-down container.

One container per sandbox, made with the Docker SDK: no network, read-only root filesystem,
tmpfs /tmp, an unprivileged user, every capability dropped, no-new-privileges, memory / CPU /
pids limits, the IPC and work dirs bind-mounted, data mounted read-only, and labels that mark
it as ours so `prune()` can always find leftovers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import SandboxStartError, SandboxUnavailable
from .image import build_image
from .kernel import KernelSandbox
from .local import parse_bytes

LABEL = "rlm.sandbox"
SANDBOX_USER = "65534:65534"


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
        mounts: Sequence[str | Path] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        self.client = docker_client()
        super().__init__(startup_timeout=startup_timeout)
        self.image = image or build_image(self.client)
        self.memory_limit = parse_bytes(memory_limit)
        self.cpus = cpus
        self.max_processes = max_processes
        self.tmp_size = parse_bytes(tmp_size)
        self.mounts = [Path(m).resolve() for m in mounts]
        self._container: Any = None
        uid, gid = (int(x) for x in SANDBOX_USER.split(":"))
        for path in (self.root, self.ipcdir, self.workdir):
            if os.geteuid() == 0:
                os.chown(path, uid, gid)
            else:
                path.chmod(0o777)  # the container's unprivileged user must write here

    def _launch(self, connection_file: Path) -> None:
        volumes = {str(self.ipcdir): {"bind": str(self.ipcdir), "mode": "rw"},
                   str(self.workdir): {"bind": str(self.workdir), "mode": "rw"}}
        volumes.update({str(m): {"bind": str(m), "mode": "ro"} for m in self.mounts})
        try:
            self._container = self.client.containers.run(
                self.image,
                ["python3", *self.kernel_args(connection_file)],
                detach=True, init=True, network_mode="none", read_only=True, user=SANDBOX_USER,
                cap_drop=["ALL"], security_opt=["no-new-privileges"],
                mem_limit=self.memory_limit, memswap_limit=self.memory_limit,
                nano_cpus=int(self.cpus * 1e9), pids_limit=self.max_processes,
                tmpfs={"/tmp": f"size={self.tmp_size},mode=1777"},
                volumes=volumes, working_dir=str(self.workdir),
                environment=self.kernel_environment(),
                labels={LABEL: "1", "rlm.controller-pid": str(os.getpid())},
            )
        except Exception as exc:
            raise SandboxStartError(f"could not start the container: {exc}") from exc

    async def _launch_async(self, connection_file: Path) -> None:
        # The SDK blocks for the engine's round trips: keep the event loop (other runs) moving.
        await asyncio.to_thread(self._launch, connection_file)

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
                self._container.remove(force=True)
            except Exception:  # already gone
                pass
            self._container = None
