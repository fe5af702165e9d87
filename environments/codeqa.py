"""CodeQA: LongBench-v2's multiple-choice questions over a code repository (the RLM paper's
CodeQA split), scored as LongBench-v2 scores them: the extracted letter equals the answer."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import rlm

from .base import DataFormatError, Environment, Score, Task, read_records

#: The LongBench-v2 `domain` of its code-repository questions.
CODE_DOMAIN = "Code Repository Understanding"
LETTERS = "ABCD"

_VERBS = "load parse render merge fetch store scan build flush index encode decode route sync prune score".split()
_NOUNS = "ledger signal cache token frame packet record schema buffer cursor batch queue report vector".split()
_MODULES = "core io net store util cli auth sched codec metrics config events jobs search views".split()
_PARAMS = "timeout retries limit depth window offset chunk stride".split()


def question_prompt(question: str, choices: list[str]) -> str:
    """LongBench-v2's zero-shot question block and answer format (THUDM/LongBench prompts/0shot.txt),
    with the repository in `context` instead of inline."""
    options = "\n".join(f"({letter}) {choice.strip()}" for letter, choice in zip(LETTERS, choices, strict=False))
    return (f"The code repository is in `context`.\n\nWhat is the correct answer to this question: {question.strip()}\n"
            f"Choices:\n{options}\n\nFormat your response as follows: \"The correct answer is (insert answer here)\".")


def extract_choice(response: str) -> str | None:
    """LongBench-v2's answer extraction (THUDM/LongBench pred.py `extract_answer`): markdown stars
    dropped, then "The correct answer is (X)" or "The correct answer is X" for X in A-D."""
    response = response.replace("*", "")
    match = re.search(r"The correct answer is \(([A-D])\)", response) or re.search(
        r"The correct answer is ([A-D])", response)
    return match.group(1) if match else None


def _repository(rng: random.Random, files: int) -> dict[str, dict[str, Any]]:
    """Modules of functions with one numeric default parameter each, calling functions defined
    before them (anywhere in the repository)."""
    names = rng.sample([f"{verb}_{noun}" for verb in _VERBS for noun in _NOUNS], files * 4)
    modules = [f"{rng.choice(['pkg', 'lib', 'app'])}/{m}.py" for m in rng.sample(_MODULES, min(files, len(_MODULES)))]
    modules += [f"pkg/ext/mod_{i}.py" for i in range(files - len(modules))]
    repo: dict[str, dict[str, Any]] = {}
    defined: list[str] = []
    for path in modules:
        functions = []
        for _ in range(rng.randint(2, 4)):
            name = names.pop()
            calls = rng.sample(defined, min(len(defined), rng.randint(0, 2)))
            functions.append({"name": name, "param": rng.choice(_PARAMS), "default": rng.randint(2, 99), "calls": calls})
            defined.append(name)
        repo[path] = {"functions": functions}
    return repo


def _source(path: str, module: dict[str, Any], where: dict[str, str]) -> str:
    imports = sorted({(where[c], c) for f in module["functions"] for c in f["calls"] if where[c] != path})
    lines = [f'"""{path}: generated module."""', ""]
    lines += [f"from {p[:-3].replace('/', '.')} import {name}" for p, name in imports]
    for f in module["functions"]:
        body = [f"    value = {f['param']}"] + [f"    value += {c}()" for c in f["calls"]] + ["    return value"]
        lines += ["", "", f"def {f['name']}({f['param']}={f['default']}):", *body]
    return "\n".join(lines) + "\n"


def render_repository(repo: dict[str, dict[str, Any]]) -> str:
    """All files concatenated, each under a `# File: path` line, as a repository is given in one text."""
    where = {f["name"]: path for path, module in repo.items() for f in module["functions"]}
    return "\n".join(f"# File: {path}\n{_source(path, module, where)}" for path, module in repo.items())


def _question(rng: random.Random, repo: dict[str, dict[str, Any]]) -> tuple[str, str, list[str]]:
    """(question, right choice, three wrong choices) about one function of the repository."""
    functions = [(path, f) for path, module in repo.items() for f in module["functions"]]
    callers: dict[str, int] = {}
    for _, f in functions:
        for called in f["calls"]:
            callers[called] = callers.get(called, 0) + 1
    path, f = rng.choice([pf for pf in functions if pf[1]["calls"]] or functions)
    kind = rng.choice(["module", "default", "calls", "callers"]) if f["calls"] else rng.choice(["module", "default"])
    if kind == "module":
        others = rng.sample([p for p in repo if p != path], 3)
        return f"Which file defines the function `{f['name']}`?", path, others
    if kind == "default":
        wrong = rng.sample([v for v in range(2, 100) if v != f["default"]], 3)
        return (f"What is the default value of the parameter `{f['param']}` of `{f['name']}`?", str(f["default"]),
                [str(v) for v in wrong])
    if kind == "calls":
        right = rng.choice(f["calls"])
        wrong = rng.sample([g["name"] for _, g in functions if g["name"] not in f["calls"] and g is not f], 3)
        return f"Which of these functions does `{f['name']}` call directly?", right, wrong
    target = rng.choice(f["calls"])
    count = callers[target]
    wrong = rng.sample([v for v in range(count + 6) if v != count], 3)
    return (f"How many functions in the repository call `{target}` directly?", str(count), [str(v) for v in wrong])


class CodeQA(Environment):
    """Offline: a seeded synthetic Python repository of `files` modules and one four-choice question
    about it; `load` reads LongBench-v2 rows (by default its code-repository domain only)."""

    name = "codeqa"
    tips = (
        "The repository is one string in `context` with a '# File: path' line before each file. Split it into "
        "files with code, search it with re or ast for the names in the question, and check each choice in code "
        "before answering. For questions about behaviour, send the relevant files (not the whole repository) "
        "to sub-LLMs. End with exactly: The correct answer is (X)."
    )

    def __init__(self, files: int = 12, domain: str | None = CODE_DOMAIN) -> None:
        """`domain`: the LongBench-v2 domain `load` keeps; None keeps every row."""
        if files < 4:
            raise rlm.ConfigError(f"codeqa needs at least 4 files for its choices, got files={files}")
        self.files = files
        self.domain = domain

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        tasks = []
        for index in range(n):
            rng = random.Random(f"codeqa-{seed}-{index}")
            repo = _repository(rng, self.files)
            question, right, wrong = _question(rng, repo)
            choices = [right, *wrong]
            rng.shuffle(choices)
            letter = LETTERS[choices.index(right)]
            tasks.append(Task(id=f"codeqa-{seed}-{index}", prompt=question_prompt(question, choices),
                              data=render_repository(repo), expected=letter,
                              info={"question": question, "choices": choices, "source": "generated"}))
        return tasks

    def load(self, path: str | Path) -> list[Task]:
        """LongBench-v2 rows (THUDM/LongBench README "Data Format": `_id`, `domain`, `sub_domain`,
        `difficulty`, `length`, `question`, `choice_A`..`choice_D`, `answer`, `context`)."""
        tasks = []
        for row in read_records(path):
            if self.domain is not None and row.get("domain") != self.domain:
                continue
            if row.get("answer") not in tuple(LETTERS):
                raise DataFormatError(f"LongBench-v2 row {row.get('_id')!r}: answer must be one of A-D, got {row.get('answer')!r}")
            choices = [row[f"choice_{letter}"] for letter in LETTERS]
            tasks.append(Task(id=str(row["_id"]), prompt=question_prompt(row["question"], choices), data=row["context"],
                              expected=row["answer"],
                              info={key: row.get(key, "") for key in ("domain", "sub_domain", "difficulty", "length")}
                              | {"source": "longbench-v2"}))
        return tasks

    def score(self, task: Task, answer: str) -> Score:
        choice = extract_choice(answer)
        return Score(reward=float(choice == task.expected), metrics={"answered": float(choice is not None)})
