"""Math answers graded as the reference math environments grade them: math-verify on the gold
and the response, each wrapped in \\boxed{}, in a worker process whose timeouts can fire.

Reference: PrimeIntellect-ai/verifiers, verifiers/rubrics/math_rubric.py (`verify_response`), and
the RLM math environment in PrimeIntellect-ai/research-environments,
environments/math_env_rlm/math_env_rlm.py: `verify(parse(f"\\boxed{{{answer}}}"),
parse(f"\\boxed{{{response}}}"))`, any failure scoring 0.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
from typing import NamedTuple

#: Longer responses score 0 unparsed, as in the reference rubric (its MAX_VERIFY_CHARS).
MAX_VERIFY_CHARS = 50_000
#: Seconds math-verify may spend on each parse and on the comparison (its own signal timeouts).
VERIFY_TIMEOUT = 5
#: Seconds before a stuck worker (a computation no signal interrupts) is killed and the answer scores 0.
HARD_TIMEOUT = 60.0


class Grade(NamedTuple):
    correct: bool
    parsed: bool  # math-verify read something from the response


def _grade_here(gold: str, response: str) -> Grade:
    # math-verify interrupts slow parses with SIGALRM, which only works in a main thread: the
    # worker's. In the caller's process (often a thread of an event loop) it would fail or hang.
    from math_verify import parse, verify

    try:
        predicted = parse(f"\\boxed{{{response}}}", parsing_timeout=VERIFY_TIMEOUT)
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=VERIFY_TIMEOUT)
        return Grade(bool(verify(gold_parsed, predicted, timeout_seconds=VERIFY_TIMEOUT)), bool(predicted))
    except Exception:
        return Grade(False, False)


class _Worker:
    """A child Python running this file, shared and replaced when a grading outlives HARD_TIMEOUT.
    A plain subprocess, not multiprocessing: spawn would re-run the caller's unguarded __main__.
    One grading at a time: the child serves one anyway, so the timeout measures that grading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        # -P: the script's folder (environments/) must not shadow top-level modules in the child.
        process = subprocess.Popen([sys.executable, "-P", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))})
        atexit.register(process.kill)
        return process

    def _stop(self, process: subprocess.Popen[str]) -> None:
        atexit.unregister(process.kill)
        process.kill()
        process.wait()
        self._process = None

    def grade(self, gold: str, response: str) -> Grade:
        with self._lock:
            process = self._process = self._process or self._start()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(json.dumps([gold, response]) + "\n")
                process.stdin.flush()
            except BrokenPipeError:
                self._stop(process)
                return Grade(False, False)
            ready, _, _ = select.select([process.stdout], [], [], HARD_TIMEOUT)
            reply = process.stdout.readline() if ready else ""
            if not reply:  # stuck past the hard timeout, or dead
                self._stop(process)
                return Grade(False, False)
            return Grade(*json.loads(reply))


_worker = _Worker()


def grade(gold: str, response: str) -> Grade:
    """Whether `response` (already the extracted final answer) equals `gold` for math-verify."""
    if not response.strip() or len(response) > MAX_VERIFY_CHARS:
        return Grade(False, False)
    return _worker.grade(gold, response)


def _serve() -> None:
    """The child's loop: a JSON [gold, response] a line in, a JSON [correct, parsed] a line out."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever else prints goes to stderr, never into the replies
    import math_verify  # noqa: F401 - loaded once, before the first grading's clock starts

    for line in sys.stdin:
        replies.write(json.dumps(_grade_here(*json.loads(line))) + "\n")
        replies.flush()


if __name__ == "__main__":
    _serve()
