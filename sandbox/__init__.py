"""Where model-written code runs: persistent Jupyter kernels behind an isolation boundary."""

from __future__ import annotations

from typing import Any

from .base import (
    Delivery,
    ExecutionResult,
    KernelLimits,
    RequestHandler,
    Sandbox,
    SandboxCrashed,
    SandboxError,
    SandboxProtocolError,
    SandboxStartError,
    SandboxUnavailable,
    valid_text,
)
from .local import LocalSandbox
from .pool import SandboxPool

#: Backend names accepted by `create_sandbox` (and `rlm.run(sandbox=...)`).
BACKENDS = ("local", "unsafe-local", "docker")


def reap_orphans() -> int:
    """Remove what sandboxes of killed controllers left on this host (their kernels died with
    them): private directories and cgroups. Containers: `sandbox.docker.prune`. Returns a count."""
    from .kernel import reap_orphan_dirs
    from .local import Cgroup

    return reap_orphan_dirs() + Cgroup.reap_orphans()


def create_sandbox(backend: str = "local", **options: Any) -> Sandbox:
    """A not-yet-started sandbox of the named backend."""
    if backend == "local":
        return LocalSandbox(**options)
    if backend == "unsafe-local":
        return LocalSandbox(isolated=False, **options)
    if backend == "docker":
        from .docker import DockerSandbox  # imported on use: the SDK is only needed here

        return DockerSandbox(**options)
    raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Delivery",
    "ExecutionResult",
    "KernelLimits",
    "LocalSandbox",
    "RequestHandler",
    "Sandbox",
    "SandboxCrashed",
    "SandboxError",
    "SandboxPool",
    "SandboxProtocolError",
    "SandboxStartError",
    "SandboxUnavailable",
    "create_sandbox",
    "reap_orphans",
    "valid_text",
]
