"""Managed model servers: the vLLM launch contract, the server lifecycle, and a real CPU model
(SmolLM2-135M through llama.cpp's server) driving `rlm.run` end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest

import rlm
from environments import NeedleInAHaystack
from rlm.errors import RLMError
from rlm.serving import LlamaCppServer, ManagedServer, ServerStartError, VLLMServer, served_models
from tests.conftest import run_on, sandbox_processes


def vllm(**options) -> list[str]:
    return VLLMServer(model="Qwen/Qwen3-8B", port=8000, executable="vllm", **options).command()


def test_vllm_command_line_defaults():
    assert vllm() == ["vllm", "serve", "Qwen/Qwen3-8B", "--host", "127.0.0.1", "--port", "8000",
                      "--enable-prefix-caching"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"served_model_name": "root"}, ["--served-model-name", "root"]),
        ({"max_model_len": 32768}, ["--max-model-len", "32768"]),
        ({"gpu_memory_utilization": 0.85}, ["--gpu-memory-utilization", "0.85"]),
        ({"tensor_parallel_size": 4}, ["--tensor-parallel-size", "4"]),
        ({"prefix_caching": False}, ["--no-enable-prefix-caching"]),
        ({"tool_call_parser": "hermes"}, ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]),
        ({"max_logprobs": 20}, ["--max-logprobs", "20"]),
        ({"return_tokens_as_token_ids": True}, ["--return-tokens-as-token-ids"]),
        ({"extra_args": ["--seed", "0"]}, ["--seed", "0"]),
    ],
)
def test_vllm_command_line_options(options, expected):
    argv = vllm(**options)
    start = next(i for i in range(len(argv)) if argv[i : i + len(expected)] == expected)
    assert argv[start : start + len(expected)] == expected
    assert "--enable-prefix-caching" in argv or options == {"prefix_caching": False}


def test_vllm_model_name_and_health():
    server = VLLMServer(model="m", served_model_name="alias", executable="vllm")
    assert server.model_name == "alias" and server.health_path == "/health"


def test_missing_vllm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerStartError, match="vllm is not installed"):
        VLLMServer(model="m").command()


class Command(ManagedServer):
    """A managed server whose command line is given: lifecycle tests without a model."""

    def __init__(self, argv: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.argv = argv

    @property
    def model_name(self) -> str:
        return "none"

    def command(self) -> list[str]:
        return self.argv


def test_a_server_that_dies_during_start_up_reports_its_log():
    server = Command([sys.executable, "-c", "print('loading weights'); raise SystemExit(3)"], startup_timeout=30)
    with pytest.raises(ServerStartError, match="(?s)exited with 3.*loading weights"):
        server.start()
    assert not server.running


def test_a_server_that_never_answers_times_out_and_is_killed():
    server = Command([sys.executable, "-c", "import time; print('stuck', flush=True); time.sleep(600)"],
                     startup_timeout=2)
    with pytest.raises(ServerStartError, match="did not answer"):
        server.start()
    assert not server.running and server.pid is None


def test_a_server_already_answering_is_reused(scripted):
    existing = scripted([])
    port = int(existing.base_url.rsplit(":", 1)[1].split("/")[0])
    server = Command(["false"], port=port)
    with server:
        assert server.reused and server.pid is None
    assert served_models(existing.base_url) == ["scripted"]  # still up: we did not start it


async def test_context_overflow_is_a_typed_error_in_the_result(scripted):
    server = scripted([{"status": 400, "error": "This model's maximum context length is 8192 tokens"}])
    result = await run_on(server, "data")
    assert result.status == "error" and result.error.startswith("ContextLengthExceeded")


@pytest.fixture(scope="module")
def tiny():
    with LlamaCppServer(n_ctx=4096, startup_timeout=300) as server:
        yield server


def test_tiny_server_serves_real_completions_with_logprobs(tiny):
    from openai import OpenAI

    client = OpenAI(base_url=tiny.base_url, api_key="none")
    reply = client.chat.completions.create(
        model=tiny.model_name, messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12, logprobs=True, top_logprobs=1, temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert len(reply.choices[0].logprobs.content) == reply.usage.completion_tokens
    assert served_models(tiny.base_url) == [tiny.model_name]


async def test_rlm_run_end_to_end_on_the_tiny_model(tiny):
    result = await rlm.arun(
        "Print the length of `context` with Python, then store it in answer['content'].",
        "The quick brown fox jumps over the lazy dog.",
        model=tiny.model_name, base_url=tiny.base_url, max_turns=2, max_tokens=200, temperature=0,
        logprobs=True, timeout=300,
    )
    assert result.status in ("ready", "max_turns")  # a 135M model rarely finishes; the pipeline must
    assert len(result.turns) == 2 and all(t.assistant for t in result.turns)
    assert result.usage.root.calls == 2 and result.usage.root.prompt_tokens > 500
    assert result.usage.by_model[tiny.model_name].calls >= 2
    assert all(t.logprobs and len(t.logprobs) == len(t.tokens) for t in result.turns)
    assert all(lp <= 0 for t in result.turns for lp in t.logprobs)


async def test_training_rollout_on_llama_cpp_names_the_missing_token_ids(tiny):
    """llama.cpp returns logprobs but not the sampled ids: a rollout says so instead of guessing."""
    env = NeedleInAHaystack(length=500)
    with pytest.raises(RLMError, match="no token ids"):
        await rlm.rollout(env, env.generate(1)[0], model=tiny.model_name, base_url=tiny.base_url, max_turns=1,
                          max_tokens=40, timeout=300)
    assert sandbox_processes() == []


def test_stopped_server_leaves_no_process():
    server = LlamaCppServer(n_ctx=1024, startup_timeout=300).start()
    pid, url = server.pid, server.base_url
    server.stop()
    assert not server.running
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/models", timeout=2)
    assert not _exists(pid)


def test_rlm_serve_cli_starts_and_stops_on_sigterm():
    before = set(sandbox_processes(b"llama_cpp.server"))
    proc = subprocess.Popen([sys.executable, "-m", "rlm.cli", "serve", "--tiny", "--port", "0", "--n-ctx", "1024"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving smollm2-135m at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert served_models(url) == ["smollm2-135m"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/models", timeout=2)
    assert set(sandbox_processes(b"llama_cpp.server")) <= before


def _exists(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
