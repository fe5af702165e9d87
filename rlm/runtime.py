"""The RLM's side inside the kernel: `llm_batch`, `pip_install`, the answer's state, data loading.

Standard library only: `rlm.repl` installs this source as the kernel module `rlm_runtime`, binds
`rpc` in it to the sandbox's transport (`sandbox.rpc`), and puts only `USER_NAMES` and `answer`
in the user's namespace. The host imports it too, for its names and `Limits`.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import json
import os
import pathlib
import sys
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bound by the installer in the kernel
    from sandbox import rpc

#: What the user's namespace gets from this module.
USER_NAMES = ("llm_batch", "pip_install")


@dataclass(frozen=True)
class Limits:
    """Bounds the controller enforces on its side too; sent by `configure` with the run's values."""

    answer_chars: int = 2_000_000
    prompt_chars: int = 2_000_000
    request_bytes: int = 16 << 20


LIMITS = Limits()


def configure(limits: Limits) -> None:
    global LIMITS
    LIMITS = limits


def _request(method: str, **params: Any) -> Any:
    return rpc.request(method, params, LIMITS.request_bytes)


def llm_batch(prompts: list[str]) -> list[str]:
    """Send every prompt to a sub-LLM in parallel; returns the completions in input order.

    A prompt that fails yields a string starting with "[error]" in its slot. A batch too large
    for one request is sent as several, in order.
    """
    if isinstance(prompts, str):
        raise TypeError("llm_batch takes a list of prompts: use llm_batch([prompt])")
    prompts = list(prompts)
    wrong = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if wrong:
        raise TypeError(f"llm_batch prompts must be strings; not at positions {wrong[:10]}")
    too_long = [i for i, p in enumerate(prompts) if len(p) > LIMITS.prompt_chars]
    if too_long:
        raise ValueError(f"prompts longer than {LIMITS.prompt_chars:,} characters at positions {too_long[:10]}: "
                         "split them")
    results: list[str] = []
    batch: list[str] = []
    size = 0
    budget = LIMITS.request_bytes - rpc.ENVELOPE_BYTES
    for prompt in prompts:
        cost = rpc.json_bytes(json.dumps(prompt, ensure_ascii=False)) + 2  # in the request, then the message
        if batch and size + cost > budget:
            results += _request("llm_batch", prompts=batch)
            batch, size = [], 0
        batch.append(prompt)
        size += cost
    if batch:
        results += _request("llm_batch", prompts=batch)
    return results


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
    """Installed distributions as 'name==version', for the system prompt."""
    found = {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}
    return sorted(f"{name}=={version}" for name, version in found.items() if name)
