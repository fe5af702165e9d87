"""What a model server says about tokens: its tokenizer's counts and its context window, each
learned once per client, so sub-prompts can be checked and `chunk_text` can count exactly.

Formats read from the servers' own code: vLLM's `GET /v1/models` cards carry `max_model_len`
(vllm-project/vllm vllm/entrypoints/openai/protocol.py `ModelCard`), its `POST /tokenize` at the
server root takes {"model", "prompt"} and answers {"count", "max_model_len", "tokens"}
(`TokenizeCompletionRequest`, `TokenizeResponse`); llama-cpp-python's `POST
/extras/tokenize/count` takes {"input"} and answers {"count"} (abetlen/llama-cpp-python
llama_cpp/server/app.py, types.py `TokenizeInputCountResponse`); its `/v1/models` gives no size.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from .errors import ModelError


@dataclass(frozen=True)
class _Endpoint:
    """A tokenizer route at the server's root, and the name of its text field."""

    path: str
    text_field: str


_ENDPOINTS = (_Endpoint("/tokenize", "prompt"), _Endpoint("/extras/tokenize/count", "input"))

#: How servers word a context overflow, with the numbers they name: llama-cpp-python and older vLLM
#: ("This model's maximum context length is W tokens. However, you requested T tokens (P in the
#: messages, C in the completion)"), newer vLLM ("... your prompt contains at least P input tokens")
#: and vLLM's engine ("The decoder prompt (length P) is longer than the maximum model length of W").
_WINDOW = re.compile(r"maximum context length is (\d+)|maximum model length of (\d+)")
_PROMPT = re.compile(r"\((\d+) in the messages|contains at least (\d+) input tokens|prompt \(length (\d+)\)"
                     r"|messages resulted in (\d+) tokens")


def overflow_numbers(message: str) -> tuple[int | None, int | None]:
    """(prompt tokens, context window) as a server's overflow message names them, or None each."""
    return _first_number(_PROMPT, message), _first_number(_WINDOW, message)


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    found = pattern.search(text)
    return None if found is None else int(next(group for group in found.groups() if group))


class ServerTokens:
    """One model's tokenizer and context window on one OpenAI-compatible server."""

    def __init__(self, http: AsyncOpenAI, model: str, *, context_window: int | None = None,
                 concurrency: int = 16) -> None:
        """`context_window`: the size to assume when the server does not report one."""
        self._http = http
        self.model = model
        self._configured_window = context_window
        self._window: int | None = None
        self._window_asked = False
        self._endpoint: _Endpoint | None = None
        self._probed = False
        self._lock = asyncio.Lock()  # one probe of each kind, however many calls wait on it
        self._concurrency = asyncio.Semaphore(concurrency)

    @property
    def root_url(self) -> str:
        """The server's root: tokenizer routes live beside `/v1`, not under it."""
        base = str(self._http.base_url).rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base

    def learn_window(self, window: int) -> None:
        """Remember a context window the server named (in an overflow answer, say)."""
        self._window, self._window_asked = window, True

    async def context_window(self) -> int | None:
        """The model's context window: as the server reports it, else the configured one."""
        async with self._lock:
            if not self._window_asked:
                self._window = await self._reported_window()
                self._window_asked = True
        return self._window or self._configured_window

    async def _reported_window(self) -> int | None:
        try:
            listing = await self._http.get("/models", cast_to=object)
        except (openai.OpenAIError, ValueError):  # no listing, or not JSON: the window stays unknown
            return None
        cards = listing.get("data") if isinstance(listing, dict) else None
        cards = [card for card in cards if isinstance(card, dict)] if isinstance(cards, list) else []
        # the card of our model; a server with one model serves it under any name
        mine = [card for card in cards if card.get("id") == self.model] or (cards if len(cards) == 1 else [])
        window = mine[0].get("max_model_len") if mine else None
        return window if type(window) is int and window > 0 else None

    async def count(self, texts: list[str]) -> list[int] | None:
        """Each text's token count by the server's tokenizer; None when the server has none."""
        if not texts:
            return []
        probed: list[int] = []
        async with self._lock:
            if not self._probed:
                first = await self._probe(texts[0])
                probed = [] if first is None else [first]
        if self._endpoint is None:
            return None
        rest = await asyncio.gather(*(self._count_one(text) for text in texts[len(probed):]))
        return probed + list(rest)

    async def _probe(self, text: str) -> int | None:
        """Find which tokenizer route the server has, counting `text` with it."""
        for endpoint in _ENDPOINTS:
            try:
                count = await self._ask(endpoint, text)
            except openai.APIStatusError as exc:
                if 400 <= exc.status_code < 500:  # no such route (404/405) or another body (422)
                    continue
                raise ModelError(f"{self.model}: the tokenizer failed: {exc}") from exc
            except openai.OpenAIError as exc:
                raise ModelError(f"{self.model}: the tokenizer failed: {exc}") from exc
            if count is not None:
                self._endpoint, self._probed = endpoint, True
                return count
        self._probed = True
        return None

    async def _count_one(self, text: str) -> int:
        assert self._endpoint is not None
        try:
            count = await self._ask(self._endpoint, text)
        except openai.OpenAIError as exc:
            raise ModelError(f"{self.model}: the tokenizer failed: {exc}") from exc
        if count is None:
            raise ModelError(f"{self.model}: the tokenizer's answer has no count")
        return count

    async def _ask(self, endpoint: _Endpoint, text: str) -> int | None:
        """The count in the server's answer, None when the answer has none; a vLLM answer's
        `max_model_len` is the context window too."""
        async with self._concurrency:
            answer: Any = await self._http.post(self.root_url + endpoint.path, cast_to=object,
                                                body={"model": self.model, endpoint.text_field: text})
        if not isinstance(answer, dict) or type(answer.get("count")) is not int:
            return None
        window = answer.get("max_model_len")
        if type(window) is int and window > 0 and self._window is None:
            self.learn_window(window)
        return int(answer["count"])
