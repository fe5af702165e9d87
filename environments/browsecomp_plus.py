"""BrowseComp-Plus (the RLM paper's 1K-document setting): a multi-constraint question over a
fixed corpus with planted evidence documents; BM25 `search` and `get_document` for sub-LLMs;
graded by the benchmark's published LLM-judge prompt, or strictly offline without a judge."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlm

from .base import Environment, Score, Task, normalize, read_records
from .deepdive import LocalSearch

# The query format of texttron/BrowseComp-Plus search_agent/prompts.py (QUERY_TEMPLATE), told
# where the corpus and the tools are in an RLM.
QUERY_TEMPLATE = """You are a deep research agent. Answer the question below from the document corpus in `context` (a list of {{"docid", "text"}} documents); sub-LLMs can call a BM25 `search` tool and `get_document` on it.

Question: {question}

Your response should be in the following format:
Explanation: {{your explanation for your final answer. For this explanation section only, you should cite your evidence documents inline by enclosing their docids in square brackets [] at the end of sentences. For example, [20].}}
Exact Answer: {{your succinct, final answer}}
Confidence: {{your confidence score between 0% and 100% for your answer}}"""

# The grader prompt of texttron/BrowseComp-Plus scripts_evaluation/evaluate_run.py (GRADER_TEMPLATE),
# verbatim: the benchmark's judge (Qwen3-32B there; here whatever model the judge client serves).
GRADER_TEMPLATE = """Judge whether the following [response] to [question] is correct or not based on the precise and unambiguous [correct_answer] below.

[question]: {question}

[response]: {response}

[correct_answer]: {correct_answer}

Your judgement must be in the format and criteria specified below:

extracted_final_answer: The final exact answer extracted from the [response]. 

[correct_answer]: Repeat the [correct_answer] given above.

reasoning: Explain why the extracted_final_answer is correct or incorrect based on [correct_answer], in the context of this [question]. You should judge whether the extracted_final_answer is semantically equivalent to [correct_answer], allowing the extracted_final_answer to be string variations of [correct_answer]. You should also allow the extracted_final_answer to be more precise or verbose than [correct_answer], as long as its additional details are correct. Do not comment on any background to the problem, do not attempt to solve the problem, do not argue for any answer different than [correct_answer], focus only on whether the answers are semantically equivalent.

correct: Answer 'yes' if extracted_final_answer matches the [correct_answer] given above, or is within a small margin of error for numerical problems. Answer 'no' otherwise, i.e. if there if there is any inconsistency, ambiguity, non-equivalency, or if the extracted answer is incorrect.


confidence: The extracted confidence score between 0|\\%| and 100|\\%| from [response]. Put 100 if there is no confidence score available."""

# evaluate_run.py `parse_judge_response`: the bold forms are tried before the plain one.
_VERDICTS = tuple(re.compile(pattern, re.IGNORECASE) for pattern in (
    r"\*\*correct:\*\*\s*(yes|no)", r"\*\*correct\*\*:\s*(yes|no)", r"correct:\s*(yes|no)"))
_EXACT = re.compile(r"Exact Answer:\**\s*(.+)", re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\[\]]*?)\]|【([^【】]*?)】")


def judge_verdict(reply: str) -> bool | None:
    """The judge's `correct: yes|no` (None when it gave none, which the benchmark counts wrong)."""
    for pattern in _VERDICTS:
        match = pattern.search(reply)
        if match:
            return match.group(1).lower() == "yes"
    return None


def exact_answer(response: str) -> str:
    """The response's last `Exact Answer:` line, or the whole response when it has none."""
    found = _EXACT.findall(response)
    return found[-1].strip() if found else response.strip()


def cited_docids(response: str) -> set[str]:
    """Docids cited in [..] or 【..】 brackets, several to a bracket allowed (evaluate_run.py
    `extract_citations_from_response`: every digit run inside a bracket pair)."""
    return {docid for pair in _BRACKETS.findall(response) for group in pair for docid in re.findall(r"\d+", group)}


def citation_metrics(response: str, evidence: list[str]) -> dict[str, float]:
    """Precision and recall of the cited docids against the evidence documents (evaluate_run.py
    `compute_citation_metrics`; both 0 without citations)."""
    cited, relevant = cited_docids(response), set(evidence)
    hits = len(cited & relevant)
    return {"citation_precision": hits / len(cited) if cited else 0.0,
            "citation_recall": hits / len(relevant) if cited and relevant else 0.0}


_SYLLABLES = "ka lo mer tan vi sol dra ben ith or cal wen fro ast mil ru ne gar pel ous tor lin".split()
_OCCUPATIONS = "glassmaker cartographer shipwright botanist clockmaker printer surveyor luthier".split()
_RIVERS = "Asmer Velda Korrin Tessaly Ombra Nidd Halvar Serenne".split()
_COUNTRIES = "Ardania Belmark Corvia Dalmatra Estoria".split()
_KINDS = "Works Instruments Foundry Company Guild Trading Mills Press Atelier Holdings".split()
_THINGS = "loom lens press compass kiln lathe sextant barometer chronometer telegraph".split()
_FILLER = ("archive records mention seasonal trade fairs, municipal disputes and the upkeep of roads. "
           "local papers printed long notices about prices, weather and visiting delegations. "
           "a later survey lists the buildings of the old quarter and their successive owners. "
           "several letters in the collection discuss shipping delays and the cost of coal. "
           "the society's yearbook summarises lectures given during the winter season").split(". ")


def _names(rng: random.Random, count: int, parts: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize())
    return sorted(names)


def _page(title: str, facts: str, rng: random.Random) -> str:
    filler = " ".join(s.strip().capitalize() + "." for s in rng.sample(_FILLER, 3))
    return f"{title}\n{facts} {filler}"


def build_world(rng: random.Random, documents: int) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """People (one founded company each), their companies, cities on rivers and unrelated pages,
    `documents` pages in all, each with a unique numeric docid. Returns (people, corpus)."""
    cities = max(4, min(30, documents // 10))
    people_count = max(2, (documents - cities) * 2 // 5)
    city_names = _names(rng, cities, 2)
    city_of = {c: (rng.choice(_RIVERS), rng.choice(_COUNTRIES)) for c in city_names}
    # Unique surnames and brands make people, companies and products unique; first names may repeat.
    firsts = ["".join(rng.choices(_SYLLABLES, k=2)).capitalize() for _ in range(people_count)]
    lasts, brands = _names(rng, people_count, 3), _names(rng, people_count, 3)
    rng.shuffle(brands)
    products = [f"{name} {rng.choice(_THINGS)}" for name in _names(rng, people_count, 3)]
    rng.shuffle(products)
    ids = iter(str(d) for d in rng.sample(range(1000, 100_000), documents))
    corpus, people, city_doc = [], [], {}
    for city, (river, country) in city_of.items():
        city_doc[city] = next(ids)
        corpus.append({"docid": city_doc[city], "text": _page(city, f"{city} is a city in {country} on the river {river}.", rng)})
    for i in range(people_count):
        born, founded = rng.randint(1880, 1940), rng.randint(1905, 1975)
        person = {"name": f"{firsts[i]} {lasts[i]}", "occupation": rng.choice(_OCCUPATIONS), "born": born,
                  "city": rng.choice(city_names), "company": f"{brands[i]} {rng.choice(_KINDS)}",
                  "product": products[i], "founded": max(founded, born + 20)}
        person["river"] = city_of[person["city"]][0]
        person["person_doc"], person["company_doc"] = next(ids), next(ids)
        person["city_doc"] = city_doc[person["city"]]
        corpus.append({"docid": person["person_doc"], "text": _page(person["name"], (
            f"{person['name']} was a {person['occupation']} born in {born} in {person['city']}. "
            f"In {person['founded']} {firsts[i]} founded {person['company']}."), rng)})
        corpus.append({"docid": person["company_doc"], "text": _page(person["company"], (
            f"{person['company']} was founded in {person['founded']} by {person['name']}. "
            f"Its first product was the {person['product']}."), rng)})
        people.append(person)
    for _ in range(documents - len(corpus)):
        mentioned = rng.sample(people, 2)
        corpus.append({"docid": next(ids), "text": _page(f"Notes on {rng.choice(city_names)}", (
            f"The notes mention {mentioned[0]['name']} and the {mentioned[1]['occupation']} "
            f"{mentioned[1]['name']} among the guests."), rng)})
    rng.shuffle(corpus)
    return people, corpus


class BrowseCompPlus(Environment):
    """Offline: a seeded world rendered to `documents` pages with one question whose clues sit in
    three evidence pages. `load` reads BrowseComp-Plus rows; `judge` grades with its prompt."""

    name = "browsecomp_plus"
    tips = (
        "The answer must satisfy every clue at once. Narrow the corpus with code first (re over `context` for "
        "the distinctive clues), then give sub-LLMs focused prompts; they can call `search` (BM25) and "
        "`get_document`. Resolve one clue per step, keep the docid of every page you rely on, verify each "
        "clue against its page, and cite those docids in [brackets] in the Explanation."
    )

    def __init__(self, documents: int = 1000, judge: Any | None = None, corpus: str | None = None) -> None:
        """`documents`: corpus size per task (the paper's 1K); `judge`: a `rlm.models.ModelClient`
        grading with the published prompt (None: strict exact match of the Exact Answer);
        `corpus`: BrowseComp-Plus corpus rows (`docid`, `text`) that `load` pads each task from."""
        if documents < 1:
            raise rlm.ConfigError(f"browsecomp_plus needs documents >= 1, got {documents}")
        self.documents = documents
        self.judge = judge
        self.corpus = corpus

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        if not 20 <= self.documents <= 20_000:
            raise rlm.ConfigError(f"generated browsecomp_plus worlds have 20 to 20000 documents, got {self.documents}")
        tasks: list[Task] = []
        for index in range(n):
            rng = random.Random(f"browsecomp_plus-{seed}-{index}")
            people, corpus = build_world(rng, self.documents)
            clue = {}
            for p in people:
                key = (p["occupation"], p["born"], p["river"])
                clue[key] = None if key in clue else p  # a clue set that fits two people has no answer
            target = rng.choice([p for p in clue.values() if p is not None])
            who = f"A {target['occupation']} born in {target['born']} in a city on the river {target['river']}"
            if rng.random() < 0.5:
                question, answer = f"{who} founded a company. What was that company's first product?", target["product"]
            else:
                question, answer = f"{who} founded a company. What is the company's name?", target["company"]
            evidence = [target["person_doc"], target["city_doc"], target["company_doc"]]
            tasks.append(Task(id=f"browsecomp_plus-{seed}-{index}", prompt=QUERY_TEMPLATE.format(question=question),
                              data=corpus, expected=answer,
                              info={"question": question, "evidence_docids": evidence,
                                    "gold_docids": [target["company_doc"]], "source": "generated"}))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """Decrypted BrowseComp-Plus rows (Tevatron/browsecomp-plus, written by texttron/BrowseComp-Plus
        scripts_build_index/decrypt_dataset.py: `query_id`, `query`, `answer`, and `evidence_docs`,
        `gold_docs`, `negative_docs` as lists of {`docid`, `text`}). Each task's corpus is its own
        documents, padded to `documents` from `corpus` when given, in a fixed shuffled order."""
        pool = read_records(self.corpus) if self.corpus else []
        tasks = []
        for row in read_records(path):
            docs: dict[str, str] = {}
            for field in ("evidence_docs", "gold_docs", "negative_docs"):
                for doc in row.get(field) or []:
                    docs.setdefault(str(doc["docid"]), doc["text"])
            rng = random.Random(f"browsecomp_plus-{row['query_id']}")
            extra = [d for d in pool if str(d["docid"]) not in docs]
            for doc in rng.sample(extra, max(0, min(len(extra), self.documents - len(docs)))):
                docs[str(doc["docid"])] = doc["text"]
            corpus = [{"docid": docid, "text": text} for docid, text in docs.items()]
            rng.shuffle(corpus)
            tasks.append(Task(id=str(row["query_id"]), prompt=QUERY_TEMPLATE.format(question=row["query"]), data=corpus,
                              expected=str(row["answer"]),
                              info={"question": row["query"], "source": "browsecomp-plus",
                                    "evidence_docids": [str(d["docid"]) for d in row.get("evidence_docs") or []],
                                    "gold_docids": [str(d["docid"]) for d in row.get("gold_docs") or []]}))
        return tasks

    def sub_tools(self, task: Task) -> list[Callable[..., Any]]:
        texts = {doc["docid"]: doc["text"] for doc in task.data}
        index: list[LocalSearch] = []  # built on the first search: most sub-calls never search

        def search(query: str) -> str:
            """BM25 search over the corpus; returns the docids and snippets of the 5 best matches."""
            if not index:
                index.append(LocalSearch([{"id": d, "title": "", "text": t} for d, t in texts.items()]))
            return json.dumps([{"docid": hit["id"], "snippet": hit["snippet"]} for hit in index[0].search(query)])

        def get_document(docid: str) -> str:
            """The full text of the document with this docid."""
            return texts.get(str(docid), f"no document with docid {docid!r}")

        return [search, get_document]

    def score(self, task: Task, answer: str) -> Score:
        exact = float(bool(answer.strip()) and normalize(exact_answer(answer)) == normalize(str(task.expected)))
        return Score(reward=exact, metrics={"exact": exact, **citation_metrics(answer, task.info.get("evidence_docids", []))})

    async def ascore(self, task: Task, answer: str) -> Score:
        offline = self.score(task, answer)
        if self.judge is None:
            return offline
        verdict = False
        if answer.strip():  # evaluate_run.py marks an empty response wrong without asking the judge
            reply = await self.judge.complete([{"role": "user", "content": GRADER_TEMPLATE.format(
                question=task.info.get("question", task.prompt), response=answer, correct_answer=task.expected)}])
            verdict = bool(judge_verdict(reply.content or ""))
        return Score(reward=float(verdict), metrics={**offline.metrics, "judge": float(verdict)})
