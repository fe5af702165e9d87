"""Compaction over a long run: 100 scripted turns, each adding 2,000 characters of REPL output,
without compaction and with it (summarize at 6,000 tokens, keep 2 turns), side by side. The
curve is the root model's prompt tokens per turn: without compaction it grows with every turn,
with it it plateaus; the answer (a count kept in a REPL variable) is right either way.
Run with `python -m benchmarks compaction`."""

from __future__ import annotations

from typing import Any

import rlm
from rlm.testing import ScriptedServer, fenced

GROW = fenced("steps = globals().get('steps', 0) + 1\nprint('x' * 2000)")
TARGETS: dict[str, tuple[str, str]] = {"with compaction": ("last_prompt_tokens", "plateaus (~compact_at)")}


async def _run(turns: int, compaction: dict[str, Any]) -> dict[str, Any]:
    replies = [GROW] * turns + [fenced("answer['content'] = str(steps); answer['ready'] = True")]
    with ScriptedServer(replies, sub=lambda request: "steps counts the turns so far.") as server:
        result = await rlm.arun("Count the turns.", None, model="bench", base_url=server.base_url, max_retries=0,
                                max_turns=turns + 1, sandbox="unsafe-local", **compaction)
    curve = [turn.usage.prompt_tokens for turn in result.turns]
    return {"status": result.status, "answer_right": result.answer == str(turns), "turns": len(result.turns),
            "compactions": len(result.compactions), "first_prompt_tokens": curve[0],
            "peak_prompt_tokens": max(curve), "last_prompt_tokens": curve[-1],
            "root_prompt_tokens_total": sum(curve), "curve": curve}


async def collect(quick: bool) -> dict[str, Any]:
    turns = 40 if quick else 100
    plain = await _run(turns, {})
    compacted = await _run(turns, {"compaction": "summarize", "compact_at": 6000, "keep_turns": 2})
    compacted["prompt_tokens_saved"] = 1 - compacted["root_prompt_tokens_total"] / plain["root_prompt_tokens_total"]
    return {"without compaction": plain, "with compaction": compacted}


def table(report: dict[str, Any]) -> str:
    head = f"{'run':20} {'status':7} {'right':>5} {'comp.':>5} {'first':>7} {'peak':>7} {'last':>7} {'total':>10}"
    lines = [head, "-" * len(head)]
    for name, row in report.items():
        lines.append(f"{name:20} {row['status']:7} {row['answer_right']!s:>5} {row['compactions']:5d} "
                     f"{row['first_prompt_tokens']:7d} {row['peak_prompt_tokens']:7d} {row['last_prompt_tokens']:7d} "
                     f"{row['root_prompt_tokens_total']:10d}")
    saved = report["with compaction"]["prompt_tokens_saved"]
    lines.append(f"root prompt tokens saved by compaction: {saved:.0%}")
    lines.append("root prompt tokens per turn (every 5th turn):")
    for name, row in report.items():
        lines.append(f"  {name:20} " + " ".join(str(t) for t in row["curve"][::5]))
    return "\n".join(lines)
