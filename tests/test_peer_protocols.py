"""The peer benchmark's one program, rendered in each library's protocol: what their parsers
expect (checked against the libraries when the benchmark runs), fixed here so a change shows."""

from __future__ import annotations

import pytest

from benchmarks.peers.adapters import ADAPTERS

PROGRAM = "r = {batch}(['a'])\nFINISH(f'{len(r)}')"


@pytest.mark.parametrize(
    ("library", "fence", "code"),
    [
        ("ours", "```python\n", "r = llm_batch(['a'])\nanswer['content'] = str(f'{len(r)}')\nanswer['ready'] = True"),
        ("rlms", "```repl\n", "r = llm_query_batched(['a'])\nanswer['content'] = str(f'{len(r)}')\nanswer['ready'] = True"),
        ("dspy", "[[ ## code ## ]]\n```python\n", "r = llm_query_batched(['a'])\nSUBMIT(answer=str(f'{len(r)}'))"),
    ],
)
def test_program_in_each_protocol(library, fence, code):
    reply = ADAPTERS[library]("any").step(PROGRAM)
    assert fence + code + "\n```" in reply
