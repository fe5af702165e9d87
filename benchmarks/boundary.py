"""Before/after across the sandbox boundary: sandbox cold start, `execute` round trip and the 1 GB
context run, for the local and docker backends, of the work tree ("after") against a git ref
("before": $RLM_BENCH_BEFORE_REF, default 83b5c9c). Run with `python -m benchmarks boundary
[--quick]`; `--quick` takes fewer samples and skips the 1 GB runs.

Each side runs in processes of its own whose cwd and PYTHONPATH are its checkout (the before one a
temporary `git worktree`), so each imports its own `rlm` and `sandbox` over the same installed
dependencies. Requests alternate between the sides in ABBA order, so machine noise hits both
alike: read the after/before ratio; absolute times on shared 2-core machines are noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "83b5c9c"
BACKENDS = ("local", "docker")
SIDES = ("before", "after")
CONTEXT_BYTES = 1 << 30
TIMEOUT_S = 600.0  # per worker answer or 1 GB run: a hung side is killed, never waited on forever
LABEL = "rlm.sandbox"  # the docker backend's label on its containers (beside rlm.controller-pid)

#: Head of both worker scripts: stdout carries only our JSON lines (stray prints go to stderr).
_PRELUDE = """\
import asyncio, json, os, sys, time
_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
def send(obj):
    print(json.dumps(obj), file=_out, flush=True)
def describe(exc):
    return f"{type(exc).__name__}: {exc}"[:2000]
"""

#: A long-lived worker: one JSON request per stdin line, one JSON answer per stdout line.
_SANDBOX_WORKER = _PRELUDE + """\
import sandbox
from sandbox import create_sandbox

async def measure(kind, backend, runs, warmups):
    started = time.perf_counter()
    box = create_sandbox(backend)
    try:
        await box.start()
        if kind == "cold_start":
            return [time.perf_counter() - started]
        for _ in range(warmups):
            result = await box.execute("pass")
            if not result.ok:
                raise RuntimeError(f"execute('pass') failed: {result.error}")
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await box.execute("pass")
            times.append(time.perf_counter() - started)
        return times
    finally:
        await box.close()

async def main():
    send({"sandbox": sandbox.__file__})
    while line := await asyncio.to_thread(sys.stdin.readline):
        try:
            send({"samples": await measure(**json.loads(line))})
        except Exception as exc:
            send({"error": describe(exc)})

asyncio.run(main())
"""

#: One 1 GB context run in a fresh process, so its peak RSS is the controller's alone.
_CONTEXT_RUN = _PRELUDE + """\
import resource, rlm, sandbox
backend, base_url, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = "x" * size
out = {"rlm": rlm.__file__, "sandbox": sandbox.__file__}
started = time.perf_counter()
try:
    result = asyncio.run(rlm.arun("q", data, model="bench", base_url=base_url, max_retries=0,
                                  sandbox=backend, sandbox_options={"memory_limit": "6g"}))
    out["run_s"] = time.perf_counter() - started
    out["controller_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if result.answer != str(size):
        out["error"] = f"status {result.status}, answer {result.answer[:100]!r}: {result.error}"[:2000]
except Exception as exc:
    out["error"] = describe(exc)
send(out)
"""

Spawned = list[tuple[str, asyncio.subprocess.Process]]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _tail(log: Path, lines: int = 15) -> str:
    """The end of a side's stderr log, for error texts."""
    try:
        text = log.read_text(errors="replace").strip()
    except OSError:
        return ""
    return "\nstderr: " + "\n".join(text.splitlines()[-lines:]) if text else ""


def _check_imports(hello: dict[str, Any], checkout: Path) -> None:
    """Refuse a worker that imported `rlm` or `sandbox` from anywhere but its own checkout."""
    for package in ("rlm", "sandbox"):
        if package in hello and not Path(hello[package]).resolve().is_relative_to(checkout.resolve()):
            raise RuntimeError(f"{package} was imported from {hello[package]}, not from {checkout}")


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL a still-running worker and its whole session (it was started as a session leader)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def _spawn(side: str, checkout: Path, log: Path, spawned: Spawned, *args: str,
                 stdin: int = subprocess.PIPE) -> asyncio.subprocess.Process:
    with open(log, "ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", *args, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
            stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True,
        )
    spawned.append((side, process))
    return process


class Worker:
    """One side's long-lived sandbox worker, started on first use and again after a failure."""

    def __init__(self, side: str, checkout: Path, logdir: Path, spawned: Spawned) -> None:
        self.side, self.checkout, self.spawned = side, checkout, spawned
        self.log = logdir / f"{side}.log"
        self._process: asyncio.subprocess.Process | None = None

    async def ask(self, **request: Any) -> dict[str, Any]:
        """The worker's answer, or {"error": ...} when it died or hung (it is then killed)."""
        try:
            if self._process is None:
                self._process = await _spawn(self.side, self.checkout, self.log, self.spawned, _SANDBOX_WORKER)
                _check_imports(await self._read(), self.checkout)
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            await self._process.stdin.drain()
            return await self._read()
        except Exception as exc:
            await self.close(kill=True)
            return {"error": _describe(exc) + _tail(self.log)}

    async def _read(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"the {self.side} worker gave no answer within {TIMEOUT_S:g} s") from None
        if not line:
            raise RuntimeError(f"the {self.side} worker exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self, *, kill: bool = False) -> None:
        """End of stdin lets the worker close its sandboxes and exit; a hung one is killed."""
        process, self._process = self._process, None
        if process is None:
            return
        if not kill and process.stdin is not None:
            process.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 60)
        _kill(process)
        await process.wait()


def _abba(round_: int) -> tuple[str, str]:
    """Which side goes first alternates, so neither always runs on a warmer (or busier) machine."""
    return SIDES if round_ % 2 == 0 else SIDES[::-1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _compare(values: dict[str, dict[str, float]], errors: dict[str, str]) -> dict[str, Any]:
    """{metric: {before, after, ratio after/before}}, plus each side's error text if any."""
    metrics = dict.fromkeys(key for side in SIDES for key in values.get(side, {}))
    entry: dict[str, Any] = {}
    for metric in metrics:
        before, after = (values.get(side, {}).get(metric) for side in SIDES)
        ratio = after / before if before and after is not None else None
        entry[metric] = {"before": before, "after": after, "ratio": ratio}
    if errors:
        entry["errors"] = errors
    return entry


async def _sampled(workers: dict[str, Worker], rounds: int, unit: str, scale: float,
                   broken: dict[str, str], **request: Any) -> dict[str, Any]:
    """`rounds` answers per side, sides alternating; p50 and p95 of the pooled samples."""
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    failures: dict[str, list[str]] = {side: [] for side in SIDES}
    for round_ in range(rounds):
        for side in _abba(round_):
            if side in broken:
                continue
            answer = await workers[side].ask(**request)
            if "error" in answer:
                failures[side].append(answer["error"])
            else:
                samples[side].extend(answer["samples"])
    values = {side: {f"p50_{unit}": statistics.median(s) * scale, f"p95_{unit}": _percentile(s, 0.95) * scale}
              for side, s in samples.items() if s}
    errors = {side: broken[side] for side in broken}
    errors |= {side: f"{len(f)} of {rounds} failed; first: {f[0]}" for side, f in failures.items() if f}
    entry = _compare(values, errors)
    entry["samples"] = {side: len(samples[side]) for side in SIDES}
    return entry


async def _sandbox_metrics(checkouts: dict[str, Path], logdir: Path, spawned: Spawned,
                           quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 20
    workers = {side: Worker(side, checkouts[side], logdir, spawned) for side in SIDES}
    report: dict[str, Any] = {}
    try:
        for backend in BACKENDS:
            # One discarded start per side pays the process's one-time costs (imports, the image
            # lookup); a side whose warm-up fails is not asked again for this backend.
            broken: dict[str, str] = {}
            for side in SIDES:
                answer = await workers[side].ask(kind="cold_start", backend=backend, runs=0, warmups=0)
                if "error" in answer:
                    broken[side] = "warm-up failed: " + answer["error"]
            report[f"cold_start[{backend}]"] = await _sampled(
                workers, rounds, "s", 1.0, broken, kind="cold_start", backend=backend, runs=0, warmups=0)
            report[f"round_trip[{backend}]"] = await _sampled(
                workers, rounds // 2, "ms", 1e3, broken, kind="round_trip", backend=backend, runs=20, warmups=10)
    finally:
        await asyncio.gather(*(worker.close() for worker in workers.values()))
    return report


async def _context_run(side: str, checkout: Path, backend: str, base_url: str, logdir: Path,
                       spawned: Spawned) -> tuple[dict[str, float], str | None]:
    """One side's 1 GB run: its figures, and its error text if it failed."""
    log = logdir / f"{side}-context.log"
    process = await _spawn(side, checkout, log, spawned, _CONTEXT_RUN, backend, base_url, str(CONTEXT_BYTES),
                           stdin=subprocess.DEVNULL)
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    except TimeoutError:
        return {}, f"no result within {TIMEOUT_S:g} s" + _tail(log)
    finally:
        _kill(process)
        await process.wait()
    lines = stdout.decode(errors="replace").splitlines()
    if process.returncode or not lines:
        return {}, f"exited with status {process.returncode}" + _tail(log)
    out = json.loads(lines[-1])
    try:
        _check_imports(out, checkout)
    except RuntimeError as exc:
        return {}, str(exc)
    if "error" in out:
        return {}, out["error"]
    return {"run_s": out["run_s"], "controller_peak_mb": out["controller_peak_mb"]}, None


async def _context_metrics(checkouts: dict[str, Path], logdir: Path, spawned: Spawned) -> dict[str, Any]:
    from rlm.testing import ServerProcess, fenced  # stdlib only; one server for both sides

    reply = fenced("answer['content'] = str(len(context)); answer['ready'] = True")
    report: dict[str, Any] = {}
    for round_, backend in enumerate(BACKENDS):
        values: dict[str, dict[str, float]] = {}
        errors: dict[str, str] = {}
        for side in _abba(round_):
            with ServerProcess([reply]) as server:
                figures, error = await _context_run(side, checkouts[side], backend, server.base_url, logdir, spawned)
            values[side] = figures
            if error:
                errors[side] = error
        report[f"context_1gb[{backend}]"] = _compare(values, errors)
    return report


def _remove_containers(spawned: Spawned) -> dict[str, int]:
    """Force-remove the sandbox containers our own processes left (found by their controller-pid
    label: never another user's); returns how many per side."""
    removed = dict.fromkeys(SIDES, 0)
    if shutil.which("docker") is None:
        return removed
    for side, process in spawned:
        with contextlib.suppress(subprocess.SubprocessError, OSError):  # no engine: nothing to remove
            filters = ["--filter", f"label={LABEL}", "--filter", f"label=rlm.controller-pid={process.pid}"]
            found = subprocess.run(["docker", "ps", "-aq", *filters], capture_output=True, text=True,
                                   timeout=60).stdout.split()
            if found:
                subprocess.run(["docker", "rm", "-f", *found], capture_output=True, timeout=120, check=True)
                removed[side] += len(found)
    return removed


def _git(*args: str) -> str:
    done = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def _worktree(commit: str) -> Iterator[Path]:
    """A detached `git worktree` of `commit` in a temporary directory, removed whatever happens."""
    parent = Path(tempfile.mkdtemp(prefix="rlm-bench-before-"))
    path = parent / "checkout"
    try:
        _git("worktree", "add", "--detach", str(path), commit)
        yield path
    finally:
        with contextlib.suppress(RuntimeError):
            _git("worktree", "remove", "--force", str(path))
        with contextlib.suppress(RuntimeError):
            _git("worktree", "prune")
        shutil.rmtree(parent, ignore_errors=True)


async def collect(quick: bool) -> dict[str, Any]:
    ref = os.environ.get("RLM_BENCH_BEFORE_REF", DEFAULT_BEFORE)
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    changed = " + uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    report: dict[str, Any] = {"refs": {"before": f"{ref} ({commit[:12]})",
                                       "after": f"work tree at {_git('rev-parse', '--short=12', 'HEAD')}{changed}"}}
    spawned: Spawned = []
    with _worktree(commit) as before:
        checkouts = {"before": before, "after": ROOT}
        logdir = Path(tempfile.mkdtemp(prefix="rlm-bench-logs-"))
        try:
            report |= await _sandbox_metrics(checkouts, logdir, spawned, quick)
            if not quick:
                report |= await _context_metrics(checkouts, logdir, spawned)
        finally:
            for _, process in spawned:
                _kill(process)
            report["containers_left_and_removed"] = _remove_containers(spawned)
            shutil.rmtree(logdir, ignore_errors=True)
    return report


def _cell(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.4g}{suffix}"


def table(report: dict[str, Any]) -> str:
    """One row per metric (before, after, after/before), then every error, one line each."""
    refs = report["refs"]
    lines = [f"before = {refs['before']}; after = {refs['after']}",
             f"{'benchmark':22} {'measure':20} {'before':>10} {'after':>10} {'after/before':>13}"]
    notes = []
    for name, entry in report.items():
        if "[" not in name:
            continue
        for metric, cell in entry.items():
            if isinstance(cell, dict) and "ratio" in cell:
                lines.append(f"{name:22} {metric:20} {_cell(cell['before']):>10} {_cell(cell['after']):>10} "
                             f"{_cell(cell['ratio'], 'x'):>13}")
        notes += [f"{name} {side}: {error.splitlines()[0][:200]}" for side, error in entry.get("errors", {}).items()]
    left = report.get("containers_left_and_removed", {})
    lines.append("containers left behind (removed): " + ", ".join(f"{side} {n}" for side, n in left.items()))
    return "\n".join(lines + notes)
