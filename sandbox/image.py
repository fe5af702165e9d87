"""The Docker sandbox image: built from a recipe and tagged by the recipe's hash, so a rebuild
happens only when the recipe changes.

Two ways to build, one recipe: with a registry (a normal machine), a Dockerfile on a slim Python
base; without one (an air-gapped engine that starts empty), a Debian root filesystem made with
debootstrap from the host's configured Debian mirror, imported with `docker import`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .base import SandboxUnavailable

log = logging.getLogger("rlm.sandbox")

REPOSITORY = "rlm-sandbox"
SUITE = "bookworm"
#: Debian packages of the offline image: the kernel and the scientific stack the prompt promises.
DEBIAN_PACKAGES = ["python3-ipykernel", "python3-numpy", "python3-pandas", "python3-scipy", "python3-sympy"]
DOCKERFILE = """\
FROM python:3.11-slim
RUN pip install --no-cache-dir ipykernel numpy pandas scipy sympy
USER 65534:65534
"""


def recipe_tag(method: str) -> str:
    """`rlm-sandbox:<method>-<hash of the recipe>`."""
    recipe = DOCKERFILE if method == "dockerfile" else f"{SUITE} minbase python3 {' '.join(DEBIAN_PACKAGES)}"
    return f"{REPOSITORY}:{method}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def _debian_mirror() -> str | None:
    """The Debian mirror apt on this host already uses (we name none ourselves)."""
    sources = sorted(p for p in Path("/etc/apt/sources.list.d").glob("*") if p.suffix in (".list", ".sources"))
    for path in [Path("/etc/apt/sources.list"), *sources]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+main", text, re.M):
            if "security" not in match.group(1):
                return match.group(1)
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.M):  # deb822 .sources files
            if "security" not in match.group(1):
                return match.group(1)
    return None


def _build_rootfs(rootfs: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailable("debootstrap is not installed: apt-get install debootstrap")
    mirror = _debian_mirror()
    command = ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(rootfs)]
    subprocess.run(command + ([mirror] if mirror else []), check=True, capture_output=True)
    # ipykernel in debootstrap's own --include fails to configure python3-zmq: install it after.
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["chroot", str(rootfs), "apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
                   check=True, capture_output=True, env=env)
    subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=True, env=env)


def build_image(client: object, method: str = "auto", *, force: bool = False) -> str:
    """Build (or find) the sandbox image and return its tag.

    `method`: "debootstrap" (no registry needed), "dockerfile" (needs its base image pullable or
    present), or "auto": the Dockerfile when its base image is already present, else debootstrap.
    Nothing is ever pulled unless "dockerfile" is asked for.
    """
    import docker

    assert isinstance(client, docker.DockerClient)
    if method == "auto":
        method = "dockerfile" if client.images.list(name="python:3.11-slim") else "debootstrap"
    tag = recipe_tag(method)
    if not force and client.images.list(name=tag):
        return tag
    log.info("building %s (%s)", tag, method)
    if method == "dockerfile":
        with tempfile.TemporaryDirectory() as context:
            (Path(context) / "Dockerfile").write_text(DOCKERFILE)
            client.images.build(path=context, tag=tag, rm=True)
        return tag
    with tempfile.TemporaryDirectory(prefix="rlm-rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        _build_rootfs(rootfs)
        archive = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        repository, version = tag.split(":")
        client.api.import_image(src=str(archive), repository=repository, tag=version,
                                changes=["USER 65534:65534", "ENV LANG=C.UTF-8"])
    return tag
