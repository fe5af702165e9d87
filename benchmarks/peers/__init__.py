"""Side by side with the peer RLM libraries on the same work: `python -m benchmarks peers`.

Each peer is installed in a virtual environment of its own under `~/.cache/rlm/peers/` (never
into ours; `rlms` also imports as `rlm`). `driver.py` measures one library at one
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
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REPO = HERE.parents[1]
VENVS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlm" / "peers"

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

#: (measure, figure, column heading) for the table and the ratios; lower is better for all.
FIGURES = [
    ("start", "p50_s", "start s"),
    ("round_trip", "p50_ms", "exec ms"),
    ("batch64", "batch64_s", "64 subs s"),
    ("batch64", "ratio", "64/1"),
    ("turn", "per_turn_ms", "turn ms"),
    ("context_100mb", "seconds", "100MB s"),
    ("context_100mb", "peak_rss_mb", "peak MB"),
]
LEGEND = """start: REPL start to first statement run, p50. exec: `x = 1` round trip, p50. 64 subs: 64 batched
sub-calls at 100 ms each, and that over 1 sub-call. turn: one trivial turn (model request +
execution + the library's loop), averaged over a 30-turn run (10 with --quick). 100MB: a run over a
100 MB context, and the peak RSS of the host process tree (ours[docker]'s kernel lives in its
container, outside that tree). (x): over ours[unsafe-local]."""
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
    first = max(len(name) for name in runs) + 2
    lines = [f"{'':{first}}" + "".join(f"{label:>18}" for _, _, label in FIGURES) + "  answer"]
    for name in runs:
        cells = []
        for measure, key, _ in FIGURES:
            value = figure(report[name], measure, key)
            ratio = report["ratios"][name].get(f"{measure}.{key}")
            shown = "failed" if value is None else f"{value:.3g}"
            cells.append(shown + (f" ({ratio:.2g}x)" if value is not None and ratio is not None else ""))
        answer = report[name]["results"].get("correctness", {}).get("answer") or "failed"
        lines.append(f"{name:{first}}" + "".join(f"{cell:>18}" for cell in cells) + f"  {answer}")
    answers = {report[n]["results"].get("correctness", {}).get("answer") for n in runs} - {None}
    lines += [LEGEND, f"The runs that finished gave {'the same answer' if len(answers) == 1 else 'DIFFERENT answers'}."]
    for name, entry in report.items():
        failures = {m: r["error"] for m, r in entry.get("results", {}).items() if "error" in r}
        if "not_run" in entry:
            lines.append(f"{name}: not run: {entry['not_run']}")
        elif "error" in entry:
            lines.append(f"{name}: {entry['error']}")
        elif failures:
            reason = re.sub(r"\x1b\[[0-9;]*m", "", next(iter(failures.values()))).splitlines()[0]
            lines.append(f"{name}: failed {', '.join(failures)}: {reason}")
    return "\n".join(lines)
