"""Sub-prompts over the sub-model's context window, and `chunk_text`: against the scripted server
speaking vLLM's tokenizer and model-card formats, and against the real llama.cpp server."""

from __future__ import annotations

import json
import random

import pytest

import rlm
from rlm.runtime import most_tokens
from rlm.serving import LlamaCppServer
from rlm.testing import fenced
from tests.conftest import run_on


def words(text: str) -> int:
    """The scripted server's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def typical_texts() -> dict[str, str]:
    """Text the way RLM data looks: prose, code, JSON records, CSV numbers, ids, other scripts."""
    rng = random.Random(0)
    return {
        "prose": open("README.md", encoding="utf-8").read(),
        "code": open("rlm/broker.py", encoding="utf-8").read(),
        "json": json.dumps([{"id": i, "user": f"u{i}", "score": rng.random()} for i in range(200)], indent=2),
        "csv": "\n".join(",".join(str(rng.randint(0, 10**6)) for _ in range(8)) for _ in range(200)),
        "hex ids": "\n".join(f"{rng.getrandbits(128):032x}" for _ in range(200)),
        "chinese": "自然语言处理是人工智能的一个重要分支，研究如何让计算机理解人类语言。" * 30,
        "russian": "Обработка естественного языка — важная область искусственного интеллекта. " * 30,
        "emoji": "🙂🚀🎉 ok " * 200,
    }


def document(paragraphs: int = 60) -> str:
    rng = random.Random(1)
    vocabulary = "the log shows a timeout in the upstream service after retry number".split()
    return "\n\n".join("\n".join(" ".join(rng.choices(vocabulary, k=rng.randint(3, 15)))
                                 for _ in range(rng.randint(1, 6))) for _ in range(paragraphs)) + "\n"


def repl_value(code: str, expression: str) -> list:
    """Root replies that run `code` and put json.dumps(`expression`) in the answer."""
    return [fenced(code, f"import json\nanswer['content'] = json.dumps({expression})", "answer['ready'] = True")]


# --- sub-prompts over the window, vLLM-shaped server ---------------------------------------------


async def test_a_prompt_over_a_reported_window_is_refused_unsent_naming_both_counts(scripted):
    server = scripted(repl_value("r = llm_batch(['word ' * 2000, 'short question'])", "r"),
                      tokenizer=words, max_model_len=1000)
    result = await run_on(server, "data")
    long, short = json.loads(result.answer)
    assert long.startswith("[error] ContextLengthExceeded:")
    assert "2,000 tokens" in long and "1,000 tokens" in long and "not sent" in long
    assert short == "echo: short question"
    assert [r["messages"][-1]["content"] for r in server.sub_requests] == ["short question"]
    assert result.sub_calls[0].usage.calls == 0 and result.sub_calls[0].error == long.removeprefix("[error] ")


async def test_the_configured_window_is_used_when_the_server_reports_none(scripted):
    server = scripted(repl_value("r = llm_batch(['word ' * 300])", "r"), tokenizer=words)
    result = await run_on(server, "data", context_window=200)
    (slot,) = json.loads(result.answer)
    assert "300 tokens" in slot and "200 tokens" in slot and "not sent" in slot
    assert server.sub_requests == []


async def test_a_prompt_under_the_window_is_sent_without_counting_when_its_bytes_fit(scripted):
    server = scripted(repl_value("r = llm_batch(['a few words'])", "r"), tokenizer=words, max_model_len=1000)
    result = await run_on(server, "data")
    assert json.loads(result.answer) == ["echo: a few words"]
    assert [path for path, _ in server.tokenize_requests] == []  # 13 bytes cannot make 1,000 tokens


async def test_a_server_overflow_answer_becomes_the_same_clear_error(scripted):
    vllm_message = ("This model's maximum context length is 512 tokens. However, you requested 900 tokens "
                    "(800 in the messages, 100 in the completion). Please reduce the length of the messages.")

    def sub(request):
        return {"status": 400, "error": vllm_message} if "overflow" in request["messages"][-1]["content"] else "ok"

    server = scripted(repl_value("r = llm_batch(['overflow ' * 100, 'fine'])", "r"), sub)
    result = await run_on(server, "data")
    overflow, fine = json.loads(result.answer)
    assert overflow.startswith("[error] ContextLengthExceeded: the prompt is 800 tokens")
    assert "512 tokens" in overflow and "the server refused it" in overflow and fine == "ok"


async def test_an_overflow_answer_without_numbers_is_named_by_the_byte_bound(scripted):
    server = scripted(repl_value("r = llm_batch(['x' * 5000])", "r"),
                      lambda request: {"status": 400, "error": "prompt is too long for the context window"})
    result = await run_on(server, "data")
    (slot,) = json.loads(result.answer)
    assert f"at most {most_tokens('x' * 5000):,} tokens (estimated" in slot and "not reported" in slot


# --- chunk_text, vLLM-shaped server ----------------------------------------------------------------


async def test_chunk_text_fits_the_servers_count_and_loses_nothing(scripted):
    text = document()
    code = (f"import sandbox_rpc\nsent = []\nplain = sandbox_rpc.request\n"
            "sandbox_rpc.request = lambda method, params, size: sent.append(method) or plain(method, params, size)\n"
            f"chunks = chunk_text({text!r}, 40)")
    server = scripted(repl_value(code, "[chunks, sent]"), tokenizer=words)
    result = await run_on(server, "data")
    chunks, sent = json.loads(result.answer)
    assert "".join(chunks) == text
    assert all(words(chunk) <= 40 for chunk in chunks)
    assert sum(words(chunk) for chunk in chunks) / len(chunks) > 20  # packed by the count, not the byte bound
    assert all(chunk.endswith("\n") for chunk in chunks)  # cut at line ends: no line is 40 words
    # a sample, then every chunk in one batch, then the few that overflowed: not a request per line
    assert set(sent) == {"count_tokens"} and len(sent) <= 4 < len(text.splitlines())
    assert len(server.tokenize_requests) <= 8 + 2 * len(chunks)  # vLLM counts one text per request


async def test_chunk_text_prefers_paragraph_breaks(scripted):
    text = "".join(f"paragraph {i} " + "word " * 6 + "\nmore words here\n\n" for i in range(20))
    server = scripted(repl_value(f"chunks = chunk_text({text!r}, 30)", "chunks"), tokenizer=words)
    chunks = json.loads((await run_on(server, "data")).answer)
    assert "".join(chunks) == text and all(words(c) <= 30 for c in chunks)
    assert all(chunk.endswith("\n\n") for chunk in chunks)


async def test_chunk_text_without_a_tokenizer_bounds_by_bytes_and_probes_once(scripted):
    text = document(20) + "数字 12345 🙂\n" * 30
    server = scripted(repl_value(f"a = chunk_text({text!r}, 100)\nb = chunk_text({text!r}, 50)", "[a, b]"))
    a, b = json.loads((await run_on(server, "data")).answer)
    assert "".join(a) == text == "".join(b)
    assert all(most_tokens(c) <= 100 for c in a) and all(most_tokens(c) <= 50 for c in b)
    assert [path for path, _ in server.tokenize_requests] == ["/tokenize", "/extras/tokenize/count"]


@pytest.mark.parametrize(("call", "error"), [
    ("chunk_text(b'bytes', 10)", "TypeError: chunk_text splits a str, not bytes"),
    ("chunk_text(['a'], 10)", "TypeError: chunk_text splits a str, not list"),
    ("chunk_text('text', 0)", "ValueError: max_tokens must be positive, not 0"),
    ("chunk_text('text', -5)", "ValueError: max_tokens must be positive, not -5"),
    ("chunk_text('text', 2.5)", "TypeError: max_tokens must be an int, not float"),
    ("chunk_text('text', True)", "TypeError: max_tokens must be an int, not bool"),
    ("chunk_text('a' * 100_000_001, 1000)", "ValueError: chunk_text takes at most 100,000,000 characters"),
    ("chunk_text('🙂 ok', 3)", "ValueError: max_tokens=3 is too small: the character '🙂' alone counts 6 tokens"),
])
async def test_chunk_text_refuses_bad_input_clearly(scripted, call, error):
    server = scripted(repl_value(f"try:\n    r = {call}\nexcept Exception as e:\n    r = f'{{type(e).__name__}}: {{e}}'",
                                 "r"))
    assert json.loads((await run_on(server, "data")).answer).startswith(error)


@pytest.mark.parametrize(("texts", "error"), [
    ("'one text'", "count_tokens needs a list of strings"),
    ("[1, 2]", "count_tokens needs a list of strings"),
    ("['x'] * 10_001", "count_tokens takes at most 10,000 texts per call"),
    ("['x' * 2_000_001]", "count_tokens takes texts of at most 2,000,000 characters"),
])
async def test_hostile_count_requests_get_error_replies(scripted, texts, error):
    code = (f"import rlm_runtime\ntry:\n    r = rlm_runtime._request('count_tokens', texts={texts})\n"
            "except RuntimeError as e:\n    r = str(e)")
    server = scripted(repl_value(code, "r"), tokenizer=words)
    assert json.loads((await run_on(server, "data")).answer) == error


# --- the real llama.cpp server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    with LlamaCppServer(n_ctx=1024, startup_timeout=300) as server:
        yield server


async def llama_count(tiny, texts: list[str]) -> list[int]:
    client = rlm.ModelClient(tiny.model_name, base_url=tiny.base_url)
    try:
        counts = await client.tokens.count(texts)
    finally:
        await client.close()
    assert counts is not None
    return counts


async def test_the_byte_bound_never_under_counts_a_real_tokenizer(tiny):
    texts = typical_texts()
    counts = dict(zip(texts, await llama_count(tiny, list(texts.values())), strict=True))
    assert all(most_tokens(text) >= counts[name] for name, text in texts.items())
    # why one token per byte and not the usual 2.5 or 4: SmolLM2 splits digits one by one
    assert counts["csv"] > len(texts["csv"].encode()) / 2.5


async def test_chunk_text_fits_llama_cpps_own_count(tiny, scripted):
    text = document(120)
    server = scripted(repl_value(f"chunks = chunk_text({text!r}, 200)", "chunks"))
    result = await run_on(server, "data", sub_model=tiny.model_name, sub_base_url=tiny.base_url)
    chunks = json.loads(result.answer)
    counts = await llama_count(tiny, chunks)
    assert "".join(chunks) == text and max(counts) <= 200
    assert sum(counts) / len(counts) > 120  # the tokenizer packed them: the byte bound gives about 60


async def test_llama_cpp_overflow_names_its_counts_then_later_prompts_are_not_sent(tiny, scripted):
    long = "the log shows a timeout in the upstream service. " * 300
    code = f"first = llm_batch([{long!r}])\nsecond = llm_batch([{long!r}])"
    server = scripted(repl_value(code, "first + second"))
    result = await run_on(server, "data", sub_model=tiny.model_name, sub_base_url=tiny.base_url)
    first, second = json.loads(result.answer)
    (tokens,) = await llama_count(tiny, [long])
    assert "1,024 tokens" in first and "the server refused it" in first
    assert "1,024 tokens" in second and f"{tokens:,} tokens" in second and "not sent" in second
    assert result.sub_calls[1].usage.calls == 0
