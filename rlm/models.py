"""OpenAI-compatible chat client: one request, its usage, typed errors, and the server's
tokenizer and context window (`ModelClient.tokens`).

Retries on 408/409/429, 5xx and connection errors (exponential backoff with jitter) are the
openai SDK's own; we set their number and the timeout, and turn what is left into `ModelError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from .errors import ContextLengthExceeded, ModelError
from .tokens import ServerTokens, overflow_numbers
from .trajectory import TokenUsage

if TYPE_CHECKING:
    from .config import RLMConfig

_CONTEXT_HINTS = ("context length", "context_length", "context window", "maximum context", "maximum model length",
                  "too many tokens")


@dataclass
class Completion:
    """One assistant message as the server returned it."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    latency: float = 0.0
    finish_reason: str | None = None
    tokens: list[str] | None = None
    logprobs: list[float] | None = None
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


class ModelClient:
    """Talks to one model on one OpenAI-compatible server."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
        defaults: dict[str, Any] | None = None,
        context_window: int | None = None,
    ) -> None:
        """`context_window`: the model's, for when the server does not report it."""
        self.model = model
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        # Local servers (vLLM, llama.cpp) ignore the key, but the SDK insists on one.
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=max_retries
        )
        self.tokens = ServerTokens(self._client, model, context_window=context_window)

    @classmethod
    def from_config(cls, config: RLMConfig, role: Literal["root", "sub"] = "root") -> ModelClient:
        """The client of one role of a run, with the run's timeouts, retries and sampling."""
        model, base_url, api_key = config.endpoint(role)
        defaults = {"temperature": config.temperature, "max_tokens": config.max_tokens, "extra_body": config.extra_body}
        if role == "root" and config.logprobs:  # llama.cpp returns logprobs only with top_logprobs
            defaults.update(logprobs=True, top_logprobs=1)
        window = config.context_window if role == "root" else config.sub_context_window or config.context_window
        return cls(model, base_url=base_url, api_key=api_key, timeout=config.request_timeout,
                   max_retries=config.max_retries, defaults=defaults, context_window=window)

    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        """One chat completion. Raises `ContextLengthExceeded` or `ModelError`."""
        params = dict(self.defaults)
        extra_body = params.pop("extra_body", None) or {}
        body = {"model": self.model, "messages": messages, **params, **extra_body}
        if tools:
            body["tools"] = tools
        started = time.monotonic()
        try:
            # The SDK's `create` re-walks every message against its TypedDicts before sending: over
            # a long run that costs more CPU than the request itself (cProfile: 69 ms of 95 ms per
            # turn at 60 turns), and our bodies are plain JSON already. `post` keeps the SDK's
            # transport, retries, errors and response model.
            response = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        except openai.BadRequestError as exc:
            text = str(exc).lower()
            if any(hint in text for hint in _CONTEXT_HINTS):
                prompt_tokens, window = overflow_numbers(str(exc))
                if window is not None:
                    self.tokens.learn_window(window)
                raise ContextLengthExceeded(f"{self.model}: prompt exceeds the context window: {exc}",
                                            prompt_tokens=prompt_tokens, window=window) from exc
            raise ModelError(f"{self.model}: request rejected: {exc}") from exc
        except openai.OpenAIError as exc:
            raise ModelError(f"{self.model}: {type(exc).__name__}: {exc}") from exc
        except UnicodeEncodeError as exc:  # text that is not valid UTF-8 (a lone surrogate)
            raise ModelError(f"{self.model}: the request is not valid UTF-8: {exc}") from exc
        except ValueError as exc:  # an answer whose body is not JSON (the SDK parses it with json)
            raise ModelError(f"{self.model}: the server's answer is not a chat completion: {exc}") from exc
        latency = time.monotonic() - started
        if not response.choices:
            raise ModelError(f"{self.model}: the server returned no choices")
        choice = response.choices[0]
        usage = TokenUsage(calls=1)
        if response.usage is not None:
            usage.prompt_tokens = response.usage.prompt_tokens or 0
            usage.completion_tokens = response.usage.completion_tokens or 0
        tool_calls = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in choice.message.tool_calls or []
            if isinstance(c, ChatCompletionMessageFunctionToolCall)  # custom tools carry no function
        ]
        tokens = logprobs = None
        if choice.logprobs is not None and choice.logprobs.content is not None:
            tokens = [item.token for item in choice.logprobs.content]
            logprobs = [item.logprob for item in choice.logprobs.content]
        # vLLM returns token ids when asked (extra_body={"return_token_ids": True}); the SDK keeps
        # such extra fields on its models.
        return Completion(
            content=choice.message.content or "",
            tool_calls=tool_calls,
            usage=usage,
            latency=latency,
            finish_reason=choice.finish_reason,
            tokens=tokens,
            logprobs=logprobs,
            prompt_ids=getattr(response, "prompt_token_ids", None) or getattr(choice, "prompt_token_ids", None),
            completion_ids=getattr(choice, "token_ids", None),
        )

    async def close(self) -> None:
        await self._client.close()
