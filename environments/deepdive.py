"""DeepDive: multi-hop questions made by walking a knowledge graph, with entities obfuscated
into descriptions. `search` and `open` are tools of the sub-LLMs only.

Offline, a deterministic synthetic graph is rendered into a document corpus searched with BM25;
online, any `SearchBackend` (e.g. `HTTPSearch` to a search API configured by key) plugs in.
"""

from __future__ import annotations

import json
import math
import random
import re
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import rlm

from .base import Environment, Score, Task, last_boxed, normalize, read_records, strip_reasoning

_FIRST = ["Ada", "Bruno", "Celia", "Dario", "Elsa", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lior", "Mira", "Nils", "Oona", "Pavel", "Rosa", "Soren", "Tove", "Uma"]
_LAST = ["Arden", "Blythe", "Castell", "Dunmore", "Everly", "Fairweather", "Grell", "Holt", "Ivers", "Jansky", "Kell", "Lorne", "Marrow", "Nyberg", "Oakes"]
_CITY = ["Valmora", "Questa", "Dunhollow", "Brightwater", "Karsk", "Ostrel", "Pellham", "Tiravo", "Umberlin", "Wexford", "Yarrow", "Zelna"]
_COUNTRY = ["Ardania", "Belmark", "Corvia", "Dalmatra", "Estoria"]
_OCCUPATION = ["chemist", "architect", "violinist", "cartographer", "surgeon", "novelist", "engineer", "botanist"]
_INDUSTRY = ["shipbuilding", "textiles", "optics", "printing", "ceramics", "railways"]
_TOKEN = re.compile(r"[a-z0-9]+")


class SearchBackend(Protocol):
    """What `search` and `open` run against: a local corpus or a web search service."""

    def search(self, query: str, k: int = 5) -> list[dict[str, str]]: ...

    def open(self, doc_id: str) -> str: ...


class LocalSearch:
    """BM25 over an in-memory corpus of {"id", "title", "text"} documents."""

    def __init__(self, docs: list[dict[str, str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = {d["id"]: d for d in docs}
        self.terms = {d["id"]: Counter(_TOKEN.findall((d["title"] + " " + d["text"]).lower())) for d in docs}
        self.avg_len = sum(sum(t.values()) for t in self.terms.values()) / max(1, len(docs))
        frequency = Counter(term for terms in self.terms.values() for term in terms)
        self.idf = {t: math.log(1 + (len(docs) - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}
        self.k1, self.b = k1, b

    def search(self, query: str, k: int = 5) -> list[dict[str, str]]:
        words = _TOKEN.findall(query.lower())
        scores = []
        for doc_id, terms in self.terms.items():
            length = sum(terms.values())
            score = sum(
                self.idf.get(w, 0.0) * terms[w] * (self.k1 + 1)
                / (terms[w] + self.k1 * (1 - self.b + self.b * length / self.avg_len))
                for w in words if w in terms
            )
            if score > 0:
                scores.append((score, doc_id))
        scores.sort(key=lambda s: (-s[0], s[1]))
        return [{"id": d, "title": self.docs[d]["title"], "snippet": self.docs[d]["text"][:160]} for _, d in scores[:k]]

    def open(self, doc_id: str) -> str:
        doc = self.docs.get(doc_id)
        return f"{doc['title']}\n{doc['text']}" if doc else f"no document with id {doc_id!r}"


class HTTPSearch:
    """A web-search service behind a JSON API: POST {"query", "k"} to `url` returns a list of
    {"id", "title", "snippet"}; GET `open_url` + id returns the page text. The key goes in a
    bearer header. Point it at your provider (or a proxy that adapts one)."""

    def __init__(self, url: str, open_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.url, self.open_url, self.api_key, self.timeout = url, open_url, api_key, timeout

    def _request(self, request: urllib.request.Request) -> bytes:
        request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()

    def search(self, query: str, k: int = 5) -> list[dict[str, str]]:
        body = json.dumps({"query": query, "k": k}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        return json.loads(self._request(request))[:k]

    def open(self, doc_id: str) -> str:
        return self._request(urllib.request.Request(self.open_url + urllib.request.quote(doc_id))).decode()


def build_graph(rng: random.Random, people: int = 24) -> dict[str, list[dict[str, Any]]]:
    """A small world: cities in countries, universities in cities, people who studied somewhere
    and founded companies headquartered in cities."""
    cities = [{"id": f"city-{c.lower()}", "name": c, "country": rng.choice(_COUNTRY),
               "population": rng.randrange(20_000, 2_000_000, 1000)} for c in _CITY]
    universities = [{"id": f"uni-{i}", "name": f"University of {c['name']}", "city": c["name"],
                     "founded": rng.randint(1700, 1950)} for i, c in enumerate(rng.sample(cities, 8))]
    names = rng.sample([f"{first} {last}" for first in _FIRST for last in _LAST], people)
    persons, companies, used = [], [], set()
    for i, name in enumerate(names):
        suffixes = [s for s in ("Works", "Holdings", "Brothers", "Company", "Foundry", "Guild", "Trading")
                    if f"{name.split()[1]} {s}" not in used]
        company = f"{name.split()[1]} {rng.choice(suffixes)}"
        used.add(company)
        persons.append({"id": f"person-{i}", "name": name, "born": rng.randint(1820, 1960),
                        "occupation": rng.choice(_OCCUPATION), "birthplace": rng.choice(cities)["name"],
                        "studied": rng.choice(universities)["name"], "founded": company})
        companies.append({"id": f"company-{i}", "name": company, "industry": rng.choice(_INDUSTRY),
                          "headquarters": rng.choice(cities)["name"], "year": persons[-1]["born"] + rng.randint(20, 50)})
    return {"cities": cities, "universities": universities, "persons": persons, "companies": companies}


def render_corpus(graph: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    docs = []
    for c in graph["cities"]:
        docs.append({"id": c["id"], "title": c["name"],
                     "text": f"{c['name']} is a city in {c['country']} with a population of {c['population']:,}."})
    for u in graph["universities"]:
        docs.append({"id": u["id"], "title": u["name"],
                     "text": f"The {u['name']} was founded in {u['founded']} in the city of {u['city']}."})
    for p in graph["persons"]:
        docs.append({"id": p["id"], "title": p["name"], "text": (
            f"{p['name']} (born {p['born']} in {p['birthplace']}) was a {p['occupation']}. "
            f"{p['name'].split()[0]} studied at the {p['studied']} and later founded {p['founded']}.")})
    for c in graph["companies"]:
        docs.append({"id": c["id"], "title": c["name"], "text": (
            f"{c['name']} is a {c['industry']} firm established in {c['year']}, headquartered in {c['headquarters']}.")})
    return docs


def _questions(graph: dict[str, list[dict[str, Any]]], rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """(question, answer, hops) for every person whose obfuscated description is unique."""
    unis = {u["name"]: u for u in graph["universities"]}
    cities = {c["name"]: c for c in graph["cities"]}
    companies = {c["name"]: c for c in graph["companies"]}
    out = []
    for p in graph["persons"]:
        same = [q for q in graph["persons"] if q["occupation"] == p["occupation"] and q["studied"] == p["studied"]]
        if len(same) != 1:
            continue
        uni = unis[p["studied"]]
        uni_desc = f"the university founded in {uni['founded']} in a city of {cities[uni['city']]['country']}"
        company = companies[p["founded"]]
        if rng.random() < 0.5:
            question = (f"A {p['occupation']} studied at {uni_desc}. In which city is the headquarters of the "
                        f"company this person founded?")
            out.append((question, company["headquarters"], [uni["name"], p["name"], company["name"]]))
        else:
            question = (f"Which firm was founded by the {p['occupation']} who studied at {uni_desc}? "
                        f"Give the firm's name.")
            out.append((question, company["name"], [uni["name"], p["name"]]))
    # A university's description must be unique too, or the question has several answers.
    founded = Counter((u["founded"], cities[u["city"]]["country"]) for u in graph["universities"])
    return [q for q in out if founded[(unis[q[2][0]]["founded"], cities[unis[q[2][0]]["city"]]["country"])] == 1]


# DeepDive's own judge prompt and verdict line, from its reward server (THUDM/DeepDive,
# training/reward_server/launch_server.py): the judge answers "Correct: yes/no".
JUDGE_PROMPT = """You are judging a DeepDive deep-search agent answer.

Question:
{question}

Reference answer:
{answer}

Agent response:
{response}

Decide whether the response answers the question correctly. Be strict about
entity identity, dates, and numeric values, but accept equivalent wording.

Return exactly:
Correct: yes/no
Extracted final answer: <short answer>
Reason: <one sentence>
"""

_VERDICT_LINE = re.compile(r"\bcorrect\s*[:=]\s*(yes|no)\b", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^(yes|no|correct|incorrect)\b", re.IGNORECASE)
_ANSWER_LABEL = re.compile(r"(?:final answer|answer)\s*[:=]\s*(.+)", re.IGNORECASE)
_MARKDOWN = re.compile(r"[*_`#>]")


def judge_verdict(reply: str) -> bool | None:
    """The judge's verdict, None when it gave none. Reasoning blocks and markdown are dropped; the
    last "Correct: yes/no" line decides (DeepDive's format), else a reply opening with yes/no."""
    text = _MARKDOWN.sub("", strip_reasoning(reply))
    lines = _VERDICT_LINE.findall(text)
    if lines:
        return lines[-1].lower() == "yes"
    bare = _BARE_VERDICT.match(text.strip())
    return bare.group(1).lower() in ("yes", "correct") if bare else None


def final_answer(reply: str) -> str:
    """The answer a reply commits to: its last \\boxed{}, else what follows its last "Answer:"
    label, else the whole reply (after any reasoning block)."""
    reply = strip_reasoning(reply)
    boxed = last_boxed(reply)
    if boxed is not None:
        return boxed
    labelled = _ANSWER_LABEL.findall(_MARKDOWN.sub("", reply))
    return labelled[-1] if labelled else reply


class DeepDive(Environment):
    name = "deepdive"
    tips = (
        "Split the question into hops and resolve them one at a time. Send sub-LLMs focused research "
        "prompts (they have search and open tools); ask each for the entity name and the supporting "
        "document id. Cross-check facts across documents and keep them consistent before answering."
    )

    def __init__(self, judge: Any | None = None, backend: SearchBackend | None = None) -> None:
        """`judge`: an `rlm.ModelClient` that grades answers with DeepDive's judge prompt;
        None scores by normalized exact match of the committed answer.
        `backend`: search backend for loaded (online) tasks; generated tasks search their corpus."""
        self.judge = judge
        self.backend = backend
        self._corpora: dict[str, LocalSearch] = {}

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks: list[Task] = []
        world = 0
        while len(tasks) < n:
            rng = random.Random(f"deepdive-{seed}-{world}")
            graph = build_graph(rng)
            corpus = render_corpus(graph)
            for question, answer, hops in _questions(graph, rng):
                if len(tasks) == n:
                    break
                tasks.append(Task(id=f"deepdive-{seed}-{len(tasks)}", prompt=question + " Answer with the name only.",
                                  data=corpus, expected=answer,
                                  info={"hops": hops, "world": world, "question": question}))
            world += 1
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """zai-org/DeepDive rows: `question` and `answer` (an `id` when present). These need an
        online `backend` for search."""
        return [Task(id=str(row.get("id", i)), prompt=row["question"], expected=str(row["answer"]))
                for i, row in enumerate(read_records(path))]

    def _backend(self, task: Task) -> SearchBackend:
        if task.data is None:
            if self.backend is None:
                raise rlm.ConfigError("loaded DeepDive tasks need a search backend: DeepDive(backend=HTTPSearch(...))")
            return self.backend
        key = json.dumps(task.info.get("world")) + task.id.rsplit("-", 1)[0]
        if key not in self._corpora:
            self._corpora[key] = LocalSearch(task.data)
        return self._corpora[key]

    def sub_tools(self, task: Task) -> list[Callable[..., Any]]:
        backend = self._backend(task)

        def search(query: str) -> str:
            """Search the document collection; returns ids, titles and snippets of the best matches."""
            return json.dumps(backend.search(query))

        def open(doc_id: str) -> str:
            """Open a document by id and return its full text."""
            return backend.open(doc_id)

        return [search, open]

    def score(self, task: Task, answer: str) -> Score:
        """Without a judge: the committed answer must equal the gold after normalization. Merely
        containing it is not enough ("not Arden Works" contains "Arden Works")."""
        gold = normalize(str(task.expected))
        exact = float(bool(gold) and normalize(final_answer(answer)) == gold)
        return Score(reward=exact, metrics={"exact": exact})

    async def ascore(self, task: Task, answer: str) -> Score:
        exact = self.score(task, answer)
        if self.judge is None:
            return exact
        if not answer.strip():  # as DeepDive's reward server: no response, no judge call
            return Score(reward=0.0, metrics={**exact.metrics, "judge": 0.0, "judge_parsed": 1.0})
        reply = await self.judge.complete([{"role": "user", "content": JUDGE_PROMPT.format(
            question=task.info.get("question", task.prompt), answer=task.expected, response=answer)}])
        verdict = judge_verdict(reply.content)
        judged = float(bool(verdict))
        return Score(reward=judged, metrics={**exact.metrics, "judge": judged,
                                             "judge_parsed": float(verdict is not None)})
