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
_rpc_lock = _threading.Lock()


def _rlm_rpc(method, **params):
    with _rpc_lock:  # one stdin request at a time, even from threads
        reply = _builtins.input(RPC_PREFIX + _json.dumps({"method": method, **params}))
    message = _json.loads(reply)
    if not message.get("ok"):
        raise RuntimeError(message.get("error", "request refused"))
    return message["result"]


def llm_batch(prompts):
    """Send every prompt to a sub-LLM in parallel; returns the completions in input order.

    A prompt that fails yields a string starting with "[error]" in its slot.
    """
    if isinstance(prompts, str):
        raise TypeError("llm_batch takes a list of prompts: use llm_batch([prompt])")
    prompts = list(prompts)
    wrong = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if wrong:
        raise TypeError(f"llm_batch prompts must be strings; not at positions {wrong[:10]}")
    if not prompts:
        return []
    return _rlm_rpc("llm_batch", prompts=prompts)


def pip_install(packages):
    """Install packages the controller downloads for us (the sandbox has no network).

    Wheels land in the work dir and are unpacked into a private site directory on sys.path.
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
    """The answer dict as JSON, read by the controller after every cell."""
    current = globals().get("answer")
    if not isinstance(current, dict):
        return _json.dumps({"invalid": type(current).__name__})
    content = current.get("content", "")
    return _json.dumps(
        {"content": content if isinstance(content, str) else str(content), "ready": current.get("ready") is True}
    )


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
