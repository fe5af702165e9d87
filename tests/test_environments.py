"""Environments and the harness: oracle programs through the real runtime score 1.0, wrong ones
score what the metric says; generators are deterministic; loaders read the published formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import environments
from environments import DeepDive, MathPython, NeedleInAHaystack, Oolong, Task, VerbatimCopy
from environments.oolong import score_dnd, score_synth
from rlm.models import ModelClient
from rlm.testing import fenced
from tests.oracles import OPTIONS, oracle_code

FIXTURES = Path(__file__).parent / "fixtures"

SMALL = {name: (lambda name=name: environments.ENVIRONMENTS[name](**OPTIONS[name])) for name in OPTIONS}


def oracle_server(scripted, env_name: str, tasks: list[Task], *, wrong: bool = False):
    by_prompt = {task.prompt: task for task in tasks}

    def root(request):
        task = by_prompt[request["messages"][1]["content"]]
        return fenced(oracle_code(env_name, task, wrong=wrong))

    return scripted(root)


@pytest.mark.parametrize("name", list(SMALL))
async def test_oracle_scores_one_and_wrong_program_scores_less(scripted, tmp_path, name):
    env = SMALL[name]()
    tasks = env.generate(3, seed=7)
    for wrong, out in ((False, tmp_path / "right"), (True, tmp_path / "wrong")):
        server = oracle_server(scripted, name, tasks, wrong=wrong)
        summary = await environments.evaluate(
            [env], model="scripted-root", base_url=server.base_url, modes=["rlm"], tasks={name: tasks},
            out=out, progress=False, max_retries=0,
        )
        rollouts = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [r["status"] for r in rollouts] == ["ready"] * 3, rollouts
        rewards = [r["reward"] for r in rollouts]
        if wrong:
            assert all(r < 1.0 for r in rewards), rewards
        else:
            assert rewards == [1.0, 1.0, 1.0], [r["answer"] for r in rollouts]
        assert summary.rows[0].rollouts == 3 and summary.rows[0].reward_mean == pytest.approx(sum(rewards) / 3)


async def test_oolong_count_off_by_two_scores_0_5625(scripted, tmp_path):
    env = Oolong(context_tokens=1500, labels=True)
    task = next(t for t in env.generate(40, seed=3) if t.info["answer_type"] == "ANSWER_TYPE.NUMERIC")
    server = oracle_server(scripted, "oolong", [task], wrong=True)
    summary = await environments.evaluate([env], model="m", base_url=server.base_url, modes=["rlm"],
                                          tasks={"oolong": [task]}, out=tmp_path, progress=False, max_retries=0)
    assert summary.rows[0].reward_mean == 0.5625


def test_verbatim_wrong_copy_has_levenshtein_similarity():
    env = VerbatimCopy()
    task = env.generate(1, seed=0)[0]
    score = env.score(task, task.expected[:-1])
    assert score.reward == 0.0
    assert score.metrics["similarity"] == pytest.approx(1 - 1 / len(task.expected))


@pytest.mark.parametrize("name", list(SMALL))
def test_generators_are_deterministic_per_seed(name):
    env = SMALL[name]()
    first, again, other = env.generate(3, seed=1), env.generate(3, seed=1), env.generate(3, seed=2)
    assert first == again
    assert [t.expected for t in first] != [t.expected for t in other] or [t.prompt for t in first] != [t.prompt for t in other]


def test_verbatim_content_types_lengths_and_mix():
    for kind, length in (("words", 200), ("json", 500), ("csv", 500), ("codes", 300), ("mixed", 600)):
        task = VerbatimCopy(content_type=kind).generate(1, seed=0)[0]
        assert len(task.expected) == length and task.info["content_type"] == kind
        assert task.expected in task.prompt
    kinds = [t.info["content_type"] for t in VerbatimCopy().generate(400, seed=0)]
    assert 0.19 < kinds.count("codes") / 400 < 0.31 and 0.10 < kinds.count("mixed") / 400 < 0.20
    fragmented = VerbatimCopy(content_type="json", target_length=800, mean_fragment_length=15).generate(1)[0]
    assert len(fragmented.expected) == 800
    with pytest.raises(json.JSONDecodeError):
        json.loads(fragmented.expected)  # slices of several pieces: no longer one JSON document


def test_niah_depth_and_multi_needle():
    task = NeedleInAHaystack(length=10_000, needles=3, depths=[0.0, 0.5, 1.0]).generate(1)[0]
    assert len(task.expected) == 3 and len(task.data) > 10_000
    positions = [task.data.find(f"is {value}.") for value in task.expected]
    assert positions[0] < len(task.data) * 0.05 and abs(positions[1] / len(task.data) - 0.5) < 0.05
    assert positions[2] > len(task.data) * 0.95
    env = NeedleInAHaystack()
    assert env.score(task, ", ".join(task.expected)).reward == 1.0
    partial = env.score(task, task.expected[0])
    assert partial.reward == partial.metrics["recall"] == pytest.approx(1 / 3)  # RULER's partial credit


def test_oolong_official_scoring():
    assert score_synth("Answer: 5", "[7]", "ANSWER_TYPE.NUMERIC") == 0.5625
    assert score_synth("**Label: location**", "['location']", "ANSWER_TYPE.LABEL") == 1.0
    assert score_synth("Answer: entity is more common than location", "['more common than']", "ANSWER_TYPE.COMPARISON") == 1.0
    assert score_synth("Date: Jan 05, 2023", "[datetime.date(2023, 1, 5)]", "ANSWER_TYPE.DATE") == 1.0
    assert score_synth("Date: Jan 06, 2023", "[datetime.date(2023, 1, 5)]", "ANSWER_TYPE.DATE") == 0.0
    assert score_dnd("\\boxed{6}", "4") == 0.5625
    assert score_dnd("Vex, Percy", "Vex, Percy, Scanlan") == pytest.approx(2 / 3)
    assert score_dnd("\\boxed{\\text{grog}}", "Grog") == 1.0


def test_loaders_read_the_published_formats():
    synth = Oolong().load(FIXTURES / "oolong_synth.jsonl")
    assert [t.info["source"] for t in synth] == ["oolong-synth"] * 3
    assert Oolong().score(synth[0], "Label: human being").reward == 1.0
    assert Oolong().score(synth[1], "Answer: 3").reward == 0.75
    assert Oolong().score(synth[2], "Date: Jan 05, 2023").reward == 1.0
    assert "|| Label: human being" in Oolong(labels=True).load(FIXTURES / "oolong_synth.jsonl")[0].data
    real = Oolong().load(FIXTURES / "oolong_real.jsonl")
    assert [t.info["source"] for t in real] == ["oolong-real"] * 3
    assert Oolong().score(real[0], "\\boxed{4}").reward == 1.0
    assert Oolong().score(real[1], "Vex, Percy").reward == pytest.approx(2 / 3)

    deep = DeepDive().load(FIXTURES / "deepdive.jsonl")
    assert deep[1].id == "dd-2" and deep[1].expected == "Spree" and deep[0].data is None
    with pytest.raises(ValueError, match="search backend"):
        DeepDive().sub_tools(deep[0])

    math = MathPython().load(FIXTURES / "math.jsonl")
    assert [t.expected for t in math] == ["\\frac{5}{6}", "72"]
    assert MathPython().score(math[0], "5/6").reward == 1.0 and MathPython().score(math[1], "72").reward == 1.0

    niah = NeedleInAHaystack().load(FIXTURES / "niah.jsonl")
    assert niah[0].expected == ["1234567"] and "magic number" in niah[0].data
    copy = VerbatimCopy().load(FIXTURES / "verbatim.jsonl")
    assert copy[0].expected == "id,name\n1,alpha\n2,bravo" and copy[0].expected in copy[0].prompt


def test_math_answers_are_parsed_safely():
    env, task = MathPython(), Task(id="t", prompt="?", expected="7/3")
    for answer in ("7/3", "x = 7/3", "\\boxed{\\frac{7}{3}}", "2.33333333333", "14/6"):
        assert env.score(task, answer).reward == 1.0, answer
    for hostile in ("__import__('os').system('true')", "exit()", "open('/etc/passwd')", "7/3; 1"):
        assert env.score(task, hostile).reward == 0.0


def test_deepdive_search_tools_answer_the_hops():
    env = DeepDive()
    task = env.generate(1, seed=0)[0]
    search, open_doc = env.sub_tools(task)
    hits = json.loads(search(task.info["hops"][0]))
    assert hits[0]["title"] == task.info["hops"][0]
    assert task.info["hops"][1] in open_doc(json.loads(search(task.info["hops"][1]))[0]["id"])


async def test_deepdive_judge_through_the_client(scripted):
    server = scripted([], sub=lambda r: "yes" if "Arden Works" in r["messages"][-1]["content"].split("Agent response:")[1] else "no")
    judge = ModelClient("judge", base_url=server.base_url, max_retries=0)
    env = DeepDive(judge=judge)
    task = Task(id="t", prompt="Which firm?", expected="Arden Works")
    assert (await env.ascore(task, "It was Arden Works.")).reward == 1.0
    assert (await env.ascore(task, "Blythe Company")).reward == 0.0
    await judge.close()
    assert DeepDive().score(task, "arden works").reward == 1.0


async def test_sub_tools_reach_sub_llms_only(scripted, tmp_path):
    env = DeepDive()
    task = env.generate(1, seed=0)[0]

    def sub(request):
        tool_results = [m for m in request["messages"] if m["role"] == "tool"]
        if not tool_results:
            return {"tool_calls": [{"name": "search", "arguments": json.dumps({"query": task.info["hops"][0]})}]}
        return json.loads(tool_results[0]["content"])[0]["title"]

    server = scripted([fenced("r = llm_batch(['find it'])\nanswer['content'] = r[0]\nanswer['ready'] = True")], sub=sub)
    await environments.evaluate([env], model="m", base_url=server.base_url, modes=["rlm"], tasks={"deepdive": [task]},
                                out=tmp_path, progress=False, max_retries=0)
    assert {t["function"]["name"] for t in server.sub_requests[0]["tools"]} == {"search", "open"}
    assert all(t["function"]["name"] == "python" for r in server.root_requests for t in r.get("tools", []))
    rollout = json.loads((tmp_path / "results.jsonl").read_text())
    assert rollout["answer"] == task.info["hops"][0]


async def test_llm_mode_puts_data_in_the_prompt_and_rlm_does_not(scripted, tmp_path):
    env = NeedleInAHaystack(length=5000)
    task = env.generate(1, seed=0)[0]
    server = scripted([fenced(oracle_code("niah", task))], sub=lambda r: task.expected[0])
    summary = await environments.evaluate([env], model="m", base_url=server.base_url, modes=["llm", "rlm"],
                                          tasks={"niah": [task]}, out=tmp_path, progress=False, max_retries=0)
    llm_request = next(r for r in server.requests if task.data in r["messages"][-1]["content"])
    assert task.prompt in llm_request["messages"][-1]["content"]
    haystack_sample = task.data[len(task.data) // 2 : len(task.data) // 2 + 300]
    assert all(haystack_sample not in json.dumps(r) for r in server.root_requests)
    assert [(row.mode, row.reward_mean) for row in summary.rows] == [("llm", 1.0), ("rlm", 1.0)]


async def test_llm_mode_records_a_context_overflow(scripted, tmp_path):
    env = NeedleInAHaystack(length=2000)
    server = scripted([], sub=lambda r: {"status": 400, "error": "maximum context length is 4096 tokens"})
    summary = await environments.evaluate([env], model="m", base_url=server.base_url, modes=["llm"], n=2,
                                          out=tmp_path, progress=False, max_retries=0)
    rollouts = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "error" and r["error"].startswith("ContextLengthExceeded") for r in rollouts)
    assert summary.rows[0].failures == 2 and summary.rows[0].reward_mean == 0.0


async def test_concurrency_is_respected(scripted, tmp_path):
    env = NeedleInAHaystack(length=1000)
    # The first replies wait until 3 are in flight, so the limit is reached however slow the machine.
    server = scripted([], sub=lambda r: "0", hold_until_in_flight=3)
    summary = await environments.evaluate([env], model="m", base_url=server.base_url, modes=["llm"], n=12,
                                          concurrency=3, out=tmp_path, progress=False, max_retries=0)
    assert server.peak_in_flight == 3 and len(server.requests) == 12
    assert summary.rows[0].failures == 0


async def test_resume_runs_only_what_is_missing(scripted, tmp_path):
    env = NeedleInAHaystack(length=1000)
    tasks = env.generate(4, seed=0)
    answers = {t.data: t.expected[0] for t in tasks}
    rule = lambda r: next(v for data, v in answers.items() if data in r["messages"][-1]["content"])  # noqa: E731
    first = scripted([], sub=rule)
    await environments.evaluate([env], model="m", base_url=first.base_url, modes=["llm"], tasks={"niah": tasks},
                                out=tmp_path, progress=False, max_retries=0)
    results = tmp_path / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # an interrupted run: a cut line
    second = scripted([], sub=rule)
    summary = await environments.evaluate([env], model="m", base_url=second.base_url, modes=["llm"],
                                          tasks={"niah": tasks}, out=tmp_path, progress=False, max_retries=0)
    assert len(second.requests) == 2
    assert summary.rows[0].rollouts == 4 and summary.rows[0].reward_mean == 1.0


def test_rlm_eval_cli(scripted, tmp_path):
    import subprocess
    import sys

    server = scripted([fenced("answer['content'] = 'x'; answer['ready'] = True")] * 2, sub=lambda r: "nothing")
    proc = subprocess.run(
        [sys.executable, "-m", "rlm.cli", "eval", "niah", "--model", "m", "--base-url", server.base_url,
         "--mode", "llm,rlm", "-n", "2", "--out", str(tmp_path), "--option", "niah.length=3000"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "niah" in proc.stdout and "reward" in proc.stdout
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
    assert len(list((tmp_path / "trajectories" / "niah").rglob("*.json"))) == 4
    inline = [r["messages"][-1]["content"] for r in server.sub_requests]  # the llm mode's prompts
    assert len(inline) == 2 and all(3000 <= len(p) < 3500 for p in inline), [len(p) for p in inline]

    bad = subprocess.run([sys.executable, "-m", "rlm.cli", "eval", "niah", "--model", "m", "--option", "niah.nope=1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--option for niah" in bad.stderr and "nope" in bad.stderr


def test_parquet_rows_load_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "oolong_synth.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    from_parquet = Oolong().load(tmp_path / "test-00000-of-00001.parquet")
    assert from_parquet == Oolong().load(FIXTURES / "oolong_synth.jsonl")
