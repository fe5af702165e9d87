"""`Provisioner`: how one backend runs a kernel process, and nothing else.

`KernelSandbox` owns the kernel's lifecycle and messaging and asks its provisioner to prepare,
launch, poll, kill and clean up, the way `jupyter_client.provisioning` serves `KernelManager`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from typing_extensions import Unpack


@dataclass(frozen=True)
class Launch:
    """What `KernelSandbox` hands a provisioner to start one kernel."""

    #: The kernel's command line after the Python interpreter.
    args: list[str]
    #: The kernel's whole environment, built from nothing: no host secret reaches it.
    environment: dict[str, str]
    #: This launch's IPC directory (sockets, connection file), bound writable until sealed.
    ipcdir: Path
    #: Deliveries from the host, bound read-only.
    inbox: Path
    #: How much of the kernel process's own output to keep (`KernelLimits.raw_output_bytes`).
    log_bytes: int


class Resources(TypedDict, total=False):
    """What a sandbox may use, whatever its backend."""

    #: Memory of everything in the sandbox, its tmpfs /tmp and /work included ("4g").
    memory_limit: int | str
    #: CPU time, in cores (1.0); None: no quota.
    cpus: float | None
    #: Processes and threads (256).
    max_processes: int
    #: Sizes of the tmpfs /tmp ("1g") and /work ("2g").
    tmp_size: int | str
    disk_limit: int | str
    #: Host paths mounted read-only at the same path.
    mounts: Sequence[str | Path]


class Provisioner(abc.ABC):
    """Runs kernel processes for one sandbox. Constructors only store options; `prepare` does
    the slow, fallible work once (engine checks, images, directories)."""

    #: The kernel's working directory, as the kernel sees it (its own writable space).
    workdir: str

    def __init__(self, **resources: Unpack[Resources]) -> None:
        self.memory_limit = parse_bytes(resources.get("memory_limit", "4g"))
        self.cpus = resources.get("cpus", 1.0)
        self.max_processes = resources.get("max_processes", 256)
        self.tmp_size = parse_bytes(resources.get("tmp_size", "1g"))
        self.disk_limit = parse_bytes(resources.get("disk_limit", "2g"))
        self.mounts = [Path(m).resolve() for m in resources.get("mounts", ())]

    async def prepare(self, root: Path) -> None:
        """Acquire what every launch needs; `root` is the sandbox's private host directory."""

    def grant(self, ipcdir: Path) -> None:
        """Let the kernel's user create its sockets in a new IPC directory (before launch)."""

    def environment(self) -> dict[str, str]:
        """Variables this backend adds to the kernel's environment."""
        return {}

    @abc.abstractmethod
    async def launch(self, launch: Launch) -> None:
        """Start the kernel process."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the kernel process still runs."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the kernel process and everything it started."""

    def cleanup(self) -> None:
        """Release what `prepare` acquired, after the last kill."""

    def log(self) -> str:
        """The tail of what the kernel process printed, shown when it fails to start."""
        return ""

    @property
    def oom_killed(self) -> bool:
        """Whether the host's record says the memory limit killed a process of this sandbox."""
        return False


def parse_bytes(size: int | str) -> int:
    """'512m' / '4g' / 1024 -> bytes."""
    if isinstance(size, int):
        return size
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = size.strip().lower().rstrip("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
