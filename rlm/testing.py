"""Test your RLM programs offline: a scripted OpenAI-compatible server on loopback that replays
planned root replies and answers sub-calls by rule, recording every request (body and headers)
and the peak of sub-calls in flight.

    from rlm.testing import ScriptedServer, fenced
    with ScriptedServer([fenced("answer['content'] = str(len(context))", "answer['ready'] = True")]) as server:
        assert rlm.run("How long?", "abc", model="scripted", base_url=server.base_url).answer == "3"

A real HTTP server, so the run under test goes through the `openai` client exactly as in
production; it stands in for a model in tests and benchmarks, never in the product. Standard
library only: `ServerProcess` runs it in a process of its own, even under another interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A reply: assistant text, or a dict with any of content / tool_calls / status / error / usage;
#: faults: {"raw": text} sends that body as is (status 200 unless given), {"hang_up": True}
#: closes the connection without an answer, {"choices": []} answers with no choice.
Reply = str | dict[str, Any]
RootScript = Sequence[Reply] | Callable[[dict[str, Any]], Reply]

ROOT_MARKER = "persistent Python REPL"


def python_call(code: str) -> dict[str, Any]:
    """A reply calling the `python` tool (tool-call code format)."""
    return {"tool_calls": [{"name": "python", "arguments": json.dumps({"code": code})}]}


def fenced(*blocks: str, text: str = "Running code.") -> str:
    """A reply with ```python blocks (fenced code format)."""
    return text + "\n" + "\n".join(f"```python\n{block}\n```" for block in blocks)


def is_root(request: dict[str, Any], marker: str = ROOT_MARKER) -> bool:
    first = request["messages"][0]
    return first.get("role") == "system" and marker in (first.get("content") or "")


def default_sub(request: dict[str, Any]) -> Reply:
    prompt = request["messages"][-1]["content"]
    return f"echo: {prompt}"


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops bursts of concurrent sub-calls
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out and left is expected
            super().handle_error(request, client_address)


class ScriptedServer:
    def __init__(
        self,
        root: RootScript = (),
        sub: Callable[[dict[str, Any]], Reply] = default_sub,
        *,
        sub_latency: float = 0.0,
        root_latency: float = 0.0,
        root_marker: str = ROOT_MARKER,
        hold_until_in_flight: int = 0,
        hold_timeout: float = 120.0,
        tokenizer: Callable[[str], int] | None = None,
        max_model_len: int | None = None,
    ) -> None:
        """`root_marker`: text of the root model's system prompt that tells root requests from
        sub-calls (another library's prompt needs its own). `hold_until_in_flight`: sub-call
        replies wait until that many sub-calls are in flight at once (then never again), so a
        test sees a concurrency level however slow the machine; past `hold_timeout` seconds they
        fail with a status 500 that says how many arrived. `tokenizer` (text -> token count) serves
        vLLM's `POST /tokenize`; `max_model_len` is reported there and on `GET /v1/models` for
        every model asked for so far, as vLLM does (the window is not enforced: script a 400 reply
        for that)."""
        self._root_queue = list(root) if not callable(root) else None
        self._root_fn = root if callable(root) else None
        self._sub = sub
        self.sub_latency = sub_latency
        self.root_latency = root_latency
        self.root_marker = root_marker
        self.requests: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []  # per POST, names lower-cased
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Requests of any kind (root and sub) being answered, and their peak.
        self.requests_in_flight = 0
        self.peak_requests_in_flight = 0
        self.hold_until_in_flight = hold_until_in_flight
        self.hold_timeout = hold_timeout
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        #: (path, body) of every request off the chat route (tokenizer probes and counts), in order.
        self.tokenize_requests: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._in_flight_changed = threading.Condition(self._lock)
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def root_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if is_root(r, self.root_marker)]

    @property
    def sub_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not is_root(r, self.root_marker)]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def models(self) -> list[dict[str, Any]]:
        """What `GET /v1/models` lists: "scripted" and every model asked for so far."""
        with self._lock:
            names = sorted({"scripted", *(str(r.get("model")) for r in self.requests)})
        extra = {} if self.max_model_len is None else {"max_model_len": self.max_model_len}
        return [{"id": name, "object": "model", "created": 0, "owned_by": "scripted", **extra} for name in names]

    def _next_root(self, request: dict[str, Any]) -> Reply:
        if self._root_fn is not None:
            return self._root_fn(request)
        with self._lock:
            if not self._root_queue:
                return {"status": 500, "error": "scripted server: no root reply left"}
            return self._root_queue.pop(0)

    def respond(self, request: dict[str, Any]) -> tuple[int, dict[str, Any] | str | None]:
        root = is_root(request, self.root_marker)
        with self._lock:
            self.requests.append(request)
            self.requests_in_flight += 1
            self.peak_requests_in_flight = max(self.peak_requests_in_flight, self.requests_in_flight)
            if not root:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                self._in_flight_changed.notify_all()
        try:
            if not root and not self._hold():
                reply: Reply = {"status": 500, "error": f"scripted server: only {self.peak_in_flight} of "
                                f"{self.hold_until_in_flight} sub-calls were in flight within {self.hold_timeout:g}s"}
            else:
                time.sleep(self.root_latency if root else self.sub_latency)
                reply = self._next_root(request) if root else self._sub(request)
        finally:
            with self._lock:
                self.requests_in_flight -= 1
                if not root:
                    self.in_flight -= 1
        return _completion(request, reply)

    def tokenize(self, path: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """vLLM's `POST /tokenize` (vllm/entrypoints/openai/protocol.py `TokenizeCompletionRequest`
        -> `TokenizeResponse`), when a tokenizer is given; any other route is not found."""
        with self._lock:
            self.tokenize_requests.append((path, request))
        if path != "/tokenize" or self.tokenizer is None:
            return 404, {"error": {"message": f"no route {path}", "type": "NotFoundError"}}
        count = self.tokenizer(request["prompt"])
        return 200, {"count": count, "max_model_len": self.max_model_len or 0, "tokens": list(range(count))}

    def _hold(self) -> bool:
        """Wait until `hold_until_in_flight` sub-calls were in flight at once; False on timeout."""
        with self._lock:
            return self._in_flight_changed.wait_for(lambda: self.peak_in_flight >= self.hold_until_in_flight,
                                                    timeout=self.hold_timeout)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as model servers do: a request costs no new connection. Without Nagle, so
            # the body written after the headers does not wait for the client's delayed ACK.
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": server.models()})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.endswith("/chat/completions"):
                    self._send(*server.tokenize(self.path, json.loads(body)))
                    return
                with server._lock:
                    server.bodies.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, payload = server.respond(json.loads(body))
                if payload is None:
                    self.close_connection = True  # no answer at all: the client sees a cut connection
                    return
                self._send(status, payload)

            def _send(self, status: int, payload: dict[str, Any] | str) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _completion(request: dict[str, Any], reply: Reply) -> tuple[int, dict[str, Any] | str | None]:
    """The status and body of an answer; a str body goes out as is, None hangs up."""
    spec: dict[str, Any] = {"content": reply} if isinstance(reply, str) else dict(reply)
    if "raw" in spec:
        return int(spec.get("status", 200)), str(spec["raw"])
    if spec.get("hang_up"):
        return 0, None
    if "status" in spec:
        error = {"message": spec.get("error", "scripted failure"), "type": "server_error"}
        return int(spec["status"]), {"error": error}
    content = spec.get("content")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if spec.get("tool_calls"):
        message["tool_calls"] = [
            {"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in spec["tool_calls"]
        ]
    prompt_chars = sum(len(m.get("content") or "") for m in request["messages"])
    usage: dict[str, int] = spec.get("usage") or {
        "prompt_tokens": prompt_chars // 4 + 1,
        "completion_tokens": len(content or "") // 4 + 1,
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    extra: dict[str, Any] = {}
    if request.get("return_token_ids"):
        # A toy chat template, character-level: "<|role|>content<|end|>" per message, then the
        # generation prompt. Like real templates, a later prompt extends an earlier one.
        rendered = "".join(f"<|{m['role']}|>{m.get('content') or ''}<|end|>" for m in request["messages"])
        extra["prompt_token_ids"] = [ord(c) for c in rendered + "<|assistant|>"]
    choice_extra: dict[str, Any] = {}
    if request.get("return_token_ids"):
        choice_extra["token_ids"] = [ord(c) for c in (content or "") + "<|end|>"]
    if request.get("logprobs"):
        text = (content or "") + "<|end|>"
        choice_extra["logprobs"] = {
            "content": [{"token": c, "logprob": -0.5, "bytes": None, "top_logprobs": []} for c in text]}
    return 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "scripted"),
        "choices": spec["choices"] if "choices" in spec else [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if spec.get("tool_calls") else "stop",
             **choice_extra}],
        "usage": usage,
        **extra,
    }


class ServerProcess:
    """A `ScriptedServer` in a process of its own, so it shares no interpreter lock with what a
    benchmark measures. `python` may be another environment's interpreter: this module needs only
    the standard library."""

    def __init__(self, root: list[Reply], *, sub_latency: float = 0.0, root_marker: str = ROOT_MARKER,
                 python: str = sys.executable) -> None:
        # Run as a file in isolated mode: the rlm package (and its dependencies) is not imported.
        self.command = [python, "-I", __file__, json.dumps(root), "--sub-latency", str(sub_latency),
                        "--root-marker", root_marker]
        self.base_url = ""
        self.pid = 0

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        self.base_url, self.pid = self._process.stdout.readline().strip(), self._process.pid
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()  # the server's signal to stop
        self._process.wait(timeout=30)


def main() -> None:
    """`python rlm/testing.py ROOT_JSON [--sub-latency S] [--root-marker TEXT]`: what
    `ServerProcess` runs."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("root_json", help="JSON list of root replies")
    parser.add_argument("--sub-latency", type=float, default=0.0)
    parser.add_argument("--root-marker", default=ROOT_MARKER)
    args = parser.parse_args()
    with ScriptedServer(json.loads(args.root_json), sub_latency=args.sub_latency,
                        root_marker=args.root_marker) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin


if __name__ == "__main__":
    main()
