"""The exceptions `rlm` raises. Failures inside a run end up in `Result.error` instead."""

from __future__ import annotations


class RLMError(Exception):
    """Base class of every rlm error."""


class ConfigError(RLMError):
    """The configuration is incomplete or contradictory (e.g. no model named)."""


class ModelError(RLMError):
    """A model server call failed after its retries."""


class ContextLengthExceeded(ModelError):
    """The prompt does not fit the model's context window."""


class ServerStartError(RLMError):
    """A managed model server did not come up (missing binary, crash while loading, timeout)."""
