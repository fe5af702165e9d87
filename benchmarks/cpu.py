"""CPU used by this process's descendants (bubblewrap, kernels), sampled from /proc: killed
kernels are never waited for by us, so `RUSAGE_CHILDREN` misses them."""

from __future__ import annotations

import os
import threading


class DescendantCPU:
    """CPU seconds of this process's descendants (and of itself with `include_self`) while in
    `with`, sampled every `interval` (and on `sample()`). A process's last sample before it dies
    counts: call `sample()` before killing what you measure; kernels are idle when killed, so what
    a sampler misses is small."""

    def __init__(self, interval: float = 0.2, *, include_self: bool = False) -> None:
        self.interval = interval
        self.include_self = include_self
        self._seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> cpu seconds
        self._start: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="descendant-cpu")
        self._ticks = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        parents: dict[int, tuple[int, int, float]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # after the command: state ppid ... utime(12) stime(13) ... starttime(20)
            parents[int(name)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / self._ticks)
        mine = {os.getpid()}
        changed = True
        while changed:  # descendants, whatever order /proc lists them in
            changed = False
            for pid, (ppid, _, _) in parents.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        for pid in mine if self.include_self else mine - {os.getpid()}:
            _, start, cpu = parents[pid]
            self._seen[(pid, start)] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> DescendantCPU:
        self.sample()
        self._start = dict(self._seen)  # what ran before the `with` is not counted
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def seconds(self) -> float:
        return sum(used - self._start.get(key, 0.0) for key, used in self._seen.items())
