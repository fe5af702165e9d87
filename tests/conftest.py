"""Fixtures that start real things: scripted model servers on loopback and sandboxes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rlm
import sandbox
from rlm.testing import ScriptedServer

#: Backends that must pass the sandbox conformance suite; the isolating ones also face the hostile suite.
BACKENDS = ["local", "unsafe-local", "docker"]
ISOLATING = ["local", "docker"]
#: Kernels the conformance suite runs on each backend.
KERNELS = list(sandbox.KERNELS)
#: Command-line marks of our kernel processes (with "/rlm-", the sandbox's directory).
KERNEL_MARKS = (b"ipykernel_launcher", b"lean_kernel.py")


@pytest.fixture(scope="session", autouse=True)
def kernel_under_test() -> Iterator[None]:
    """`RLM_TEST_KERNEL=lean pytest ...` starts every sandbox of this process on that kernel
    (controllers the tests start as subprocesses keep the default)."""
    chosen = os.environ.get("RLM_TEST_KERNEL")
    default = sandbox.KernelSandbox.default_kernel
    if chosen is not None:
        if chosen not in KERNELS:
            raise pytest.UsageError(f"RLM_TEST_KERNEL={chosen!r}: choose one of {', '.join(KERNELS)}")
        sandbox.KernelSandbox.default_kernel = chosen  # type: ignore[assignment]
    yield
    sandbox.KernelSandbox.default_kernel = default


#: Sandbox directory -> the test after which it was first seen: a leak found at the end of the
#: suite names the test that made it.
_FIRST_SEEN: dict[str, str] = {}


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    for name in sandbox_dirs():
        _FIRST_SEEN.setdefault(name, nodeid)


def made_by(names: set[str]) -> dict[str, str]:
    """Each sandbox directory with the test after which it was first seen."""
    return {name: _FIRST_SEEN.get(name, "?") for name in sorted(names)}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole suite: no sandbox process, directory or container of ours remains."""
    before_dirs = set(sandbox_dirs())
    _FIRST_SEEN.update(dict.fromkeys(before_dirs, "before the suite"))
    yield
    kernels = {pid: kernel_dir(pid) for pid in sandbox_processes()}
    assert kernels == {}, f"sandbox kernels outlived the test suite: {kernels}, made by {made_by(set(kernels.values()))}"
    left = set(sandbox_dirs()) - before_dirs
    assert left == set(), f"sandbox directories outlived the test suite, made by {made_by(left)}"
    from sandbox.docker import LABEL, docker_client

    containers = docker_client().containers.list(all=True, filters={"label": LABEL})
    assert containers == [], f"containers outlived the test suite: {containers}"


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    """Factory: `scripted(root_replies, sub=rule, sub_latency=...)` -> a running server."""
    servers: list[ScriptedServer] = []

    def make(*args: Any, **kwargs: Any) -> ScriptedServer:
        server = ScriptedServer(*args, **kwargs).__enter__()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.__exit__(None, None, None)


async def run_on(server: ScriptedServer, data: Any = None, prompt: str = "Answer the question.",
                 **settings: Any) -> rlm.Result:
    """An RLM run against a scripted server with test-friendly limits."""
    settings.setdefault("max_retries", 0)
    settings.setdefault("model", "scripted-root")
    return await rlm.arun(prompt, data, base_url=server.base_url, **settings)


def sandbox_processes(marker: bytes = b"") -> list[int]:
    """PIDs of rlm sandbox kernels; with `marker`, of the processes whose command line holds it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ours = b"/rlm-" in cmdline and any(mark in cmdline for mark in KERNEL_MARKS)
        if marker in cmdline if marker else ours:
            found.append(int(entry.name))
    return found


def kernel_dir(pid: int) -> str:
    """The sandbox directory named on a kernel's command line ('?' when it has gone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "?"
    found = re.search(r"/(rlm-\d+-[^/\x00 ]+)", cmdline)
    return found.group(1) if found else "?"


def sandbox_dirs() -> list[str]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return [p.name for p in tmp.glob("rlm-*")]
