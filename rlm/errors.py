"""The exceptions rlm raises, under one base: `except rlm.RLMError` catches them all.

Failures inside a run end up in `Result.error` instead. The `sandbox` package is independent of
rlm and has its own root, `SandboxError`; it is registered here as an `RLMError`, so the one
base catches sandbox failures too (`except` honours the registration).
"""

from __future__ import annotations

import abc

from sandbox import SandboxError


class RLMError(Exception, metaclass=abc.ABCMeta):
    """Base class of every rlm error, sandbox errors included."""


RLMError.register(SandboxError)


class ConfigError(RLMError, ValueError):
    """The configuration is incomplete or contradictory (no model named, an unknown backend...)."""


class ModelError(RLMError):
    """A model server call failed after its retries, or answered with something unusable."""


class ContextLengthExceeded(ModelError):
    """The prompt does not fit the model's context window."""

    def __init__(self, message: str, *, prompt_tokens: int | None = None, window: int | None = None) -> None:
        """`prompt_tokens` and `window`: the sizes, where known (servers often name them)."""
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.window = window


class BudgetExhausted(RLMError):
    """The call tree's token or cost budget is spent: no further model request is made."""


class ServerStartError(RLMError):
    """A managed model server did not come up (missing binary, crash while loading, timeout)."""
