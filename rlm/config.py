"""`RLMConfig`: which models, which sandbox, and every limit of a run.

Model, base URL and key fall back to `RLM_MODEL`, `RLM_BASE_URL` and `OPENAI_API_KEY`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox import Backend

from .budget import ModelPrice
from .errors import ConfigError

CodeFormat = Literal["fenced", "tool"]
#: Names the REPL gives meaning to: no input or function may take them.
RESERVED_NAMES = frozenset({"context", "answer", "answers", "history", "llm_batch", "pip_install", "chunk_text"})


def _default_wheelhouse() -> Path:
    return Path(os.environ.get("RLM_WHEELHOUSE", Path.home() / ".cache" / "rlm" / "wheelhouse"))


class RLMConfig(BaseModel):
    """Settings of one RLM. Every limit is optional to override; the defaults suit a chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(default_factory=lambda: os.environ.get("RLM_MODEL", ""),
                       description="Root model (default: $RLM_MODEL).")
    base_url: str | None = Field(default_factory=lambda: os.environ.get("RLM_BASE_URL"),
                                 description="OpenAI-compatible endpoint (default: $RLM_BASE_URL).")
    api_key: str | None = Field(default=None, repr=False, exclude=True)
    sub_model: str | None = Field(default=None, description="Model for llm_batch (default: the root model).")
    sub_base_url: str | None = None
    sub_api_key: str | None = Field(default=None, repr=False, exclude=True)

    sandbox: Backend = Field(default="local", description="Where the REPL runs.")
    sandbox_options: dict[str, Any] = Field(default_factory=dict)
    allow_pip: bool | list[str] = Field(default=False, description="pip_install() policy: all, none or these names.")
    wheelhouse: Path = Field(default_factory=_default_wheelhouse,
                             description="Where pip_install's wheels are cached on the host ($RLM_WHEELHOUSE).")
    code_format: CodeFormat = Field(default="fenced", description="How the root model writes code.")
    tips: str | None = None
    package_notes: dict[str, str] = Field(default_factory=dict,
                                          description="What the prompt says about a package, by package name.")
    prompt_sections: dict[str, str] = Field(default_factory=dict,
                                            description="Sections added to the system prompt about the task, by title.")
    system_prompt: str | None = Field(default=None, description="A whole system prompt template (see prompts.FIELDS).")
    repl_functions: list[Callable[..., Any]] = Field(
        default_factory=list, description="Host functions the REPL's code calls, through the broker.")
    repl_function_timeout: float = Field(default=60.0, gt=0, description="One REPL function call, seconds.")
    sandbox_functions: list[Callable[..., Any]] = Field(
        default_factory=list, description="Pure helpers defined inside the kernel from their source.")

    max_turns: int = Field(default=20, ge=1, description="Root-model replies in all.")
    max_root_tokens: int | None = Field(default=None, ge=1)
    max_sub_calls: int | None = Field(default=1000, ge=0,
                                      description="Sub-LLM prompts in all, shared by the whole call tree.")
    max_total_tokens: int | None = Field(default=None, ge=1,
                                         description="Tokens of every model call in the call tree.")
    max_cost: float | None = Field(default=None, gt=0, description="Dollars for the call tree, at `prices`.")
    prices: dict[str, ModelPrice] = Field(default_factory=dict,
                                          description="Dollars per million input/output tokens, per model name.")
    max_sub_concurrency: int = Field(default=16, ge=1, description="Model requests in flight at one depth.")
    max_concurrency: int = Field(default=32, ge=1, description="Model requests in flight in the whole call tree.")
    max_depth: int = Field(default=1, ge=0, description="Recursion depth: 0 no llm_batch, 1 plain sub-LLMs.")
    timeout: float | None = Field(default=1800.0, gt=0, description="Whole run, seconds.")
    exec_timeout: float = Field(default=300.0, gt=0, description="One REPL execution, seconds.")
    request_timeout: float = Field(default=600.0, gt=0, description="One model request, seconds.")
    max_retries: int = Field(default=3, ge=0)
    max_output_chars: int = Field(default=8000, ge=100)
    max_answer_chars: int = Field(default=2_000_000, ge=1, description="answer[\"content\"] kept per turn.")
    max_prompt_chars: int = Field(default=2_000_000, ge=1, description="One llm_batch prompt.")
    max_batch_prompts: int = Field(default=10_000, ge=1, description="Prompts in one llm_batch call.")
    max_recorded_chars: int = Field(default=64_000_000, ge=0,
                                    description="Sub-call prompt text kept in the Result; then heads only.")
    preview_chars: int = Field(default=500, ge=0)

    sub_vision: bool = Field(default=False, description="The sub-model takes images (llm_batch prompts with images).")
    max_image_bytes: int = Field(default=5 << 20, ge=1, description="One image of an llm_batch prompt.")
    max_images: int = Field(default=8, ge=1, description="Images in one llm_batch prompt.")
    sub_tools: list[Callable[..., Any]] = Field(default_factory=list)
    sub_max_turns: int = Field(default=8, ge=1)

    compaction: Literal["summarize", "drop"] | None = Field(
        default=None, description="Replace older root turns when the conversation grows past compact_at.")
    compact_at: float = Field(default=0.8, gt=0, description="Tokens (> 1), or a fraction of context_window.")
    keep_turns: int = Field(default=2, ge=0, description="Latest turns a compaction keeps as they are.")
    summary_model: str | None = Field(default=None, description="Model that writes summaries (default: root).")
    context_window: int | None = Field(default=None, ge=1,
                                       description="The model's context window, where its server reports none.")
    sub_context_window: int | None = Field(default=None, ge=1,
                                           description="The sub-model's, when it differs (default: context_window).")

    temperature: float | None = None
    max_tokens: int | None = Field(default=None, description="Per root completion.")
    extra_body: dict[str, Any] = Field(default_factory=dict)
    logprobs: bool = Field(default=False, description="Ask for per-token logprobs of root completions.")

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:  # one error type for every bad setting, caught with RLMError
            raise ConfigError(str(exc)) from None

    @model_validator(mode="after")
    def _resolve(self) -> RLMConfig:
        if not self.model:
            raise ConfigError("no model given: pass model=... or set RLM_MODEL")
        if self.system_prompt is not None:
            from .prompts import check_template  # the prompt module reads this config

            check_template(self.system_prompt)
        self._check_functions()
        if self.max_cost is not None:
            unpriced = sorted({self.model, self.resolved_sub_model} - set(self.prices))
            if unpriced:
                raise ConfigError(f"max_cost needs a price for every model: none for {', '.join(unpriced)}")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY")
        return self

    def _check_functions(self) -> None:
        names = [fn.__name__ for fn in [*self.repl_functions, *self.sandbox_functions]]
        clash = sorted({n for n in names if names.count(n) > 1 or not n.isidentifier() or n.startswith("_")
                        or n in RESERVED_NAMES})
        if clash:
            raise ConfigError(f"REPL function names must be unique public identifiers the REPL does not own: {clash}")
        for fn in self.sandbox_functions:
            try:
                inspect.getsource(fn)
            except (OSError, TypeError) as exc:
                raise ConfigError(f"sandbox function {fn.__name__}: its source is not available ({exc})") from None

    @property
    def resolved_sub_model(self) -> str:
        return self.sub_model or self.model

    def endpoint(self, role: Literal["root", "sub"]) -> tuple[str, str | None, str | None]:
        """(model, base URL, API key) of a role; the sub role falls back to the root's."""
        if role == "root":
            return self.model, self.base_url, self.api_key
        return self.resolved_sub_model, self.sub_base_url or self.base_url, self.sub_api_key or self.api_key

    def child(self) -> RLMConfig:
        """The configuration of a nested run spawned by llm_batch at depth > 1."""
        model, base_url, api_key = self.endpoint("sub")
        return self.model_copy(
            update={
                "model": model,
                "base_url": base_url,
                "api_key": api_key,
                "max_depth": self.max_depth - 1,
            }
        )
