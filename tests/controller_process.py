"""An RLM run in a process of its own, reporting that process's peak memory: a controller's
memory measured apart from pytest and from whatever ran before it.

`python -m tests.controller_process BASE_URL SETTINGS_JSON` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_controller(base_url: str, timeout: float = 600, **settings: Any) -> dict[str, Any]:
    """Run `rlm.arun` with `settings` against `base_url` in a fresh interpreter; returns its report:
    status, error, answer length, event kinds per turn, and `peak_rss_mb`."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.controller_process", base_url, json.dumps(settings)],
        cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=timeout, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"controller process failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import rlm

    base_url, settings = sys.argv[1], json.loads(sys.argv[2])
    prompt, data = settings.pop("prompt", "Answer the question."), settings.pop("data", "data")
    settings.setdefault("model", "scripted-root")
    settings.setdefault("max_retries", 0)
    result = asyncio.run(rlm.arun(prompt, data, base_url=base_url, **settings))
    print(json.dumps({
        "status": result.status,
        "error": result.error,
        "answer_chars": len(result.answer),
        "turn_answers": [None if t.answer is None else len(t.answer) for t in result.turns],
        "events": [[event.kind for event in turn.events] for turn in result.turns],
        "outputs": [turn.output[:300] for turn in result.turns],
        "chars_cut": [turn.chars_cut for turn in result.turns],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
