"""Where model-written code runs: persistent Jupyter kernels behind an isolation boundary."""

from __future__ import annotations

from typing import Any, get_args

from . import rpc
from .base import (
    Backend,
    Delivery,
    ExecutionResult,
    KernelLimits,
    RequestHandler,
    Sandbox,
    SandboxConfigError,
    SandboxCrashed,
    SandboxError,
    SandboxProtocolError,
    SandboxStartError,
    SandboxUnavailable,
    valid_text,
)
from .cleanup import reap_orphans
from .kernel import KernelSandbox
from .local import LocalSandbox
from .pool import SandboxPool
from .provisioner import Launch, Provisioner
from .rpc import Reply

#: Backend names accepted by `create_sandbox` (and `rlm.run(sandbox=...)`).
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def create_sandbox(backend: Backend = "local", **options: Any) -> Sandbox:
    """A not-yet-started sandbox of the named backend; `start()` (or `async with`) acquires it."""
    if backend == "local":
        return LocalSandbox(**options)
    if backend == "unsafe-local":
        return LocalSandbox(isolated=False, **options)
    if backend == "docker":
        from .docker import DockerSandbox  # imported on use: the SDK is only needed here

        return DockerSandbox(**options)
    raise SandboxConfigError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "Delivery",
    "ExecutionResult",
    "KernelLimits",
    "KernelSandbox",
    "Launch",
    "LocalSandbox",
    "Provisioner",
    "Reply",
    "RequestHandler",
    "Sandbox",
    "SandboxConfigError",
    "SandboxCrashed",
    "SandboxError",
    "SandboxPool",
    "SandboxProtocolError",
    "SandboxStartError",
    "SandboxUnavailable",
    "create_sandbox",
    "reap_orphans",
    "rpc",
    "valid_text",
]
