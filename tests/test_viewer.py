"""`rlm view`: self-contained HTML, checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import environments
from environments import NeedleInAHaystack
from rlm import Result
from rlm.testing import fenced
from tests.conftest import run_on

HOSTILE = "<script>document.title='pwned'</script>"


def chromium(url: str, tmp_path: Path, *extra: str) -> str:
    """Load a page in headless Chromium (no network: every background fetch is off) and return
    the DOM after its scripts ran."""
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, url],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


async def test_result_page_renders_turns_sub_calls_and_answer(scripted, tmp_path):
    server = scripted([
        fenced("r = llm_batch(['alpha', 'beta'])\nanswer['content'] = 'draft'\nprint('x' * 5000)"),
        fenced(f"print({HOSTILE!r})\nanswer['content'] = 'final: ' + ', '.join(r)\nanswer['ready'] = True"),
    ])
    result = await run_on(server, "data", max_output_chars=1000)
    source = tmp_path / "result.json"
    source.write_text(result.model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "rlm.cli", "view", str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = Path(proc.stdout.strip())
    assert page == tmp_path / "result.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no network assets

    dom = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert dom.count("class=\"turn\"") == 2
    assert dom.count("class=\"subcall\"") == 2 and "echo: alpha" in dom
    assert "final: echo: alpha, echo: beta" in dom and "draft" in dom
    assert "characters cut" in dom
    assert "<title>pwned</title>" not in dom and "&lt;script&gt;" in dom  # model output stays text

    shot = tmp_path / "result.png"
    chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert shot.stat().st_size > 10_000


async def test_results_index_is_sortable(scripted, tmp_path):
    env = NeedleInAHaystack(length=1000)
    tasks = env.generate(3, seed=0)
    answers = {t.data: (t.expected[0] if i != 1 else "wrong") for i, t in enumerate(tasks)}
    server = scripted([], sub=lambda r: next(v for d, v in answers.items() if d in r["messages"][-1]["content"]))
    out = tmp_path / "results"
    await environments.evaluate([env], model="m", base_url=server.base_url, modes=["llm"], tasks={"niah": tasks},
                                out=out, progress=False, max_retries=0)
    proc = subprocess.run([sys.executable, "-m", "rlm.cli", "view", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    index = Path(proc.stdout.strip())
    assert index == out / "view" / "index.html" and len(list(index.parent.glob("*.html"))) == 4

    dom = chromium(index.as_uri() + "#sort=reward", tmp_path, "--dump-dom")
    rewards = [float(v) for v in re.findall(r"<td data-v=\"([0-9.]+)\">[0-9.]+</td><td data-v=\"(?:ready|error)", dom)]
    assert rewards == sorted(rewards) and rewards[0] == 0.0 and len(rewards) == 3
    link = re.search(r"<a href=\"([^\"]+)\">niah-0-1</a>", dom).group(1)
    detail = chromium((index.parent / link).as_uri(), tmp_path, "--dump-dom")
    assert "reward 0.000" in detail and "wrong" in detail
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["trajectory"].startswith("trajectories/")
    assert Result.model_validate_json((out / "trajectories" / "niah" / "llm" / "niah-0-1.json").read_text()).answer == "wrong"
