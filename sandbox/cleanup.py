"""What sandboxes leave on the host, and its removal: private directories named
`rlm-<controller pid>-...` and per-sandbox cgroups, removed without following a link."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("rlm.sandbox")


def controller_gone(name: str) -> bool:
    """Whether `name` ("rlm-<pid>-...", as the backends name what a sandbox leaves on the host)
    belongs to a controller process that no longer runs."""
    pid = name.split("-")[1] if name.count("-") >= 2 else ""
    return pid.isdigit() and process_gone(int(pid))


def process_gone(pid: int) -> bool:
    """Whether no process `pid` runs (this process counts as running)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        pass
    return False


def remove_tree(path: Path) -> None:
    """Remove a directory tree a sandbox may have shaped, never following a link out of it.

    Python's `rmtree` works through directory fds but recurses, so a tree nested thousands deep
    raises RecursionError; `rm` (iterative, no link following either) then finishes the job.
    """
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except (OSError, RecursionError):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if os.path.lexists(path):
        log.warning("could not remove %s", path)


def private_root() -> Path:
    """A new private (0700) host directory for one sandbox, named for this controller."""
    return Path(tempfile.mkdtemp(prefix=f"rlm-{os.getpid()}-"))


def reap_orphans() -> int:
    """Remove what sandboxes of killed controllers left on this host (their kernels died with
    them): private directories and cgroups. Containers: `sandbox.docker.prune`. Returns a count."""
    from .local import Cgroup

    orphans = [path for path in Path(tempfile.gettempdir()).glob("rlm-*-*") if controller_gone(path.name)]
    for path in orphans:
        remove_tree(path)
    return len(orphans) + Cgroup.reap_orphans()


@functools.cache
def reap_orphans_once() -> None:
    """`reap_orphans` the first time a sandbox of this process starts."""
    try:
        reap_orphans()
    except Exception:  # leftovers of others must never stop a new sandbox
        log.exception("reaping orphaned sandbox files failed")
