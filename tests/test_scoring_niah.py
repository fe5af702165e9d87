"""niah reads RULER rows and scores as RULER scores them.

Row format: NVIDIA/RULER, scripts/data/synthetic/niah.py (`generate_samples` writes index, input,
outputs, length, length_w_model_temp, answer_prefix, token_position_answer; the task template and
answer prefix are in scripts/data/synthetic/constants.py, model templates in scripts/data/template.py).
Metric: scripts/eval/synthetic/constants.py, `string_match_all`, after `postprocess_pred` of
scripts/eval/evaluate.py. `call_api.py` sends `input + answer_prefix`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from environments import NeedleInAHaystack
from environments.niah import split_ruler_input, string_match_all

HAYSTACK = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
            "One of the special magic numbers for wandering-hop is: 4519763.\n"
            "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
            "One of the special magic numbers for wandering-hop is: 8830127.\n"
            "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.")
MULTI_QUESTION = "What are all the special magic numbers for wandering-hop mentioned in the provided text?"
MULTI_INPUT = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
               f"I will quiz you about the numbers afterwards.\n{HAYSTACK}\n{MULTI_QUESTION}")
SINGLE_HAYSTACK = "Paul Graham wrote essays. One of the special magic numbers for quiet-lake is: 2240961. More essay."
SINGLE_QUESTION = "What is the special magic number for quiet-lake mentioned in the provided text?"
SINGLE_INPUT = ("A special magic number is hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the number afterwards.\n{SINGLE_HAYSTACK}\n{SINGLE_QUESTION}")
LLAMA3 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}"
          "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

MULTI_PREFIX = " The special magic numbers for wandering-hop mentioned in the provided text are"
SINGLE_PREFIX = " The special magic number for quiet-lake mentioned in the provided text is"

ROWS = [  # index is the needle's character offset in the current generator: two rows share 171
    {"index": 171, "input": MULTI_INPUT, "outputs": ["4519763", "8830127"], "length": 4096,
     "length_w_model_temp": 4096, "answer_prefix": MULTI_PREFIX,
     "token_position_answer": 40},
    {"index": 171, "input": LLAMA3.format(SINGLE_INPUT), "outputs": ["2240961"], "length": 4096,
     "length_w_model_temp": 4121, "answer_prefix": SINGLE_PREFIX,
     "token_position_answer": 45},
    {"index": 3, "input": " ".join(SINGLE_INPUT.split()), "outputs": ["2240961"], "length": 4096,
     "length_w_model_temp": 4096, "answer_prefix": SINGLE_PREFIX,
     "token_position_answer": 45},  # --remove_newline_tab
]


def ruler_string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """RULER's metric, written out to compare against: percent, rounded to 2 places."""
    return round(sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs, strict=True))
                 / len(preds) * 100, 2)


@pytest.mark.parametrize(("prediction", "references", "score"), [
    (" 8830127 and 4519763.", ["4519763", "8830127"], 1.0),  # any order
    ("The special magic numbers are 4519763.", ["4519763", "8830127"], 0.5),  # partial credit
    ("none", ["4519763", "8830127"], 0.0),
    ("QUIET-LAKE-BLUE", ["quiet-lake"], 1.0),  # case-insensitive substring
    ("45197630", ["4519763"], 1.0),  # a substring counts, as in RULER
    ("a, b, c", ["a", "b", "d"], 2 / 3),
])
def test_string_match_all_is_rulers(prediction, references, score):
    assert string_match_all(prediction, references) == pytest.approx(score)
    ruler = ruler_string_match_all([prediction], [references])
    assert round(string_match_all(prediction, references) * 100, 2) == ruler


def load(tmp_path: Path, rows: list[dict]):
    path = tmp_path / "niah_multivalue.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return NeedleInAHaystack().load(path)


def test_rlm_mode_gets_the_question_as_prompt_and_the_bare_haystack_as_data(tmp_path):
    multi, llama, flat = load(tmp_path, ROWS)
    assert (multi.prompt, multi.data) == (MULTI_QUESTION, HAYSTACK)
    assert (llama.prompt, llama.data) == (SINGLE_QUESTION, SINGLE_HAYSTACK)
    assert (flat.prompt, flat.data) == (SINGLE_QUESTION, SINGLE_HAYSTACK)
    assert multi.expected == ["4519763", "8830127"]


def test_llm_mode_sends_the_row_as_ruler_does(tmp_path):
    env, tasks = NeedleInAHaystack(), load(tmp_path, ROWS)
    assert [env.llm_prompt(t) for t in tasks] == [row["input"] + row["answer_prefix"] for row in ROWS]


def test_ids_are_unique_although_ruler_index_is_not(tmp_path):
    tasks = load(tmp_path, ROWS)
    assert [t.id for t in tasks] == ["0", "1", "2"]
    assert [t.info["index"] for t in tasks] == [171, 171, 3]


def test_loaded_rows_score_with_partial_credit(tmp_path):
    env, (multi, llama, _) = NeedleInAHaystack(), load(tmp_path, ROWS)
    assert env.score(multi, "8830127, 4519763").reward == 1.0
    partial = env.score(multi, "The special magic numbers for wandering-hop are: 4519763")
    assert partial.reward == 0.5 and partial.metrics == {"recall": 0.5, "all_found": 0.0}
    assert env.score(llama, "2240961").reward == 1.0


def test_rows_with_a_separate_question_are_read_as_they_are(tmp_path):
    row = {"context": SINGLE_HAYSTACK, "question": "Which number belongs to quiet-lake?", "answer": "2240961"}
    task, = load(tmp_path, [row])
    assert (task.prompt, task.data, task.expected) == (row["question"], SINGLE_HAYSTACK, ["2240961"])
    assert NeedleInAHaystack().llm_prompt(task).endswith(row["question"])


def test_split_falls_back_to_the_last_line_and_refuses_text_without_a_question():
    assert split_ruler_input("line one\nline two\nWhich value?") == ("line one\nline two", "Which value?")
    with pytest.raises(ValueError, match="no question"):
        split_ruler_input("one single line")


def test_bad_rows_are_refused_with_their_row_number(tmp_path):
    with pytest.raises(ValueError, match="row 1.*outputs"):
        load(tmp_path, [ROWS[0], {"input": MULTI_INPUT}])
    with pytest.raises(ValueError, match="row 0.*no question"):
        load(tmp_path, [{"input": "flat text without any question", "outputs": ["1"]}])
