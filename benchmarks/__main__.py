"""`python -m benchmarks [core|serving ...] [--quick]`: prints a table per suite and writes JSON
to benchmarks/results/<suite>.json. Ratios are measured side by side in one run; absolute times
on shared 2-core machines are noisy, so read them as orders of magnitude."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

SUITES = ("core", "sandboxes", "load", "serving", "harness", "peers", "boundary", "compaction", "ray_scaling")


def print_table(suite: str, report: dict[str, Any], targets: dict[str, tuple[str, str]]) -> None:
    print(f"\n{suite}\n{'benchmark':32} {'measure':20} {'value':>12}  target")
    for name, values in report.items():
        for key, value in values.items():
            metric, target = targets.get(name, ("", ""))
            shown = f"{value:12.3f}" if isinstance(value, (int, float)) else f"{value!s:>12}"
            print(f"{name:32} {key:20} {shown}  {target if metric == key else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", default=["core"], help="any of: " + ", ".join(SUITES))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, skip the largest cases")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for suite in args.suites:
        if suite not in SUITES:
            parser.error(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
        module = importlib.import_module(f"benchmarks.{suite}")
        report = asyncio.run(module.collect(args.quick))
        if hasattr(module, "table"):
            print(f"\n{suite}\n{module.table(report)}")
        else:
            print_table(suite, report, module.TARGETS)
        machine = {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                   "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path = args.out / f"{suite}.json"
        path.write_text(json.dumps({"machine": machine, "results": report}, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
