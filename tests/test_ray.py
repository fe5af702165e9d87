"""Evaluations and training rollouts on a real Ray cluster on this machine: a head and two more
nodes started with Ray's own multi-node test utility, all on loopback; the scripted server is
the model, which the workers reach over loopback. Each node runs one worker (one CPU each)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import environments
from environments import MathPython, NeedleInAHaystack
from rlm.testing import fenced
from sandbox.cleanup import remove_tree
from tests.conftest import sandbox_dirs, sandbox_processes
from tests.oracles import oracle_code

#: Read by Ray when it is imported. Loopback only: Ray would otherwise rewrite a loopback cluster
#: address to the machine's interface address, which this machine does not route.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
os.environ.update(RAY_ENV)

import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

#: Loopback only, and small: the machine allows no other traffic and has two shared cores.
NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 100 * 2**20}
#: A dead node is noticed within seconds rather than Ray's default half minute.
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Head + two nodes. Every process of the cluster (and so every worker's sandbox) uses a
    private TMPDIR, so the sandbox checks below see this cluster's sandboxes and no one else's."""
    tmp_path_factory.getbasetemp()  # fixed before TMPDIR changes: later tests' tmp_path stays valid
    private = tempfile.mkdtemp(prefix="rayt-", dir="/tmp")
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = private
    tempfile.tempdir = None
    started = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False,
                                                            "_system_config": FAST_FAILURE})
    try:
        for _ in range(2):
            started.add_node(**NODE)
        started.wait_for_nodes()
        yield started
    finally:
        if ray.is_initialized():
            ray.shutdown()
        started.shutdown()
        if saved is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = saved
        tempfile.tempdir = None
        shutil.rmtree(private, ignore_errors=True)


def ours() -> list[int]:
    """Sandbox processes of this module's cluster (their command lines name its TMPDIR), not
    those of other test runs on the machine."""
    marker = f"{os.environ['TMPDIR']}/rlm-".encode()
    return [pid for pid in sandbox_processes(marker) if marker in cmdline(pid)]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:  # it ended meanwhile
        return b""


def kill_node(cluster: Cluster, node: Any) -> None:
    """SIGKILL every process of `node`, as when a machine dies: its workers (the raylet's children),
    then the raylet and Ray's daemons there."""
    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    for process in raylet.children():
        process.kill()
    cluster.remove_node(node, allow_graceful=False)


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def needle_or_nothing(request: dict[str, Any]) -> str:
    """The llm-mode model: finds the needle in the inline haystack, and gives up on odd ones, so
    rewards differ between tasks."""
    value = re.search(r"special magic number for \w+ is (\d+)", request["messages"][-1]["content"]).group(1)
    return value if int(value) % 2 == 0 else "I could not find it."


def comparable(rollout: environments.Rollout) -> dict[str, Any]:
    return rollout.model_dump(exclude={"seconds", "node"})


def lines(out: Path) -> list[environments.Rollout]:
    return [environments.Rollout.model_validate_json(line) for line in (out / "results.jsonl").read_text().splitlines()]


async def test_an_evaluation_spreads_over_the_nodes_and_equals_a_single_process_run(cluster, scripted, tmp_path):
    env = NeedleInAHaystack(length=600)
    first, second = scripted(sub=needle_or_nothing), scripted(sub=needle_or_nothing)
    urls = [first.base_url, second.base_url]
    common = {"model": "m", "modes": ["llm"], "n": 100, "repeats": 2, "progress": False, "max_retries": 0}
    # one server per node: each worker resolves its own
    cluster_run = await environments.evaluate([env], base_url=lambda node: urls[int(node.id, 16) % 2],
                                              ray_address=cluster.address, concurrency=8, out=tmp_path / "ray",
                                              **common)
    single = await environments.evaluate([env], base_url=first.base_url, out=tmp_path / "one", **common)

    spread, alone = lines(tmp_path / "ray"), lines(tmp_path / "one")
    assert len(spread) == 200 and len({r.key for r in spread}) == 200
    per_node = Counter(r.node for r in spread)
    assert len(per_node) == 3 and min(per_node.values()) >= 20, per_node
    assert sorted(map(comparable, spread), key=str) == sorted(map(comparable, alone), key=str)
    assert 0 < cluster_run.rows[0].reward_mean < 1
    assert cluster_run.rows[0].model_dump(exclude={"seconds", "seconds_p50", "seconds_p95"}) == \
        single.rows[0].model_dump(exclude={"seconds", "seconds_p50", "seconds_p95"})
    served = {url: sum(1 for r in spread if urls[int(r.node, 16) % 2] == url) for url in urls}
    assert served[first.base_url] == len(first.requests) - 200  # the single-process run used the first too
    assert served[second.base_url] == len(second.requests)
    for rollout in spread:  # trajectories come back to the driver, which writes them
        assert (tmp_path / "ray" / rollout.trajectory).exists()


async def test_a_node_killed_mid_run_loses_nothing_and_doubles_nothing(cluster, scripted, tmp_path):
    victim = cluster.add_node(**NODE)
    env = NeedleInAHaystack(length=2000)
    tasks = env.generate(24, seed=1)
    by_prompt = {task.prompt: fenced(oracle_code("niah", task)) for task in tasks}
    def oracle(request: dict[str, Any]) -> str:
        return by_prompt[request["messages"][1]["content"]]
    # The victim's worker has a server of its own, slow enough that it dies with rollouts in hand.
    server, victims = scripted(oracle), scripted(oracle, root_latency=2.0)
    urls, doomed = (server.base_url, victims.base_url), victim.node_id
    run = asyncio.create_task(environments.evaluate(
        [env], model="m", base_url=lambda node: urls[node.id == doomed], modes=["rlm"], tasks={env.name: tasks},
        concurrency=3, out=tmp_path, progress=False, sandbox="local", max_retries=0, ray_address=cluster.address))
    results = tmp_path / "results.jsonl"
    while not (results.exists() and doomed in results.read_text()
               and len(victims.root_requests) > results.read_text().count(doomed)):
        assert not run.done(), run
        await asyncio.sleep(0.05)
    await asyncio.to_thread(kill_node, cluster, victim)
    summary = await run

    written = lines(tmp_path)
    assert sorted(r.key for r in written) == sorted((env.name, "rlm", t.id, 0) for t in tasks)  # each once
    assert all(r.reward == 1.0 and r.status == "ready" for r in written)
    assert len({r.node for r in written}) == 4
    finished_there = sum(r.node == doomed for r in written)
    assert len(victims.root_requests) > finished_there  # it died with rollouts in hand, and they were redone
    assert len(server.root_requests) + finished_there == len(tasks)
    assert summary.rows[0].rollouts == len(tasks) and summary.rows[0].reward_mean == 1.0
    assert ours() == []  # the killed worker's sandboxes died with it
    # Its private directories stay behind, as after any killed controller: the only ones left,
    # since the other workers closed theirs. (Its process may linger as a zombie of this one.)
    left = sandbox_dirs()
    assert left and not any(running(int(name.split("-")[1])) for name in left)
    for name in left:
        remove_tree(Path(os.environ["TMPDIR"]) / name)


def test_ctrl_c_at_the_driver_stops_everything_and_leaves_no_sandbox(cluster, scripted, tmp_path):
    """`rlm eval --ray` as the driver, interrupted while every worker runs rollouts in sandboxes."""
    server = scripted([fenced("import time; time.sleep(600)")] * 12)  # every rollout is busy until stopped
    driver = subprocess.Popen(
        [sys.executable, "-m", "rlm.cli", "eval", "niah", "--option", "niah.length=1000", "--model", "m",
         "--base-url", server.base_url, "--mode", "rlm", "-n", "12", "--concurrency", "2", "--sandbox", "local",
         "--out", str(tmp_path / "out"), "--ray", cluster.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while len(server.root_requests) < 6:  # every worker has rollouts running in sandboxes
            assert driver.poll() is None, driver.communicate()
            time.sleep(0.1)
        assert len(ours()) >= 3
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=90)
    finally:
        driver.kill()
    assert driver.returncode == 130 and "interrupted" in stderr.splitlines(), stderr[-2000:]
    assert ours() == [] and sandbox_dirs() == []
    assert not (tmp_path / "out" / "results.jsonl").exists() or lines(tmp_path / "out") == []


def test_readme_cluster_training_example_runs(cluster, scripted, tmp_path):
    """The README's trainer loop on the cluster, run as written: every rollout's row comes back,
    from more than one node, with GRPO advantages within each group."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"<!-- ray-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    tasks = [task for step in range(2) for task in MathPython().generate(2, seed=step)]
    right = {task.prompt: fenced(oracle_code("math_python", task)) for task in tasks}
    wrong = fenced("answer['content'] = 'no idea'\nanswer['ready'] = True")
    # seeds 0 and 2 of each group solve the task, 1 and 3 do not: two +1 and two -1 advantages
    server = scripted(lambda request: right[request["messages"][1]["content"]] if request["seed"] % 2 == 0 else wrong)
    script = tmp_path / "train.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "RLM_MODEL": "policy", "RLM_BASE_URL": server.base_url,
                               "RAY_ADDRESS": cluster.address})
    assert done.returncode == 0, done.stderr[-3000:]
    steps = re.findall(r"step (\d): (\d+) rows, rewards ([\d.]+), advantages ([-\d.]+) to ([-\d.]+), on (\d) nodes",
                       done.stdout)
    assert [step for step, *_ in steps] == ["0", "1"], done.stdout
    for _, rows, reward, low, high, nodes in steps:
        assert int(rows) == 8 and float(reward) == 0.5 and int(nodes) >= 2
        assert float(low) == pytest.approx(-1, abs=1e-3) and float(high) == pytest.approx(1, abs=1e-3)
    assert len(server.root_requests) == 16 and json.dumps(server.root_requests[0]).count("return_token_ids") == 1
