"""verbatim_copy scores and generates as the reference environment does.

Reference: PrimeIntellect-ai/research-environments, environments/verbatim_copy_rlm/verbatim_copy_rlm/
verbatim_copy_rlm.py (`exact_match` and `levenshtein_similarity` on `extract_boxed_answer` of the
final answer) and data_generation.py (content shapes, fragment sizes uniform in [0.5m, 1.5m] sliced
from one over-produced text, exact per-type counts for `all`). Its samples carry text, content_type,
target_length, mean_fragment_length and id.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from environments import Task, VerbatimCopy
from environments.verbatim_copy import content_plan, fragments, raw_text

TEXT = "id,product,price,quantity,date\n4821,Marble Lantern,12.50,3,2019-04-02\nA7XK-9M2Q-P4LH"
TASK = Task(id="v", prompt="?", expected=TEXT)


@pytest.mark.parametrize(("answer", "reward", "similarity"), [
    (TEXT, 1.0, 1.0),
    (f"\\boxed{{{TEXT}}}", 1.0, 1.0),  # unwrapped, as extract_boxed_answer does
    (f"Here is the copy:\n\\boxed{{{TEXT}}}", 1.0, 1.0),
    (f"\\boxed{{{TEXT[:-1]}}}", 0.0, 1 - 1 / len(TEXT)),
    (TEXT + "\n", 0.0, 1 - 1 / (len(TEXT) + 1)),  # exact means exact
])
def test_scores_follow_the_reference(answer, reward, similarity):
    score = VerbatimCopy().score(TASK, answer)
    assert score.reward == reward and score.metrics["similarity"] == pytest.approx(similarity)


def test_a_box_around_unbalanced_braces_is_not_unwrapped_as_in_the_reference():
    # extract_boxed_answer counts braces: a JSON slice cut mid-record never closes its box, so the
    # reference compares the whole reply, and so do we. Unboxed, the same copy scores.
    task = Task(id="v", prompt="?", expected='[\n  {\n    "id": 48213,')
    assert VerbatimCopy().score(task, f"\\boxed{{{task.expected}}}").reward == 0.0
    assert VerbatimCopy().score(task, task.expected).reward == 1.0


def test_an_exact_copy_of_a_text_holding_a_box_is_not_unwrapped():
    task = Task(id="v", prompt="?", expected=r"x = \boxed{42} done")
    assert VerbatimCopy().score(task, r"x = \boxed{42} done").reward == 1.0


def test_reference_sample_rows_load(tmp_path):
    rows = [{"text": "Y4H2-NPZS-CSFV\n867f02db-e5b1-e978-f733-b2e980a71f0d", "content_type": "codes",
             "target_length": 50, "mean_fragment_length": None, "id": 0},
            {"answer": "id,product,price,quantity,date\n9607,Quantity Harvest,261.10,99,2012-07-17"}]
    path = tmp_path / "verbatim.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    codes, csv = VerbatimCopy().load(path)
    assert (codes.id, codes.expected, codes.info["content_type"]) == ("0", rows[0]["text"], "codes")
    assert csv.expected == rows[1]["answer"] and f"<text>{csv.expected}</text>" in csv.prompt


def test_content_shapes():
    def text(kind: str) -> str:
        return VerbatimCopy(content_type=kind, target_length=2000).generate(1, seed=3)[0].expected

    assert text("json").startswith('[\n  {\n    "id": ')  # pretty-printed records
    assert {"name", "email", "phone", "address", "city", "country"} <= set(re.findall(r'"(\w+)": ', text("json")))
    csv = text("csv").splitlines()
    assert csv[0] == "id,product,price,quantity,date"
    assert all(re.fullmatch(r"\d{4},[A-Z][a-z]+ [A-Z][a-z]+,\d+\.\d\d,\d+,\d{4}-\d\d-\d\d", row) for row in csv[1:6])
    codes = text("codes").splitlines()[:-1]  # the last line may be cut at the target length
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    dashed = r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}"
    assert all(re.fullmatch(uuid, c) or re.fullmatch(dashed, c) for c in codes)
    assert {bool(re.fullmatch(uuid, c)) for c in codes} == {True, False}  # both kinds, one a line
    assert len(text("words").split()) > 100 and all(w.isalpha() for w in text("words").split()[:-1])


def test_fragments_are_sized_uniformly_and_sliced_from_one_text():
    rng = random.Random(0)
    raw = raw_text(rng, "mixed", 3000)
    pieces = fragments(rng, raw, 3000, 40)
    assert sum(map(len, pieces)) == 3000 and all(piece in raw for piece in pieces)
    assert all(20 <= len(piece) <= 60 for piece in pieces[:-1]) and 1 <= len(pieces[-1]) <= 60
    assert min(map(len, pieces[:-1])) < 25 and max(map(len, pieces[:-1])) > 55  # spread over the range


def test_fragmented_tasks_have_the_target_length_and_no_fragmentation_past_it():
    fragmented = VerbatimCopy(content_type="json", target_length=800, mean_fragment_length=15).generate(1)[0]
    assert len(fragmented.expected) == 800
    whole = VerbatimCopy(content_type="json", target_length=100, mean_fragment_length=150).generate(1)[0]
    assert whole.expected.startswith('[\n  {\n    "id": ') and len(whole.expected) == 100
    with pytest.raises(ValueError, match="positive"):
        VerbatimCopy(mean_fragment_length=0)


@pytest.mark.parametrize(("n", "floors"), [
    (20, {"words": 4, "json": 4, "csv": 4, "codes": 5, "mixed": 3}),
    (7, {"words": 1, "json": 1, "csv": 1, "codes": 1, "mixed": 1}),
])
def test_all_mixes_exact_counts(n, floors):
    kinds = content_plan(n, random.Random(1))
    assert len(kinds) == n and all(kinds.count(kind) >= floor for kind, floor in floors.items())
    if sum(floors.values()) == n:
        assert {kind: kinds.count(kind) for kind in floors} == floors
    generated = [t.info["content_type"] for t in VerbatimCopy().generate(20, seed=5)]
    assert {kind: generated.count(kind) for kind in floors} == {"words": 4, "json": 4, "csv": 4, "codes": 5, "mixed": 3}
