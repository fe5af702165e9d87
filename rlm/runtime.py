"""The RLM's side inside the kernel: `llm_batch`, `chunk_text`, `pip_install`, the answer's state,
data loading.

Standard library only: `rlm.repl` installs this source as the kernel module `rlm_runtime`, binds
`rpc` in it to the sandbox's transport (`sandbox.rpc`), and puts only `USER_NAMES` and `answer`
in the user's namespace. The host imports it too, for its names and `Limits`.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import io
import json
import os
import pathlib
import re
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bound by the installer in the kernel
    from sandbox import rpc

#: What the user's namespace gets from this module.
USER_NAMES = ("llm_batch", "chunk_text", "pip_install")

#: Tokens a tokenizer may add to a text's own: a BOS token and a leading-space marker.
ADDED_TOKENS = 2


@dataclass(frozen=True)
class Limits:
    """Bounds the controller enforces on its side too; sent by `configure` with the run's values."""

    answer_chars: int = 2_000_000
    prompt_chars: int = 2_000_000
    request_bytes: int = 16 << 20
    chunk_text_chars: int = 100_000_000


LIMITS = Limits()


def configure(limits: Limits) -> None:
    global LIMITS
    LIMITS = limits


def _request(method: str, **params: Any) -> Any:
    return rpc.request(method, params, LIMITS.request_bytes)


def llm_batch(prompts: list[str | dict[str, Any]]) -> list[str]:
    """Send every prompt to a sub-LLM in parallel; returns the completions in input order.

    A prompt is a str, or {"text": str, "images": [PIL image or image bytes, ...]} for a vision
    sub-model. A prompt that fails yields a string starting with "[error]" in its slot. A batch
    too large for one request is sent as several, in order.
    """
    if isinstance(prompts, (str, dict)):
        raise TypeError("llm_batch takes a list of prompts: use llm_batch([prompt])")
    prompts = [_with_images(p) if isinstance(p, dict) else p for p in prompts]
    wrong = [i for i, p in enumerate(prompts) if not isinstance(p, (str, dict))]
    if wrong:
        raise TypeError(f"llm_batch prompts must be strings (or dicts with images); not at positions {wrong[:10]}")
    too_long = [i for i, p in enumerate(prompts) if len(p if isinstance(p, str) else p["text"]) > LIMITS.prompt_chars]
    if too_long:
        raise ValueError(f"prompts longer than {LIMITS.prompt_chars:,} characters at positions {too_long[:10]}: "
                         "split them")
    results: list[str] = []
    for batch in _batches(prompts):
        results += _request("llm_batch", prompts=batch)
    return results


def _with_images(prompt: dict[str, Any]) -> dict[str, Any]:
    """A prompt with images, as the request carries it: the text, and each image's bytes in base64
    (a PIL image as PNG)."""
    text, images = prompt.get("text"), prompt.get("images", [])
    if not isinstance(text, str) or not isinstance(images, (list, tuple)):
        raise TypeError('a prompt with images is {"text": str, "images": [image, ...]}')
    encoded = []
    for image in images:
        if hasattr(image, "save"):  # a PIL image
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            image = buffer.getvalue()
        if not isinstance(image, (bytes, bytearray)):
            raise TypeError(f"an image is a PIL image or bytes, not {type(image).__name__}")
        encoded.append(base64.b64encode(bytes(image)).decode("ascii"))
    return {"text": text, "images": encoded}


def _batches(texts: list[Any], max_items: int | None = None) -> Iterator[list[Any]]:
    """`texts` in order, in runs that each fit one request (and hold at most `max_items`)."""
    batch: list[str] = []
    size = 0
    budget = LIMITS.request_bytes - rpc.ENVELOPE_BYTES
    for text in texts:
        cost = rpc.json_bytes(json.dumps(text, ensure_ascii=False)) + 2  # in the request, then the message
        if batch and (size + cost > budget or len(batch) == max_items):
            yield batch
            batch, size = [], 0
        batch.append(text)
        size += cost
    if batch:
        yield batch


def most_tokens(text: str) -> int:
    """An upper bound on the tokens of `text` that holds for byte-level BPE and byte-fallback
    tokenizers alike: every token covers at least one UTF-8 byte, and digit-splitting
    tokenizers (Qwen, SmolLM2) reach that bound on numbers, so no smaller ratio is safe."""
    return _size(text) + ADDED_TOKENS


def chunk_text(text: str, max_tokens: int) -> list[str]:
    """Split `text` into consecutive chunks of at most `max_tokens` tokens each, cut at paragraph,
    then line, then word boundaries where possible; ''.join(chunks) == text.

    Tokens are counted by the sub-model's server where it has a tokenizer, else bounded by one
    per UTF-8 byte (safe, but chunks come out smaller). Each chunk also fits one llm_batch prompt.
    """
    if not isinstance(text, str):
        raise TypeError(f"chunk_text splits a str, not {type(text).__name__}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise TypeError(f"max_tokens must be an int, not {type(max_tokens).__name__}")
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, not {max_tokens}")
    if len(text) > LIMITS.chunk_text_chars:
        raise ValueError(f"chunk_text takes at most {LIMITS.chunk_text_chars:,} characters at once, not "
                         f"{len(text):,}: chunk slices of the text")
    if not text:
        return []
    samples = _samples(text)
    counts = _count_tokens(samples)
    if counts is None:
        budget = max_tokens - ADDED_TOKENS
    else:  # aim a little under the measured bytes per token; chunks still over are split in `_fit`
        budget = int(max_tokens * _AIM * sum(map(_size, samples)) / max(sum(counts), 1))
    return _fit(_pack(text, max(budget, 1)), max_tokens)


#: Share of `max_tokens` that chunks are packed to, by the measured bytes per token.
_AIM = 0.9
#: Slices of the text whose token counts give its bytes per token, and their length.
_SAMPLES, _SAMPLE_CHARS = 8, 4096
#: Texts in one count_tokens request, at most.
_COUNT_BATCH = 256
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_WORD = re.compile(r"\s*\S+\s*|\s+")
_no_tokenizer = False  # set once the host said the sub-model's server has no tokenizer


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _samples(text: str) -> list[str]:
    step = max(len(text) // _SAMPLES, _SAMPLE_CHARS)
    return [text[start : start + _SAMPLE_CHARS] for start in range(0, len(text), step)][:_SAMPLES]


def _count_tokens(texts: list[str]) -> list[int] | None:
    """The server's token count of each text, asked in few requests; None when it has no tokenizer."""
    global _no_tokenizer
    counts: list[int] = []
    for batch in _batches(texts, _COUNT_BATCH):
        reply = None if _no_tokenizer else _request("count_tokens", texts=batch)
        if reply is None:
            _no_tokenizer = True
            return None
        if not (isinstance(reply, list) and len(reply) == len(batch)
                and all(type(n) is int and n >= 0 for n in reply)):
            raise RuntimeError("count_tokens: the host's reply is not one count per text")
        counts += reply
    return counts


def _fit(chunks: list[str], max_tokens: int) -> list[str]:
    """Count every chunk that might be over `max_tokens` and split those that are, until none is."""
    pieces = [(chunk, most_tokens(chunk) <= max_tokens) for chunk in chunks]
    while True:
        unsure = [piece for piece, fits in pieces if not fits]
        if not unsure:
            return [piece for piece, _ in pieces]
        counts = iter(_count_tokens(unsure) or [most_tokens(piece) for piece in unsure])
        split: list[tuple[str, bool]] = []
        for piece, fits in pieces:
            count = max_tokens if fits else next(counts)
            if count <= max_tokens:
                split.append((piece, True))
            elif len(piece) == 1:
                raise ValueError(f"max_tokens={max_tokens} is too small: the character {piece!r} alone counts "
                                 f"{count} tokens")
            else:  # shrinks every round: each overflowing piece is cut in at least two
                budget = min(_size(piece) - 1, int(_size(piece) * max_tokens * _AIM / count))
                split += [(part, most_tokens(part) <= max_tokens) for part in _pack(piece, max(budget, 1))]
        pieces = split


def _pack(text: str, budget: int) -> list[str]:
    """Consecutive runs of `text` of at most `budget` UTF-8 bytes (a longer single character
    stays whole) and at most one prompt's characters, cut after the last blank line when that
    keeps over half the run, else after the last line or word that fits."""
    max_chars = LIMITS.prompt_chars
    chunks: list[str] = []
    run: list[tuple[str, int]] = []
    size = chars = 0
    for piece, piece_size in _pieces(text, budget, max_chars):
        if run and (size + piece_size > budget or chars + len(piece) > max_chars):
            breaks = [i + 1 for i, (p, _) in enumerate(run) if p.endswith("\n") and not p.strip()]
            keep = breaks[-1] if breaks and 2 * breaks[-1] > len(run) else len(run)
            chunks.append("".join(p for p, _ in run[:keep]))
            run = run[keep:]
            size, chars = sum(n for _, n in run), sum(len(p) for p, _ in run)
            if run and (size + piece_size > budget or chars + len(piece) > max_chars):
                chunks.append("".join(p for p, _ in run))
                run, size, chars = [], 0, 0
        run.append((piece, piece_size))
        size += piece_size
        chars += len(piece)
    if run:
        chunks.append("".join(p for p, _ in run))
    return chunks


def _pieces(text: str, budget: int, max_chars: int) -> Iterator[tuple[str, int]]:
    """`text` as lines with their sizes; a line over the budget as words; a word over it as
    character runs."""
    for match in _LINE.finditer(text):
        line = match.group()
        size = _size(line)
        if size <= budget and len(line) <= max_chars:
            yield line, size
            continue
        for word in _WORD.finditer(line):
            start, end = word.span()
            while start < end:
                cut = min(end - start, budget, max_chars)
                while cut > 1 and _size(line[start : start + cut]) > budget:  # non-ASCII: fewer fit
                    cut = max(1, cut * budget // _size(line[start : start + cut]))
                yield line[start : start + cut], _size(line[start : start + cut])
                start += cut


def proxy(name: str, doc: str) -> Any:
    """A REPL function that runs on the host: its arguments and result travel as JSON, and a
    failure there is raised here as a RuntimeError carrying the message."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return _request("call", function=name, args=list(args), kwargs=kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    return call


def pip_install(packages: str | list[str]) -> list[str]:
    """Install packages the controller downloads for us (the sandbox has no network).

    Wheels arrive in a read-only directory and are unpacked into a private site directory on sys.path.
    Refused when the run's policy does not allow them.
    """
    packages = [packages] if isinstance(packages, str) else list(packages)
    wheels = _request("pip_install", packages=packages)
    site = os.path.join(os.getcwd(), ".rlm-site")
    os.makedirs(site, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    if site not in sys.path:
        sys.path.insert(0, site)
    importlib.invalidate_caches()
    return [os.path.basename(w) for w in wheels]


def next_question(namespace: dict[str, Any]) -> None:
    """Keep the last question's answer in `answers` and give the next one a fresh `answer`."""
    current = namespace.get("answer")
    content = current.get("content", "") if isinstance(current, dict) else ""
    answers = namespace.setdefault("answers", [])
    if isinstance(answers, list):
        answers.append(content if isinstance(content, str) else str(content))
    namespace["answer"] = {"content": "", "ready": False}


def answer_state(namespace: dict[str, Any]) -> str:
    """The user's `answer`, read by the controller after every cell: content cut to the run's
    limit (its full length said apart) and base64-encoded, so its size on the wire is known."""
    current = namespace.get("answer")
    if not isinstance(current, dict):
        return json.dumps({"invalid": type(current).__name__})
    content = current.get("content", "")
    content = content if isinstance(content, str) else str(content)
    kept = content[: LIMITS.answer_chars].encode("utf-8", "replace")
    return json.dumps({"content": base64.b64encode(kept).decode(), "length": len(content),
                       "ready": current.get("ready") is True})


def load_context(path: str, kind: str) -> Any:
    """Read an input the controller delivered (or mounted read-only), by its kind."""
    if kind == "path":
        return pathlib.Path(path)
    if kind == "bytes":
        with open(path, "rb") as f:
            return f.read()
    if kind == "npy":
        import numpy

        return numpy.load(path, allow_pickle=False)
    if kind == "parquet":
        import pandas

        return pandas.read_parquet(path)
    if kind == "image":
        try:
            from PIL import Image
        except ImportError:  # no Pillow in this sandbox: the PNG's bytes
            with open(path, "rb") as f:
                return f.read()
        with Image.open(path) as image:
            image.load()
            return image
    with open(path, encoding="utf-8") as f:
        return json.load(f) if kind == "json" else f.read()


def load_with(source: str, function: str, path: str) -> Any:
    """Load an input with a registered type's loader, sent as source."""
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<loader {function}>", "exec"), namespace)
    return namespace[function](path)


def installed_packages() -> list[str]:
    """Installed distributions as 'name==version', names in PEP 503's normal form, for the system
    prompt; of each name, the one `import` finds first. Read from the `name-version.dist-info`
    directory names (the wheel spec normalizes both parts) rather than each METADATA file: ~2 ms
    instead of ~60 ms of CPU per sandbox. An egg-info without a version is read from its metadata."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = [item.name for item in os.scandir(entry or ".") if item.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
        for item in names:
            stem, _, kind = item.rpartition(".")
            name, _, version = stem.partition("-")
            if kind == "egg-info":
                version = version.split("-py", 1)[0]
            if not version:
                meta = importlib.metadata.Distribution.at(os.path.join(entry or ".", item))
                name, version = meta.metadata["Name"] or "", meta.version or ""
            key = re.sub(r"[-_.]+", "-", name).lower()  # PEP 503's normal form
            if key and version:
                found.setdefault(key, version)
    return sorted(f"{name}=={version}" for name, version in found.items())
