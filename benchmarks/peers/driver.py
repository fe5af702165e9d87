"""Measure one RLM library at one sandbox kind; runs inside that library's virtual environment.

    python driver.py LIBRARY KIND --server-python PY --repo DIR [--quick] [--isolated-network]

Prints one JSON object: each measure's figures, or the error that stopped it. The scripted
model server is ours (`rlm/testing.py`, started with PY from DIR), the same for every
library, in a process of its own so it shares no interpreter lock with the library measured.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import importlib.util
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from adapters import ADAPTERS, Adapter

SUB_LATENCY = 0.1  # seconds per sub-call at the scripted server
NEEDLES = "\n".join(("needle here" if i % 7 == 0 else f"hay {i}") for i in range(100))
CORRECTNESS = ("n = sum('needle' in line for line in context.splitlines())\n"
               "r = {batch}(['a', 'b', 'c'])\nFINISH(f'{n}/{len(r)}/{r[0]}')")
BATCH = ("import time\nt = time.perf_counter(); {batch}(['one']); one = time.perf_counter() - t\n"
         "t = time.perf_counter(); {batch}([str(i) for i in range(64)]); many = time.perf_counter() - t\n"
         "FINISH(f'{one} {many}')")
DISTRIBUTIONS = {"ours": "rlm-lab", "rlms": "rlms", "dspy": "dspy"}


def loopback_up() -> None:
    """Bring `lo` up in the fresh network namespace `unshare --net` gave us (it starts down)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket() as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, request)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


@functools.cache
def _scripted_server(repo: str) -> Any:
    """Our scripted server's module, loaded by path: it needs only the standard library, and our
    repo stays off `sys.path`, where our `rlm` would shadow rlms'."""
    spec = importlib.util.spec_from_file_location("scripted_server", Path(repo) / "rlm" / "testing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server(args: argparse.Namespace, replies: list[str]) -> Any:
    """Our scripted server, in a process of its own run by our interpreter."""
    return _scripted_server(args.repo).ServerProcess(replies, sub_latency=SUB_LATENCY, root_marker="REPL",
                                                     python=args.server_python)


def run_program(adapter: Adapter, args: argparse.Namespace, steps: list[str], context: str) -> str:
    """The library's answer after a whole run of the scripted `steps`."""
    with server(args, [adapter.step(step) for step in steps]) as model:
        return adapter.run(model.base_url, "Answer the question about the context.", context, turns=len(steps) + 1)


def _tree_rss(root: int, skip: set[int]) -> int:
    """Resident bytes of `root` and its descendants, except the `skip` subtrees."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in skip:
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        stack.extend(children.get(pid, []))
    return total


@contextmanager
def peak_memory(skip: set[int]) -> Iterator[dict[str, float]]:
    """Peak resident memory of this process tree (sampled every 20 ms), the model server excluded."""
    peak = {"bytes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak["bytes"] = max(peak["bytes"], _tree_rss(os.getpid(), skip))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def measure_start(adapter: Adapter, args: argparse.Namespace) -> dict[str, float]:
    times = []
    for _ in range(3 if args.quick else 7):
        started = time.perf_counter()
        repl = adapter.start()
        times.append(time.perf_counter() - started)
        adapter.close(repl)
    return {"p50_s": statistics.median(times), "max_s": max(times)}


def measure_round_trip(adapter: Adapter, args: argparse.Namespace) -> dict[str, float]:
    repl = adapter.start()
    try:
        for _ in range(10):
            adapter.execute(repl, "x = 1")
        times = []
        for _ in range(20 if args.quick else 100):
            started = time.perf_counter()
            adapter.execute(repl, "x = 1")
            times.append(time.perf_counter() - started)
    finally:
        adapter.close(repl)
    return {"p50_ms": statistics.median(times) * 1e3}


def measure_batch(adapter: Adapter, args: argparse.Namespace) -> dict[str, float]:
    answer = run_program(adapter, args, [BATCH], "data")
    one, many = map(float, answer.split())
    return {"one_call_s": one, "batch64_s": many, "ratio": many / one}


def measure_turns(adapter: Adapter, args: argparse.Namespace) -> dict[str, float]:
    """Trivial turns: model request + execution + the library's own work, per turn. The REPL
    stamps each turn's start, so REPL start and teardown stay out of the figure."""
    turns = 10 if args.quick else 30
    steps = (["import time\nticks = [time.perf_counter()]"] + ["ticks.append(time.perf_counter())"] * (turns - 2)
             + ["ticks.append(time.perf_counter())\nFINISH((ticks[-1] - ticks[0]) / (len(ticks) - 1))"])
    answer = run_program(adapter, args, steps, "data")
    return {"per_turn_ms": float(answer) * 1e3, "turns": turns}


def measure_context(adapter: Adapter, args: argparse.Namespace) -> dict[str, float]:
    size = 100 * 2**20
    context = ("hay " * (size // 4 + 1))[:size]
    with server(args, [adapter.step("FINISH(len(context))")]) as model, peak_memory(skip={model.pid}) as peak:
        started = time.perf_counter()
        answer = adapter.run(model.base_url, "How long is the context?", context, turns=2)
        seconds = time.perf_counter() - started
    assert answer == str(size), answer[:200]
    return {"seconds": seconds, "peak_rss_mb": peak["bytes"] / 2**20}


def measure_correctness(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    answer = run_program(adapter, args, ["print(len(context))", CORRECTNESS], NEEDLES)
    return {"answer": answer}


MEASURES: dict[str, Callable[[Adapter, argparse.Namespace], dict[str, Any]]] = {
    "correctness": measure_correctness,
    "start": measure_start,
    "round_trip": measure_round_trip,
    "batch64": measure_batch,
    "turn": measure_turns,
    "context_100mb": measure_context,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library", choices=sorted(ADAPTERS))
    parser.add_argument("kind")
    parser.add_argument("--server-python", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--isolated-network", action="store_true", help="we run under `unshare --net`")
    args = parser.parse_args()
    if args.isolated_network:
        loopback_up()
    adapter = ADAPTERS[args.library](args.kind)
    report: dict[str, Any] = {"library": args.library, "kind": args.kind,
                              "version": metadata.version(DISTRIBUTIONS[args.library]),
                              "settings": adapter.settings, "results": {}}
    for name, measure in MEASURES.items():
        print(f"  {args.library}[{args.kind}] {name}", file=sys.stderr, flush=True)
        try:
            report["results"][name] = measure(adapter, args)
        except Exception as exc:  # a library that cannot do this here: recorded, not fatal
            traceback.print_exc(file=sys.stderr)
            report["results"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
