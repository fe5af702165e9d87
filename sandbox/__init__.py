"""Where model-written code runs: persistent Jupyter kernels behind an isolation boundary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from . import admission, rpc
from .admission import limit_sandboxes
from .base import (
    Backend,
    Delivery,
    ExecutionResult,
    Kernel,
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
from .kernel import KERNELS, KernelSandbox
from .local import LocalProvisioner
from .pool import SandboxPool
from .provisioner import Launch, Provisioner
from .rpc import Reply

#: Backend names accepted by `create_sandbox` (and `rlm.run(sandbox=...)`).
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def create_sandbox(backend: Backend = "local", *, startup_timeout: float = 60.0,
                   limits: KernelLimits | Mapping[str, int] | None = None, kernel: Kernel | None = None,
                   **options: Any) -> KernelSandbox:
    """A not-yet-started sandbox of the named backend; `start()` (or `async with`) acquires it.
    `kernel` picks the kernel (`KernelSandbox.default_kernel` when None); `options` go to the
    backend's provisioner (`LocalProvisioner`, `DockerProvisioner`)."""
    provisioner: Provisioner
    if backend in ("local", "unsafe-local"):
        provisioner = LocalProvisioner(isolated=backend == "local", **options)
    elif backend == "docker":
        from .docker import DockerProvisioner  # imported on use: the SDK is only needed here

        provisioner = DockerProvisioner(**options)
    else:
        raise SandboxConfigError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return KernelSandbox(provisioner, startup_timeout=startup_timeout, limits=limits, kernel=kernel)


__all__ = [
    "BACKENDS",
    "KERNELS",
    "Backend",
    "Delivery",
    "ExecutionResult",
    "Kernel",
    "KernelLimits",
    "KernelSandbox",
    "Launch",
    "LocalProvisioner",
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
    "admission",
    "create_sandbox",
    "limit_sandboxes",
    "reap_orphans",
    "rpc",
    "valid_text",
]
