"""`rlm eval`'s reproductions: the presets and the figures they cite, --repeats (per-task
variance, resume by repeat), --prices (a cost column, refused when a model is unpriced), latency
percentiles, and the report (markdown + self-contained HTML with three plots) end to end, against
the scripted server and once on the embedded CPU model."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest

import rlm
from environments import Rollout
from environments.cli import build_environments
from environments.harness import evaluate
from environments.presets import PRESETS, PRIME_BLOG, RLM_PAPER, preset
from environments.results import Price, load_prices, rollout_cost, summarize
from rlm import TokenUsage
from rlm.testing import fenced
from tests.oracles import oracle_code

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rlm_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlm.cli", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def rollout(task_id: str, repeat: int, reward: float, seconds: float, by_model: dict[str, TokenUsage] | None = None,
            mode: rlm.Mode = "rlm") -> Rollout:
    return Rollout(task_id=task_id, repeat=repeat, environment="niah", mode=mode, reward=reward, status="ready",
                   root_usage=TokenUsage(prompt_tokens=100, completion_tokens=20, calls=1),
                   sub_usage=TokenUsage(prompt_tokens=300, completion_tokens=80, calls=2), usage_by_model=by_model,
                   turns=2, seconds=seconds, trajectory="t.json")


PRICES = {"root-m": Price(input=2.0, output=10.0), "sub-m": Price(input=0.5, output=1.0)}
BY_MODEL = {"root-m": TokenUsage(prompt_tokens=1000, completion_tokens=100), "sub-m": TokenUsage(prompt_tokens=2000,
                                                                                                 completion_tokens=500)}


def test_summary_gives_per_task_variance_latency_percentiles_tokens_and_cost():
    rollouts = [rollout("a", 0, 1.0, 1.0, BY_MODEL), rollout("a", 1, 0.0, 2.0, BY_MODEL),
                rollout("b", 0, 1.0, 3.0, BY_MODEL), rollout("b", 1, 1.0, 10.0, BY_MODEL)]
    [row] = summarize(rollouts, PRICES)
    assert (row.rollouts, row.tasks, row.reward_mean) == (4, 2, 0.75)
    assert row.reward_stderr == pytest.approx(0.25)  # sample variance 0.25 over 4 rollouts
    assert row.task_variance == pytest.approx(0.25)  # task a: 0.5, task b: 0
    assert (row.seconds_p50, row.seconds_p95) == (pytest.approx(2.5), pytest.approx(8.95))  # linear interpolation
    assert (row.root_tokens, row.sub_tokens, row.total_tokens) == (120, 380, 500)
    # each model's tokens at its own price: (1000*2 + 100*10 + 2000*0.5 + 500*1) / 1e6 dollars
    assert row.cost == pytest.approx(4500 / 1e6)


def test_cost_is_unknown_not_zero_without_prices_or_per_model_usage():
    [unpriced] = summarize([rollout("a", 0, 1.0, 1.0, BY_MODEL)])
    [old_line] = summarize([rollout("a", 0, 1.0, 1.0, None), rollout("b", 0, 1.0, 1.0, BY_MODEL)], PRICES)
    [single] = summarize([rollout("a", 0, 1.0, 1.0, BY_MODEL)], PRICES)
    assert unpriced.cost is None and old_line.cost is None and single.task_variance is None


def test_a_model_missing_from_the_price_table_is_an_error():
    with pytest.raises(rlm.ConfigError, match=r"no price for model\(s\) \['sub-m'\]"):
        rollout_cost(rollout("a", 0, 1.0, 1.0, BY_MODEL), {"root-m": PRICES["root-m"]})


@pytest.mark.parametrize(("text", "error"), [
    ("{not json", "Expecting property name"),
    ('["m"]', "expected an object"),
    ('{"m": {"input": 1.0}}', "'output'"),
    ('{"m": {"input": -1, "output": 2}}', "greater than or equal to 0"),
])
def test_bad_price_files_are_refused(tmp_path, text, error):
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(rlm.ConfigError, match=re.escape(error)):
        load_prices(path)


def test_load_prices_reads_dollars_per_million_tokens(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text('{"gpt-5-mini": {"input": 0.25, "output": 2.0}}')
    assert load_prices(path) == {"gpt-5-mini": Price(input=0.25, output=2.0)}


async def test_evaluate_refuses_an_unpriced_model_before_any_rollout(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(rlm.ConfigError, match=r"no price for model\(s\) \['root-m'\]"):
        await evaluate(["niah"], model="root-m", base_url="http://127.0.0.1:9/v1", n=1, out=out,
                       prices={"other": Price(input=1, output=1)}, progress=False)
    assert not out.exists()


def test_presets_carry_the_published_setups():
    assert set(PRESETS) == {"prime-blog", "rlm-paper"}
    assert list(PRIME_BLOG.environments) == ["deepdive", "oolong", "verbatim_copy", "math_python"]
    assert PRIME_BLOG.modes == ("llm", "rlm", "rlm+tips")
    assert PRIME_BLOG.settings == {"exec_timeout": 120.0, "max_output_chars": 8192}  # the blog's REPL limits
    assert set(RLM_PAPER.environments) == {"s_niah", "browsecomp_plus", "oolong", "oolong_pairs", "codeqa"}
    assert RLM_PAPER.modes == ("llm", "rlm") and RLM_PAPER.settings == {"max_depth": 1}
    for chosen in PRESETS.values():
        assert {e.name for e in build_environments(list(chosen.environments), [], chosen.environments)} == set(
            chosen.environments)
        rlm.RLMConfig(model="m", **chosen.settings)
        for figure in chosen.published:
            assert figure.environment in chosen.environments and figure.mode in chosen.modes
            assert 0.0 <= figure.reward <= 1.0 and figure.source and figure.model
    with pytest.raises(rlm.ConfigError, match="unknown preset 'nope'"):
        preset("nope")


def test_published_figures_match_their_sources():
    """Values typed from the sources the presets cite (paper: percentages in Table 1)."""
    paper = {(f.environment, f.mode, f.model): f for f in RLM_PAPER.published}
    assert paper["browsecomp_plus", "rlm", "gpt-5"].reward == 0.9133  # 91.33
    assert paper["oolong_pairs", "llm", "gpt-5"].reward == 0.0004  # 0.04
    assert paper["oolong", "rlm", "qwen3-coder-480b"].cost == 0.61  # $0.61 ± $0.49
    assert not [f for f in RLM_PAPER.published if f.environment == "s_niah"]  # only plotted, never tabulated
    blog = {(f.environment, f.mode): f for f in PRIME_BLOG.published}
    assert blog["math_python", "llm"].reward == 0.44 and blog["math_python", "rlm"].reward == 0.353
    # oolong: the mean of the three subsets' judge rewards, (0.14 + 0.52 + 0.98) / 3 for the rlm
    assert blog["oolong", "rlm"].reward == round((0.14 + 0.52 + 0.98) / 3, 3)


def oracle_server(scripted, chosen_envs: dict[str, dict], n: int = 1):
    """A scripted server whose root model solves every task of these environments by its oracle
    program, while the plain LLM (and any sub-call) answers 'no idea'."""
    tasks = {task.prompt: (env.name, task) for env in build_environments(list(chosen_envs), [], chosen_envs)
             for task in env.generate(n, 0)}

    def root(request):
        name, task = tasks[request["messages"][1]["content"]]
        return fenced(oracle_code(name, task))

    return scripted(root, sub=lambda request: "no idea")


def report_rows(markdown: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\| (\w+) \| (llm|rlm|rlm\+tips) \| \d+ \|", markdown, re.MULTILINE))


def test_prime_blog_preset_end_to_end_with_repeats_prices_report_and_resume(scripted, tmp_path):
    # with labels in the records the oracle can count them (unlabelled records need a model to classify)
    server = oracle_server(scripted, {**PRIME_BLOG.environments, "oolong": {"labels": True}})
    prices = tmp_path / "prices.json"
    prices.write_text('{"m": {"input": 1.25, "output": 10.0}}')
    out = tmp_path / "results"
    command = ("eval", "--preset", "prime-blog", "-n", "1", "--repeats", "2", "--prices", str(prices),
               "--model", "m", "--base-url", server.base_url, "--concurrency", "4", "--out", str(out),
               "--option", "oolong.labels=true")
    done = rlm_cli(*command)
    assert done.returncode == 0, done.stderr
    assert f"report: {out / 'report.html'} (and {out / 'report.md'})" in done.stdout

    rollouts = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rollouts) == 4 * 3 * 2
    assert {(r["environment"], r["mode"], r["repeat"]) for r in rollouts} == {
        (env, mode, k) for env in PRIME_BLOG.environments for mode in PRIME_BLOG.modes for k in (0, 1)}
    assert all((out / r["trajectory"]).exists() for r in rollouts)
    summary = json.loads((out / "summary.json").read_text())
    rows = {(row["environment"], row["mode"]): row for row in summary["rows"]}
    assert set(rows) == {(env, mode) for env in PRIME_BLOG.environments for mode in PRIME_BLOG.modes}
    for (env, mode), row in rows.items():
        mine = [r for r in rollouts if (r["environment"], r["mode"]) == (env, mode)]
        expected_cost = sum(u["prompt_tokens"] * 1.25 + u["completion_tokens"] * 10.0
                            for r in mine for u in r["usage_by_model"].values()) / 1e6 / 2
        assert (row["rollouts"], row["tasks"], row["task_variance"]) == (2, 1, 0.0), (env, mode)
        assert row["reward_mean"] == (0.0 if mode == "llm" else 1.0), (env, mode, mine[0]["answer"][:200])
        assert row["cost"] == pytest.approx(expected_cost) and row["cost"] > 0
        assert row["total_tokens"] == row["root_tokens"] + row["sub_tokens"] > 0
        assert 0 < row["seconds_p50"] <= row["seconds_p95"]

    markdown = (out / "report.md").read_text()
    assert report_rows(markdown) == set(rows)
    assert "## Published figures beside this run" in markdown
    assert "| math_python | rlm | gpt-5-mini | 0.353 | 1.000 ± 0.000 |" in markdown
    assert sorted(p.name for p in (out / "report_plots").iterdir()) == ["reward.png", "time.png", "tokens.png"]
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3 and all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert "PrimeIntellect-ai/verifiers" in page and "<td>verbatim_copy</td><td>rlm+tips</td>" in page

    again = rlm_cli(*command)  # resume: every (task, mode, repeat) is done, nothing runs twice
    assert again.returncode == 0, again.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rollouts)


def test_paper_preset_runs_a_chosen_subset_with_overridden_options(scripted, tmp_path):
    options = {"s_niah": {"lengths": [512]}, "oolong_pairs": {"context_tokens": 1500, "labels": True}}
    server = oracle_server(scripted, options)
    out = tmp_path / "results"
    done = rlm_cli("eval", "s_niah", "oolong_pairs", "--preset", "rlm-paper", "-n", "1", "--model", "m",
                   "--base-url", server.base_url, "--out", str(out), "--option", "s_niah.lengths=[512]",
                   "--option", "oolong_pairs.context_tokens=1500", "--option", "oolong_pairs.labels=true")
    assert done.returncode == 0, done.stderr
    rows = {(row["environment"], row["mode"]): row for row in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {(env, mode) for env in options for mode in ("llm", "rlm")}
    assert rows["oolong_pairs", "rlm"]["reward_mean"] == 1.0 and rows["s_niah", "rlm"]["reward_mean"] == 1.0
    assert rows["s_niah", "rlm"]["cost"] is None  # no --prices
    markdown = (out / "report.md").read_text()
    assert report_rows(markdown) == set(rows)
    assert "| oolong_pairs | rlm | gpt-5 | 0.580 | 1.000 ± 0.000 |" in markdown
    assert "| codeqa | rlm | gpt-5 | 0.620 | — |" in markdown  # published, not run this time


def test_preset_refuses_environments_it_does_not_have(tmp_path):
    done = rlm_cli("eval", "niah", "--preset", "prime-blog", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                   "--out", str(tmp_path))
    assert done.returncode == 2 and "--preset prime-blog has no environment(s) ['niah']" in done.stderr


@pytest.mark.slow
def test_prime_blog_preset_on_the_embedded_model_writes_the_report(tmp_path):
    """The newcomer's command, cut to one task and one short turn so CI stays quick: a 135M model
    solves nothing, so this holds the pipeline, not the rewards."""
    out = tmp_path / "results"
    done = rlm_cli("eval", "--preset", "prime-blog", "-n", "1", "--tiny", "--max-turns", "1", "--max-tokens", "32",
                   "--concurrency", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"report: {out / 'report.html'}" in done.stdout
    expected = {(env, mode) for env in PRIME_BLOG.environments for mode in PRIME_BLOG.modes}
    assert report_rows((out / "report.md").read_text()) == expected
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3 and all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    rollouts = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rollouts) == len(expected) and all(r["usage_by_model"] is not None for r in rollouts)
