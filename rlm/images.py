"""Prompts with images for vision sub-models: what `llm_batch` accepts besides plain text, checked
on the host (decodable, a known image format, within the size limit) and sent as OpenAI image
content parts (base64 data URLs), the form vLLM serves for vision models such as Qwen2.5-VL."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

_FORMATS = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
            b"GIF89a": "image/gif"}


@dataclass(frozen=True)
class Prompt:
    """One `llm_batch` prompt: its text, and its images as data URLs."""

    text: str
    images: tuple[str, ...] = ()

    def content(self) -> str | list[dict[str, Any]]:
        """The user message's content: plain text, or text and image parts."""
        if not self.images:
            return self.text
        return [{"type": "text", "text": self.text},
                *({"type": "image_url", "image_url": {"url": url}} for url in self.images)]

    def recorded(self) -> str:
        """How the trajectory keeps it: the text, and a count of its images (never their bytes)."""
        return self.text + (f"\n[{len(self.images)} image(s)]" if self.images else "")


def parse(item: Any, *, max_image_bytes: int, max_images: int) -> Prompt | str:
    """A prompt from the kernel's request (a str, or {"text", "images": [base64, ...]}), or why
    it is refused."""
    if isinstance(item, str):
        return Prompt(item)
    if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not isinstance(item.get("images"), list):
        return "a prompt is a str, or a dict with a str `text` and a list of `images`"
    images = item["images"]
    if len(images) > max_images:
        return f"at most {max_images} images per prompt, not {len(images)}"
    urls = []
    for index, encoded in enumerate(images):
        if not isinstance(encoded, str) or len(encoded) > (max_image_bytes + 2) // 3 * 4:
            return f"image {index}: over {max_image_bytes:,} bytes, or not base64 text"
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return f"image {index}: not valid base64"
        mime = next((kind for magic, kind in _FORMATS.items() if data.startswith(magic)), None)
        if mime is None:
            return f"image {index}: not a PNG, JPEG or GIF image"
        urls.append(f"data:{mime};base64,{encoded}")
    return Prompt(item["text"], tuple(urls))
