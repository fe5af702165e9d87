"""Side by side with the peer RLM libraries on the same work: `python -m benchmarks peers`.

Each peer is installed in a virtual environment of its own under `benchmarks/peers/.venvs/`
(never into ours; `rlms` also imports as `rlm`). `driver.py` measures one library at one
sandbox kind inside that environment, in a network namespace of its own that has only loopback,
against the same scripted model server, each library fed its own protocol: our answer dict and
```python fences, rlms' ```repl fences and answer dict, dspy.RLM's chat-adapter fields and SUBMIT.

Ratios are to ours at the same isolation: the peers' kinds that run here isolate nothing (the
model's code runs as the host user, or in the host process itself), so they are set against our
`unsafe-local`; our `local` (bubblewrap) and `docker` columns show what isolation costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REPO = HERE.parents[1]
VENVS = HERE / ".venvs"

#: Each peer's pinned distribution (one resolver run each, in its own environment).
PEERS = {"rlms": "rlms[ipython]==0.1.3", "dspy": "dspy[deno]==3.4.1"}

#: (library, kind, isolation), in table order.
CONFIGURATIONS = [
    ("ours", "local", "process sandbox (bubblewrap)"),
    ("ours", "docker", "container"),
    ("ours", "unsafe-local", "none (kernel subprocess)"),
    ("rlms", "local", "none (exec in the host process)"),
    ("rlms", "ipython-subprocess", "none (kernel subprocess)"),
    ("dspy", "local-interpreter", "none (subprocess)"),
    ("dspy", "deno-pyodide", "WASM sandbox"),
]
#: Peer kinds we do not start, and why (their code would break this project's network rules).
NOT_RUN = {
    ("rlms", "docker"): "runs `python:3.11-slim` on Docker's bridge network and pip-installs dill and requests "
                        "inside the container at start; our rule is containers with no network at all",
}
REFERENCE = ("ours", "unsafe-local")

#: (measure, figure, lower is better) for the table and the ratios.
FIGURES = [
    ("start", "p50_s", "REPL start, p50 s"),
    ("round_trip", "p50_ms", "execute round trip, p50 ms"),
    ("batch64", "batch64_s", "64 batched sub-calls at 100 ms, s"),
    ("batch64", "ratio", "  ... over 1 sub-call"),
    ("turn", "per_turn_ms", "per turn (model + execute + loop), ms"),
    ("context_100mb", "seconds", "100 MB context run, s"),
    ("context_100mb", "peak_rss_mb", "  ... peak RSS, MB"),
]
TARGETS: dict[str, tuple[str, str]] = {}


def python_of(library: str) -> Path:
    return Path(sys.executable) if library == "ours" else VENVS / library / "bin" / "python"


def install(library: str) -> None:
    """The peer's own virtual environment, created once."""
    python = python_of(library)
    if python.exists() and subprocess.run([python, "-c", f"import {'rlm' if library == 'rlms' else library}"],
                                          capture_output=True).returncode == 0:
        return
    print(f"installing {PEERS[library]} into {python.parents[1]}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", python.parents[1]], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", PEERS[library]], check=True)


def drive(library: str, kind: str, quick: bool) -> dict[str, Any]:
    """One driver run in a fresh network namespace holding only loopback."""
    isolate = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    command = [*isolate, str(python_of(library)), str(HERE / "driver.py"), library, kind, "--server-python",
               sys.executable, "--repo", str(REPO), "--isolated-network", *(["--quick"] if quick else [])]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=3600)
    if done.returncode != 0:
        return {"library": library, "kind": kind, "error": f"driver exited {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


async def collect(quick: bool) -> dict[str, Any]:
    for library in PEERS:
        install(library)
    report: dict[str, Any] = {}
    for library, kind, isolation in CONFIGURATIONS:
        started = time.monotonic()
        print(f"{library}[{kind}]", file=sys.stderr, flush=True)
        report[f"{library}[{kind}]"] = {**drive(library, kind, quick), "isolation": isolation}
        print(f"{library}[{kind}] done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    for (library, kind), reason in NOT_RUN.items():
        report[f"{library}[{kind}]"] = {"library": library, "kind": kind, "not_run": reason}
    report["ratios"] = ratios(report)
    return report


def figure(entry: dict[str, Any], measure: str, key: str) -> float | None:
    value = entry.get("results", {}).get(measure, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def ratios(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each configuration's figures over ours at the reference kind (>1: slower or larger than ours)."""
    reference = report[f"{REFERENCE[0]}[{REFERENCE[1]}]"]
    out: dict[str, dict[str, float]] = {}
    for name, entry in report.items():
        if "results" not in entry:
            continue
        out[name] = {}
        for measure, key, _ in FIGURES:
            value, base = figure(entry, measure, key), figure(reference, measure, key)
            if value is not None and base:
                out[name][f"{measure}.{key}"] = value / base
    return out


def table(report: dict[str, Any]) -> str:
    runs = [name for name, entry in report.items() if "results" in entry]
    width = 16
    lines = [f"{'':40}" + "".join(f"{name:>{width}}" for name in runs)]
    for measure, key, label in FIGURES:
        cells = []
        for name in runs:
            value = figure(report[name], measure, key)
            ratio = report["ratios"][name].get(f"{measure}.{key}")
            cells.append(f"{'failed' if value is None else f'{value:.3g}':>{width - 8}}"
                         + (f" ({ratio:.2g}x)" if ratio is not None else "").rjust(8))
        lines.append(f"{label:40}" + "".join(cells))
    answers = {name: report[name]["results"].get("correctness", {}).get("answer") for name in runs}
    agreed = len({a for a in answers.values() if a is not None}) == 1
    lines.append(f"{'same answer to the scripted program':40}"
                 + "".join(f"{(a if a is not None else 'failed'):>{width}}" for a in answers.values()))
    lines.append(f"(x): over ours[{REFERENCE[1]}]; answers {'agree' if agreed else 'DIFFER'}")
    for name, entry in report.items():
        if name == "ratios":
            continue
        failures = {m: r["error"] for m, r in entry.get("results", {}).items() if "error" in r}
        if "not_run" in entry:
            lines.append(f"{name}: not run: {entry['not_run']}")
        elif "error" in entry:
            lines.append(f"{name}: {entry['error']}")
        elif failures:
            first = next(iter(failures.values()))
            lines.append(f"{name}: failed {', '.join(failures)}: {first}")
    return "\n".join(lines)
