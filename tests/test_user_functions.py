"""What the user brings: host functions the REPL calls through the broker, pure helpers defined
in the kernel, package notes and prompt sections, and a whole system prompt of their own."""

from __future__ import annotations

import asyncio
import os

import pytest

import rlm
from rlm.testing import fenced
from tests.conftest import run_on

SECRET = "host-only-token"


def lookup(city: str, year: int = 2024) -> dict[str, int | str]:
    """Population of `city` in `year`, from a service the sandbox cannot reach."""
    if city == "Atlantis":
        raise KeyError("no such city")
    return {"city": city, "year": year, "population": len(city) * 1000, "token_seen": SECRET in os.environ.get("T", "")}


async def slow_add(a: int, b: int) -> int:
    """Adds slowly, on the host."""
    await asyncio.sleep(5)
    return a + b


def word_count(text):
    """Words in `text` (runs in the kernel)."""
    return len(text.split())


async def test_repl_functions_run_on_the_host_with_validated_json(scripted, monkeypatch):
    monkeypatch.setenv("T", SECRET)  # the host's environment: the kernel's is built from nothing
    code = ("import os\nprint(lookup('Paris'))\nprint(lookup('Oslo', year='1999'))\n"
            "for bad in (lambda: lookup('Atlantis'), lambda: lookup(city=3.5), lambda: lookup()):\n"
            "    try:\n        bad()\n    except RuntimeError as e:\n        print('refused:', str(e)[:60].replace(chr(10), ' '))\n"
            "print('T' in os.environ, word_count('a b c'))")
    server = scripted([fenced(code), fenced("answer['ready'] = True")])
    result = await run_on(server, None, repl_functions=[lookup], sandbox_functions=[word_count])
    lines = result.turns[0].output.splitlines()
    assert lines[0] == "{'city': 'Paris', 'year': 2024, 'population': 5000, 'token_seen': True}"
    assert lines[1].startswith("{'city': 'Oslo', 'year': 1999")  # '1999' validated into an int
    assert lines[2].startswith("refused: lookup raised KeyError")
    assert lines[3].startswith("refused: lookup: invalid arguments") and lines[4].startswith("refused: lookup: invalid")
    assert lines[5] == "False 3"  # no host secret in the sandbox; the helper ran in the kernel
    calls = result.function_calls
    assert [c.function for c in calls] == ["lookup"] * 5 and [c.error is None for c in calls] == [
        True, True, False, False, False]
    system = server.root_requests[0]["messages"][0]["content"]
    assert "`lookup(city: str, year: int = 2024)" in system and "from a service the sandbox cannot reach" in system
    assert "`word_count(text)` (defined in the REPL): Words in `text`" in system


async def test_a_slow_repl_function_times_out_and_calls_count_against_the_budget(scripted):
    code = ("for _ in range(3):\n    try:\n        print(slow_add(1, 2))\n    except RuntimeError as e:\n"
            "        print('error:', e)")
    server = scripted([fenced(code), fenced("answer['ready'] = True")])
    result = await run_on(server, None, repl_functions=[slow_add], repl_function_timeout=0.5, max_sub_calls=2)
    lines = result.turns[0].output.splitlines()
    assert lines[:2] == ["error: slow_add did not return within 0.5s"] * 2
    assert "sub-call budget exhausted" in lines[2]


async def test_package_notes_and_prompt_sections_join_the_prompt(scripted):
    server = scripted([fenced("answer['ready'] = True")])
    await run_on(server, None, package_notes={"numpy": "use it for the matrix part"},
                 prompt_sections={"Scoring": "Answers are graded by exact match."})
    system = server.root_requests[0]["messages"][0]["content"]
    assert "- `numpy`: use it for the matrix part" in system
    assert "## Scoring\nAnswers are graded by exact match." in system
    assert system.index("## Scoring") < system.index("## Sub-LLMs")  # with the task, before the tools


async def test_a_whole_system_prompt_is_validated_and_filled(scripted):
    with pytest.raises(rlm.ConfigError, match="unknown fields"):
        rlm.RLMConfig(model="m", system_prompt="Data: {context_description} {nonsense}")
    with pytest.raises(rlm.ConfigError, match="context_description"):
        rlm.RLMConfig(model="m", system_prompt="No data described.")
    with pytest.raises(rlm.ConfigError, match="literal braces"):
        rlm.RLMConfig(model="m", system_prompt="{context_description} {")
    server = scripted([fenced("answer['ready'] = True")], root_marker="Mine.")
    result = await run_on(server, "abc", system_prompt="Mine. {context_description} Limits:\n{limits}")
    assert result.status == "ready"
    system = server.root_requests[0]["messages"][0]["content"]
    assert system.startswith("Mine. `context` is a `str` of 3 characters") and "turns in all" in system


def test_function_names_the_repl_owns_are_refused():
    def answer() -> None:
        """Clashes with `answer`."""

    with pytest.raises(rlm.ConfigError, match="unique public identifiers"):
        rlm.RLMConfig(model="m", repl_functions=[answer])
    with pytest.raises(rlm.ConfigError, match="source is not available"):
        rlm.RLMConfig(model="m", sandbox_functions=[len])


def png(color: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), color).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_prompts_with_images_reach_a_vision_sub_model_as_image_parts(scripted):
    def describe(request):
        content = request["messages"][-1]["content"]
        if isinstance(content, str):
            return "text only"
        kinds = [part["type"] for part in content]
        return f"{kinds} {content[1]['image_url']['url'][:22]}"

    code = ("from PIL import Image\n"
            "r = llm_batch([{'text': 'What colour?', 'images': [Image.new('RGB', (3, 3), (9, 9, 9)), RED]}, "
            "'plain'])\nprint(r)")
    server = scripted([fenced(f"RED = {png((255, 0, 0))!r}\n" + code), fenced("answer['ready'] = True")],
                      sub=describe)
    result = await run_on(server, None, sub_vision=True)
    assert result.turns[0].output.strip() == (
        "[\"['text', 'image_url', 'image_url'] data:image/png;base64,\", 'text only']")
    # the two prompts are sent concurrently: find the one with images, whatever order they arrived in
    with_images = [r["messages"][-1]["content"] for r in server.sub_requests
                   if not isinstance(r["messages"][-1]["content"], str)]
    assert len(with_images) == 1 and len(server.sub_requests) == 2
    parts = with_images[0]
    assert parts[0] == {"type": "text", "text": "What colour?"} and len(parts) == 3
    assert result.sub_calls[0].prompt == "What colour?\n[2 image(s)]"  # no image bytes in the trajectory


async def test_images_for_a_text_only_sub_model_or_over_the_limit_are_clear_errors(scripted):
    code = ("for p in ([{'text': 'x', 'images': [IMG]}], [{'text': 'x', 'images': [b'not an image']}]):\n"
            "    try:\n        llm_batch(p)\n    except RuntimeError as e:\n        print(str(e)[:70])")
    server = scripted([fenced(f"IMG = {png((0, 0, 0))!r}\n" + code), fenced("answer['ready'] = True")])
    text_only = await run_on(server, None)
    assert "sub-model scripted-root is text-only here" in text_only.turns[0].output
    server = scripted([fenced(f"IMG = {png((0, 0, 0))!r}\n" + code), fenced("answer['ready'] = True")])
    small = await run_on(server, None, sub_vision=True, max_image_bytes=10)
    lines = small.turns[0].output.splitlines()
    assert "image 0: over 10 bytes" in lines[0] and "not a PNG, JPEG or GIF" in lines[1]
    assert server.sub_requests == []
