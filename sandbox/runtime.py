"""Code the controller runs inside the kernel at start: `llm_batch`, `answer`, data loading.

This file is executed as the kernel's first cell (its source text, not an import), so it
must only use the standard library. Requests leave the kernel as `input()` prompts on the
Jupyter stdin channel: no socket, no network inside the sandbox.
"""

import builtins as _builtins
import json as _json
import threading as _threading

#: Prefix of stdin prompts that carry an RPC request (the host ignores any other `input()`).
RPC_PREFIX = "\x00rlm-rpc:"
#: Bounds the controller enforces on its side too; it overwrites these with the run's settings.
_RLM_LIMITS = {"answer_chars": 2_000_000, "prompt_chars": 2_000_000, "request_bytes": 16 << 20}
#: Room left in a request for the message's own envelope (headers, signature).
_ENVELOPE_BYTES = 64 << 10
_rpc_lock = _threading.Lock()


def _json_bytes(text):
    """The bytes `text` takes as a JSON string, as the Jupyter message carries it."""
    return len(_json.dumps(text, ensure_ascii=False).encode("utf-8", "replace"))


def _rlm_rpc(method, **params):
    prompt = RPC_PREFIX + _json.dumps({"method": method, **params}, ensure_ascii=False)
    if _json_bytes(prompt) > _RLM_LIMITS["request_bytes"]:
        raise ValueError(f"request too large for the sandbox's channel ({_RLM_LIMITS['request_bytes']:,} bytes)")
    with _rpc_lock:  # one stdin request at a time, even from threads
        reply = _builtins.input(prompt)
    message = _json.loads(reply)
    if not message.get("ok"):
        raise RuntimeError(message.get("error", "request refused"))
    return message["result"]


def llm_batch(prompts):
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
    limit = _RLM_LIMITS["prompt_chars"]
    too_long = [i for i, p in enumerate(prompts) if len(p) > limit]
    if too_long:
        raise ValueError(f"prompts longer than {limit:,} characters at positions {too_long[:10]}: split them")
    results, batch, size = [], [], 0
    budget = _RLM_LIMITS["request_bytes"] - _ENVELOPE_BYTES
    for prompt in prompts:
        cost = _json_bytes(_json.dumps(prompt, ensure_ascii=False)) + 2  # inside the request, then the message
        if batch and size + cost > budget:
            results += _rlm_rpc("llm_batch", prompts=batch)
            batch, size = [], 0
        batch.append(prompt)
        size += cost
    if batch:
        results += _rlm_rpc("llm_batch", prompts=batch)
    return results


def pip_install(packages):
    """Install packages the controller downloads for us (the sandbox has no network).

    Wheels arrive in a read-only directory and are unpacked into a private site directory on sys.path.
    Refused when the run's policy does not allow them.
    """
    import importlib
    import os
    import sys
    import zipfile

    packages = [packages] if isinstance(packages, str) else list(packages)
    wheels = _rlm_rpc("pip_install", packages=packages)
    site = os.path.join(os.getcwd(), ".rlm-site")
    os.makedirs(site, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    if site not in sys.path:
        sys.path.insert(0, site)
    importlib.invalidate_caches()
    return [os.path.basename(w) for w in wheels]


answer = {"content": "", "ready": False}


def _rlm_state():
    """The answer dict, read by the controller after every cell: content cut to the run's
    limit (its full length said apart) and base64-encoded, so its size on the wire is known."""
    import base64

    current = globals().get("answer")
    if not isinstance(current, dict):
        return _json.dumps({"invalid": type(current).__name__})
    content = current.get("content", "")
    content = content if isinstance(content, str) else str(content)
    kept = content[: _RLM_LIMITS["answer_chars"]].encode("utf-8", "replace")
    return _json.dumps({"content": base64.b64encode(kept).decode(), "length": len(content),
                        "ready": current.get("ready") is True})


def _rlm_load(path, kind):
    """Read the data file the controller wrote into the work dir (or mounted read-only)."""
    if kind == "path":
        import pathlib

        return pathlib.Path(path)
    if kind == "bytes":
        with open(path, "rb") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return _json.load(f) if kind == "json" else f.read()


def _rlm_packages():
    """Installed distributions as 'name==version', for the system prompt."""
    from importlib import metadata

    found = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    return sorted(f"{name}=={version}" for name, version in found.items() if name)
