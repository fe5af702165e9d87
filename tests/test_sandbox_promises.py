"""The README's promises about the sandboxes, held from outside: the kernel's uid, capabilities
and no-new-privileges as the kernel itself reads them, the package list the prompt shows, and
`rlm sandbox build` / `rlm sandbox prune` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from importlib import metadata

import pytest

from rlm.testing import fenced
from tests.conftest import ISOLATING, run_on
from tests.docker_view import LabelledEngineView

#: The label every rlm container carries (README, "Sandboxes": "labelled `rlm.sandbox`").
RLM_LABEL = "rlm.sandbox"
#: Capability numbers (linux/capability.h) the docker backend's root watchdog keeps (README,
#: "Sandboxes"); the kernel under it has none effective, none permitted.
CAP_KILL, CAP_SETGID, CAP_SETUID = 5, 6, 7
NOBODY = 65534

READ_STATUS = """
import json
fields = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
print(json.dumps({key: fields[key].split() for key in
                  ('Uid', 'Gid', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs')}))
answer['ready'] = True
"""

READ_PACKAGES = """
import json, re
from importlib import metadata
found = {}
for d in metadata.distributions():  # in sys.path order: the first of a name is the one imported
    found.setdefault(re.sub(r'[-_.]+', '-', d.metadata['Name'] or '').lower(), d.version)
print(json.dumps(sorted(f'{name}=={version}' for name, version in found.items() if name)))
answer['ready'] = True
"""


def rlm_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlm.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env, check=False)


def capabilities(mask_hex: str) -> set[int]:
    mask = int(mask_hex, 16)
    return {bit for bit in range(64) if mask >> bit & 1}


@pytest.mark.parametrize("backend", ISOLATING)
async def test_the_kernel_runs_as_nobody_without_capabilities_or_new_privileges(scripted, backend):
    server = scripted([fenced(READ_STATUS)])
    result = await run_on(server, "data", sandbox=backend)
    status = json.loads(result.turns[0].output)
    assert status["Uid"] == [str(NOBODY)] * 4 and status["Gid"] == [str(NOBODY)] * 4  # real, effective, saved, fs
    assert {key: capabilities(status[key][0]) for key in ("CapInh", "CapPrm", "CapEff", "CapAmb")} == {
        "CapInh": set(), "CapPrm": set(), "CapEff": set(), "CapAmb": set()}
    allowed = {CAP_KILL, CAP_SETGID, CAP_SETUID} if backend == "docker" else set()
    assert capabilities(status["CapBnd"][0]) <= allowed
    assert status["NoNewPrivs"] == ["1"]


@pytest.mark.parametrize("backend", ISOLATING)
async def test_the_prompt_lists_the_packages_installed_in_the_sandbox(scripted, backend):
    server = scripted([fenced(READ_PACKAGES)])
    # the whole list, however many packages this environment has (CI's holds ray and verifiers too)
    result = await run_on(server, "data", sandbox=backend, max_output_chars=100_000)
    inside = json.loads(result.turns[0].output)
    prompt = server.root_requests[0]["messages"][0]["content"]
    missing = [package for package in inside if package not in prompt]
    assert inside and missing == []
    names = {package.split("==")[0] for package in inside}
    assert "ipykernel" in names
    if backend == "docker":  # read in the container: the image's stack, not the host's packages
        assert {"numpy", "pandas", "scipy", "sympy"} <= names
        host_openai = f"openai=={metadata.version('openai')}"
        assert "openai" not in names and host_openai not in prompt


def test_sandbox_build_is_a_no_op_when_the_recipes_image_exists():
    import docker

    client = docker.from_env()
    images_before = {image.id for image in client.images.list(name="rlm-sandbox")}
    first, second = rlm_cli("sandbox", "build"), rlm_cli("sandbox", "build")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    tags = [re.fullmatch(r"(\S+) ready \(\d+s\)\n", run.stdout) for run in (first, second)]
    assert all(tags), (first.stdout, second.stdout)
    tag = tags[0].group(1)
    assert tags[1].group(1) == tag and re.fullmatch(r"rlm-sandbox:[a-z]+-[0-9a-f]{12}", tag)
    assert "building" not in first.stderr + second.stderr
    assert client.images.get(tag).id in images_before  # the image that was there: nothing rebuilt
    assert {image.id for image in client.images.list(name="rlm-sandbox")} == images_before


def test_sandbox_prune_removes_leftovers_and_keeps_live_controllers_sandboxes():
    """A container whose controller died (or that names none) is a leftover; one of a controller
    still running is its live sandbox, removed only by `prune --all`."""
    import docker

    client = docker.from_env()
    image = client.images.list(name="rlm-sandbox")[0]
    view_label = f"rlm.test-prune={uuid.uuid4().hex}"
    key, value = view_label.split("=")
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()

    def container(**labels: str):
        return client.containers.run(image.id, ["sleep", "600"], detach=True, network_mode="none",
                                     labels={RLM_LABEL: "1", key: value, **labels})

    unnamed, orphan = container(), container(**{"rlm.controller-pid": str(dead_pid.pid)})
    live = container(**{"rlm.controller-pid": str(os.getpid())})  # this test process: alive
    try:
        with LabelledEngineView(view_label) as view:
            through_view = docker.DockerClient(base_url=view.docker_host)
            seen = through_view.containers.list(all=True, filters={"label": RLM_LABEL})
            assert len(seen) == 3  # prune will see ours only, no other run's
            env = {**os.environ, "DOCKER_HOST": view.docker_host}
            pruned = rlm_cli("sandbox", "prune", env=env)
            assert pruned.returncode == 0, pruned.stderr
            assert pruned.stdout.startswith("removed 2 container(s)")
            left = client.containers.list(all=True, filters={"label": view_label})
            assert [c.id for c in left] == [live.id] and {unnamed.id, orphan.id}.isdisjoint(c.id for c in left)
            everything = rlm_cli("sandbox", "prune", "--all", env=env)
        assert everything.returncode == 0 and everything.stdout.startswith("removed 1 container(s)")
        assert client.containers.list(all=True, filters={"label": view_label}) == []
    finally:
        for leftover in client.containers.list(all=True, filters={"label": view_label}):
            leftover.remove(force=True)
