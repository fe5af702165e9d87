"""Math answers graded as the reference math environments grade them: math-verify on the gold
and the response, each wrapped in \\boxed{}, in a worker process whose timeouts can fire.

Reference: PrimeIntellect-ai/verifiers, verifiers/rubrics/math_rubric.py (`verify_response`), and
the RLM math environment in PrimeIntellect-ai/research-environments,
environments/math_env_rlm/math_env_rlm.py: `verify(parse(f"\\boxed{{{answer}}}"),
parse(f"\\boxed{{{response}}}"))`, any failure scoring 0.
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
from multiprocessing.pool import Pool
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


def _grade_in_worker(gold: str, response: str) -> Grade:
    # math-verify interrupts slow parses with SIGALRM, which only works in a main thread: the
    # worker's. In the caller's process (often a thread of an event loop) it would fail or hang.
    from math_verify import parse, verify

    try:
        predicted = parse(f"\\boxed{{{response}}}", parsing_timeout=VERIFY_TIMEOUT)
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=VERIFY_TIMEOUT)
        return Grade(bool(verify(gold_parsed, predicted, timeout_seconds=VERIFY_TIMEOUT)), bool(predicted))
    except Exception:  # noqa: BLE001 - the reference scores any grader failure as wrong
        return Grade(False, False)


class _Worker:
    """One spawned process, shared, replaced when a grading outlives HARD_TIMEOUT."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: Pool | None = None

    def grade(self, gold: str, response: str) -> Grade:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: forking a process that runs threads (event loop, ZMQ) can deadlock.
                self._pool = multiprocessing.get_context("spawn").Pool(processes=1)
                atexit.register(self._pool.terminate)  # a pool left to __del__ at exit logs an error
            pool = self._pool
        pending = pool.apply_async(_grade_in_worker, (gold, response))
        try:
            return pending.get(timeout=HARD_TIMEOUT)
        except multiprocessing.TimeoutError:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.terminate()
            atexit.unregister(pool.terminate)
            return Grade(False, False)


_worker = _Worker()


def grade(gold: str, response: str) -> Grade:
    """Whether `response` (already the extracted final answer) equals `gold` for math-verify."""
    if not response.strip() or len(response) > MAX_VERIFY_CHARS:
        return Grade(False, False)
    return _worker.grade(gold, response)

