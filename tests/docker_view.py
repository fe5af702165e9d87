"""A Docker engine socket that lists only the containers carrying one extra label: a test can run
`rlm sandbox prune` (which removes the rlm containers it sees) on the real engine without
removing the live sandboxes of other test runs that share that engine.

Every request goes to the real engine unchanged, except that container listings get the label
added to their filters.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import socketserver
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

ENGINE_SOCKET = "/var/run/docker.sock"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class _EngineConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def _with_label(target: str, label: str) -> str:
    """`target` with `label` added to the filters of a container listing."""
    parts = urlsplit(target)
    if not parts.path.endswith("/containers/json"):
        return target
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    filters: dict[str, Any] = json.loads(query.get("filters", "{}"))
    labels = filters.get("label", [])
    filters["label"] = [*(labels if isinstance(labels, list) else list(labels)), label]
    query["filters"] = json.dumps(filters)
    return f"{parts.path}?{urlencode(query)}"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class LabelledEngineView:
    """`with LabelledEngineView("key=value") as view:` then `DOCKER_HOST=view.docker_host`."""

    def __init__(self, label: str, engine_socket: str = ENGINE_SOCKET) -> None:
        self.label = label
        self._dir = tempfile.mkdtemp(prefix="docker-view-")
        self.socket_path = str(Path(self._dir) / "docker.sock")
        self._server = _Server(self.socket_path, self._handler_class(engine_socket))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    def __enter__(self) -> LabelledEngineView:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        os.unlink(self.socket_path)
        os.rmdir(self._dir)

    def _handler_class(self, engine_socket: str) -> type[BaseHTTPRequestHandler]:
        label = self.label

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the Docker SDK keeps its connection open

            def log_message(self, *args: Any) -> None:
                pass

            def address_string(self) -> str:
                return "unix"  # a unix socket has no client address

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                engine = _EngineConnection(engine_socket)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                engine.request(self.command, _with_label(self.path, label), body=body or None, headers=headers)
                reply = engine.getresponse()
                payload = reply.read()
                engine.close()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _forward

        return Handler
