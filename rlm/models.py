"""OpenAI-compatible chat client: one request, its usage, typed errors, and the server's
tokenizer and context window (`ModelClient.tokens`).

Retries on 408/409/429, 5xx and connection errors (exponential backoff with jitter) are the
openai SDK's own; we set their number and the timeout, and turn what is left into `ModelError`.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

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


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client of the process: loading the CA bundle costs ~15 ms of
    CPU, which every client (two per run) paid again, a third of a rollout's controller CPU."""
    return httpx.create_ssl_context()


def _connection_failure(exc: openai.APIConnectionError) -> str:
    """What went wrong on the wire, from the innermost exception of the chain: the transport
    reports a refused or cut connection as a timeout, and the SDK's own text names neither."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    seen = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    if isinstance(cause, TimeoutError):
        return f"APITimeoutError: the request timed out ({seen})"
    return f"APIConnectionError: the connection failed ({seen})"


def _completion(data: Any) -> Completion | str:
    """The first choice of a chat completion body (the API's schema; vLLM's `prompt_token_ids`
    and `token_ids` when asked with `return_token_ids`), or what is wrong with the body."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(choices, list):
        return "the server's answer is not a chat completion: no list of choices"
    if not choices:
        return "the server returned no choices"
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return "the server's answer is not a chat completion: its first choice has no message"
    usage = TokenUsage(calls=1)
    counts = data.get("usage")
    if isinstance(counts, dict):
        usage.prompt_tokens = _int(counts.get("prompt_tokens"))
        usage.completion_tokens = _int(counts.get("completion_tokens"))
    tool_calls = []
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            continue  # custom tools carry no function
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        tool_calls.append({"id": str(call.get("id") or ""), "type": "function",
                           "function": {"name": str(function.get("name") or ""), "arguments": arguments}})
    tokens = logprobs = None
    scored = choice.get("logprobs")
    items = scored.get("content") if isinstance(scored, dict) else None
    if isinstance(items, list) and all(isinstance(item, dict) for item in items):
        tokens = [str(item.get("token", "")) for item in items]
        logprobs = [item["logprob"] if isinstance(item.get("logprob"), (int, float)) else float("nan")
                    for item in items]
    content = message.get("content")
    if isinstance(content, list):  # content parts, as some servers answer
        content = "".join(part["text"] for part in content
                          if isinstance(part, dict) and isinstance(part.get("text"), str))
    finish = choice.get("finish_reason")
    return Completion(
        content=content if isinstance(content, str) else "",
        tool_calls=tool_calls,
        usage=usage,
        finish_reason=finish if isinstance(finish, str) else None,
        tokens=tokens,
        logprobs=logprobs,
        prompt_ids=_ids(data.get("prompt_token_ids")) or _ids(choice.get("prompt_token_ids")),
        completion_ids=_ids(choice.get("token_ids")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _ids(value: Any) -> list[int] | None:
    return value if isinstance(value, list) and all(isinstance(i, int) for i in value) else None


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
        # Local servers (vLLM, llama.cpp) ignore the key, but the SDK insists on one. The SDK's
        # aiohttp transport: httpx's pool scans every idle keep-alive connection for each request,
        # so at llm_batch's fan-out (64 concurrent calls to one server) a call cost ~6 ms of CPU
        # against ~0.5 ms here (`python -m benchmarks core`, llm_batch_64_vs_1).
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=max_retries,
            http_client=DefaultAioHttpClient(verify=_tls_context()),
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
            # turn at 60 turns), and our bodies are plain JSON already. Its response models cost
            # ~0.2 ms a call to build, a third of a sub-call's CPU, so the body is read here
            # (`_completion`). `post` keeps the SDK's transport, retries and status errors.
            response = await self._client.post("/chat/completions", body=body, cast_to=httpx.Response)
            data = json.loads(response.content)
        except openai.BadRequestError as exc:
            text = str(exc).lower()
            if any(hint in text for hint in _CONTEXT_HINTS):
                prompt_tokens, window = overflow_numbers(str(exc))
                if window is not None:
                    self.tokens.learn_window(window)
                raise ContextLengthExceeded(f"{self.model}: prompt exceeds the context window: {exc}",
                                            prompt_tokens=prompt_tokens, window=window) from exc
            raise ModelError(f"{self.model}: request rejected: {exc}") from exc
        except openai.APIConnectionError as exc:  # the SDK's message hides what the transport saw
            raise ModelError(f"{self.model}: {_connection_failure(exc)}") from exc
        except openai.OpenAIError as exc:
            raise ModelError(f"{self.model}: {type(exc).__name__}: {exc}") from exc
        except UnicodeEncodeError as exc:  # text that is not valid UTF-8 (a lone surrogate)
            raise ModelError(f"{self.model}: the request is not valid UTF-8: {exc}") from exc
        except (ValueError, RecursionError) as exc:  # a body that is not JSON
            raise ModelError(f"{self.model}: the server's answer is not a chat completion: {exc}") from exc
        completion = _completion(data)
        if isinstance(completion, str):
            raise ModelError(f"{self.model}: {completion}")
        completion.latency = time.monotonic() - started
        return completion

    async def close(self) -> None:
        await self._client.close()
