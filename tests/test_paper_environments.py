"""The RLM paper's environments (oolong_pairs, browsecomp_plus, codeqa, s_niah): oracle programs
through the real runtime score 1.0 and wrong ones less; loaders read rows typed from the
published schemas; rewards give the scores the benchmarks' own scoring rules give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import environments
from environments import BrowseCompPlus, CodeQA, OolongPairs, SingleNeedle, Task
from environments.browsecomp_plus import citation_metrics, judge_verdict
from environments.codeqa import extract_choice
from environments.oolong_pairs import QUERIES, pair_f1
from environments.s_niah import PAPER_LENGTHS, string_match_all
from rlm.models import ModelClient
from rlm.testing import fenced
from tests.oracles import oracle_code

FIXTURES = Path(__file__).parent / "fixtures"

def test_oolong_pairs_rules_agree_with_the_papers_wording_for_all_twenty_queries():
    """The oracle derives each rule from the question's text; run in-process over every query."""
    env = OolongPairs(context_tokens=1500, labels=True)
    tasks = env.generate(2 * len(QUERIES), seed=11)
    assert sorted({t.info["query"] for t in tasks}) == list(range(1, 21))
    for task in tasks:
        namespace = {"context": task.data, "answer": {"content": "", "ready": False}}
        exec(oracle_code("oolong_pairs", task), namespace)
        assert env.score(task, namespace["answer"]["content"]).reward == 1.0, task.info
    unlabelled = OolongPairs(context_tokens=1500).generate(1, seed=11)[0]
    assert "|| Label:" not in unlabelled.data and unlabelled.expected == tasks[0].expected


def test_oolong_pairs_f1_over_pairs():
    gold = [[101, 102], [101, 104], [102, 104]]
    assert pair_f1("(101, 102)\n(101, 104)\n(102, 104)", gold) == (1.0, 1.0, 1.0)
    # order inside a pair and duplicates do not matter; one wrong and one missed pair: P = R = 2/3
    assert pair_f1("(102, 101)\n(101,102)\n(104, 102)\n(103, 104)", gold) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert pair_f1("no pairs", gold) == (0.0, 0.0, 0.0)
    assert pair_f1("", []) == (1.0, 1.0, 1.0) and pair_f1("(1, 2)", [])[0] == 0.0


def test_oolong_pairs_loader_builds_the_papers_tasks_from_oolong_synth_rows():
    env = OolongPairs(queries=[1, 4, 12])
    tasks = env.load(FIXTURES / "oolong_pairs_synth.jsonl")  # two rows of window 7, one spam row
    assert [t.id for t in tasks] == ["7-pairs-1", "7-pairs-4", "7-pairs-12"]
    assert "|| Label:" not in tasks[0].data and "User: 104" in tasks[0].data
    by_query = {t.info["query"]: t.expected for t in tasks}
    assert by_query[1] == [[101, 102], [101, 104], [102, 104]]  # numeric value or location
    assert by_query[4] == [[102, 103]]  # 104's human being is dated Dec 30, 2022: before Jan 6
    assert by_query[12] == []  # nobody has two numeric values
    assert env.score(tasks[0], "(101, 102)\n(102, 104)\n(103, 104)").reward == pytest.approx(2 / 3)
    assert env.score(tasks[2], "").reward == 1.0
    assert "|| Label: location" in OolongPairs(labels=True).load(FIXTURES / "oolong_pairs_synth.jsonl")[0].data
    with pytest.raises(ValueError, match="1..20"):
        OolongPairs(queries=[21])


def test_browsecomp_plus_loader_corpus_and_reward():
    env = BrowseCompPlus(documents=5, corpus=str(FIXTURES / "browsecomp_plus_corpus.jsonl"))
    tasks = env.load(FIXTURES / "browsecomp_plus.jsonl")
    first = tasks[0]
    docids = [d["docid"] for d in first.data]
    assert first.id == "769" and first.expected == "Ostrel Glassworks"
    assert len(docids) == len(set(docids)) == 5 and {"18639", "41759", "5412"} <= set(docids)
    assert first.info["evidence_docids"] == ["18639", "41759"] and first.info["gold_docids"] == ["18639"]
    assert "Question: Which glassworks" in first.prompt and "Exact Answer:" in first.prompt
    assert env.load(FIXTURES / "browsecomp_plus.jsonl")[0].data == first.data  # fixed order per query
    assert [d["docid"] for d in BrowseCompPlus().load(FIXTURES / "browsecomp_plus.jsonl")[1].data] == ["41759"]

    response = "Explanation: founded on Hollin [18639], a Velda island [41759, 104].\nExact Answer: Ostrel Glassworks\nConfidence: 80%"
    score = env.score(first, response)
    assert score.reward == 1.0
    assert score.metrics["citation_precision"] == pytest.approx(2 / 3) and score.metrics["citation_recall"] == 1.0
    assert env.score(first, "Exact Answer: Pellham Glass").reward == 0.0
    assert env.score(first, "").reward == 0.0


def test_browsecomp_plus_published_parsing_rules():
    # evaluate_run.py: bold verdicts first, then plain; no verdict is a parse error (counted wrong)
    assert judge_verdict("extracted_final_answer: Velda\nreasoning: same river\ncorrect: yes\nconfidence: 90") is True
    assert judge_verdict("**extracted_final_answer:** Velda\n**correct:** no\n**confidence:** 100%") is False
    assert judge_verdict("**correct**: YES") is True
    assert judge_verdict("the answers match") is None
    # extract_citations_from_response: [n], [n, m] and fullwidth 【n】; compute_citation_metrics
    metrics = citation_metrics("a [123] b [456, 789] c 【42】 d [see above]", ["123", "999"])
    assert metrics == {"citation_precision": 0.25, "citation_recall": 0.5}
    assert citation_metrics("no citations", ["123"]) == {"citation_precision": 0.0, "citation_recall": 0.0}


async def test_browsecomp_plus_judge_through_the_client(scripted):
    def grade(request):
        prompt = request["messages"][-1]["content"]
        response = prompt.split("[response]:")[1].split("[correct_answer]:")[0]
        verdict = "yes" if "Ostrel" in response else "no"
        return f"extracted_final_answer: {response.strip()}\n\nreasoning: compared.\n\ncorrect: {verdict}\n\nconfidence: 100"

    server = scripted([], sub=grade)
    judge = ModelClient("judge", base_url=server.base_url, max_retries=0)
    env = BrowseCompPlus(judge=judge)
    task = env.load(FIXTURES / "browsecomp_plus.jsonl")[0]
    right = await env.ascore(task, "Exact Answer: the Ostrel glass works")
    assert right.reward == 1.0 and right.metrics == {"exact": 0.0, "judge": 1.0, "citation_precision": 0.0,
                                                     "citation_recall": 0.0}
    assert (await env.ascore(task, "Exact Answer: Pellham Glass")).reward == 0.0
    assert (await env.ascore(task, "  ")).reward == 0.0
    assert len(server.sub_requests) == 2  # the empty response never reached the judge
    prompt = server.sub_requests[0]["messages"][0]["content"]
    assert prompt.startswith("Judge whether the following [response] to [question] is correct")
    assert "[question]: Which glassworks" in prompt and "[correct_answer]: Ostrel Glassworks" in prompt
    await judge.close()


def test_browsecomp_plus_bm25_tools_find_the_evidence():
    env = BrowseCompPlus(documents=300)
    task = env.generate(1, seed=4)[0]
    search, get_document = env.sub_tools(task)
    person, city, company = task.info["evidence_docids"]
    person_name, city_name = get_document(person).split("\n")[0], get_document(city).split("\n")[0]
    company_name = get_document(company).split("\n")[0]
    assert json.loads(search(f"{company_name} founded first product"))[0]["docid"] == company
    assert json.loads(search(f"{person_name} born"))[0]["docid"] == person
    river = task.info["question"].split("on the river ")[1].split()[0]
    hits = json.loads(search(f"{city_name} city river {river}"))
    assert hits[0]["docid"] == city and len(hits) == 5
    assert task.expected in get_document(company) and "no document" in get_document("1")


async def test_browsecomp_plus_tools_reach_sub_llms_only(scripted, tmp_path):
    env = BrowseCompPlus(documents=40)
    task = env.generate(1, seed=0)[0]

    def sub(request):
        results = [m for m in request["messages"] if m["role"] == "tool"]
        if not results:
            return {"tool_calls": [{"name": "search", "arguments": json.dumps({"query": task.info["question"]})}]}
        return json.loads(results[0]["content"])[0]["docid"]

    server = scripted([fenced("r = llm_batch(['search it'])\nanswer['content'] = r[0]\nanswer['ready'] = True")], sub=sub)
    await environments.evaluate([env], model="m", base_url=server.base_url, modes=["rlm"],
                                tasks={"browsecomp_plus": [task]}, out=tmp_path, progress=False, max_retries=0)
    assert {t["function"]["name"] for t in server.sub_requests[0]["tools"]} == {"search", "get_document"}
    assert all(t["function"]["name"] == "python" for r in server.root_requests for t in r.get("tools", []))
    answer = json.loads((tmp_path / "results.jsonl").read_text())["answer"]
    assert answer in {d["docid"] for d in task.data}


def test_codeqa_longbench_v2_extraction_and_loader():
    # pred.py extract_answer: stars dropped, "(X)" or bare X after "The correct answer is"
    assert extract_choice("The correct answer is (B)") == "B"
    assert extract_choice("**The correct answer is C**") == "C"
    assert extract_choice("I would pick (B).") is None
    assert extract_choice("The correct answer is (E)") is None
    tasks = CodeQA().load(FIXTURES / "longbench_v2.json")
    assert [t.id for t in tasks] == ["66f36490821e116aacb2cc22", "66f36490821e116aacb2cc23"]  # code domain only
    assert tasks[0].info == {"domain": "Code Repository Understanding", "sub_domain": "Code repo QA",
                             "difficulty": "hard", "length": "medium", "source": "longbench-v2"}
    assert "(B) connect" in tasks[0].prompt and "def main(retries=3)" in tasks[0].data
    env = CodeQA()
    assert env.score(tasks[0], "The correct answer is (B)").reward == 1.0
    assert env.score(tasks[1], "The correct answer is (B)").reward == 0.0
    unanswered = env.score(tasks[1], "Probably 3.")
    assert unanswered.reward == 0.0 and unanswered.metrics["answered"] == 0.0
    assert len(CodeQA(domain=None).load(FIXTURES / "longbench_v2.json")) == 3
    with pytest.raises(ValueError, match="at least 4 files"):
        CodeQA(files=3)


def test_s_niah_spreads_tasks_over_the_lengths_and_reads_ruler_rows():
    assert PAPER_LENGTHS == [8192, 16384, 32768, 65536, 131072, 262144]
    env = SingleNeedle(lengths=[500, 2000])
    tasks = env.generate(4, seed=0)
    assert [t.info["length_tokens"] for t in tasks] == [500, 2000, 500, 2000]
    assert all(len(t.expected) == 1 and t.expected[0] in t.data for t in tasks)
    assert 1800 < len(tasks[0].data) < 2600 and 7500 < len(tasks[1].data) < 8600
    assert len({t.expected[0] for t in tasks}) == 4

    row = SingleNeedle().load(FIXTURES / "ruler_niah_single.jsonl")[0]
    assert row.id == "s_niah-0" and row.expected == ["4817263"] and row.info == {"length_tokens": 8192}
    assert row.prompt == "What is the special magic number for quiet-lake mentioned in the provided text?"
    assert row.data.startswith("The grass is green.") and "quiet-lake is: 4817263." in row.data
    # RULER string_match_all: case-insensitive containment of every reference
    assert SingleNeedle().score(row, "The special magic number for quiet-lake is 4817263.").reward == 1.0
    assert SingleNeedle().score(row, "4817264").reward == 0.0
    assert string_match_all("Alpha and 12", ["alpha", "12", "beta"]) == pytest.approx(2 / 3)


def test_registered_for_the_cli_and_options():
    registered = {"oolong_pairs": OolongPairs, "browsecomp_plus": BrowseCompPlus, "codeqa": CodeQA, "s_niah": SingleNeedle}
    assert {name: environments.ENVIRONMENTS[name] for name in registered} == registered
    assert {cls.__name__ for cls in registered.values()} <= set(environments.__all__)
    assert isinstance(environments.ENVIRONMENTS["s_niah"](lengths=[64]).generate(1)[0], Task)  # a JSON --option value
