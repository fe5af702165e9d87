"""Several typed inputs: each becomes a REPL variable of its own type, `context` is the dict of
them, the prompt describes each (type, size, preview), and none travels through a prompt."""

from __future__ import annotations

import io

import numpy
import pandas
import pytest
from PIL import Image

import rlm
from rlm.data import register_input_type
from rlm.testing import fenced
from tests.conftest import run_on


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_named_inputs_of_every_built_in_type_arrive_typed(scripted):
    frame = pandas.DataFrame({"user": ["ann", "bob", "cy"], "score": [3, 5, 8]})
    data = {
        "docs": ["first document", "second document"],
        "table": frame,
        "grid": numpy.arange(12, dtype=numpy.int32).reshape(3, 4),
        "photo": Image.new("RGB", (4, 3), (0, 255, 0)),
        "raw": png_bytes(),
        "note": "plain text",
        "meta": {"source": "test", "n": 3},
    }
    code = ("print(type(docs).__name__, len(docs), docs[1])\n"
            "print(type(table).__name__, table['score'].sum(), list(table.columns))\n"
            "print(grid.dtype, grid.shape, int(grid[2, 3]))\n"
            "print(type(photo).__name__, photo.size, photo.getpixel((0, 0)))\n"
            "print(type(raw).__name__, raw[:4])\n"
            "print(note, meta['n'], sorted(context))")
    server = scripted([fenced(code, "answer['ready'] = True")])
    result = await run_on(server, data)
    assert result.turns[0].output.splitlines()[:6] == [
        "list 2 second document",
        "DataFrame 16 ['user', 'score']",
        "int32 (3, 4) 11",
        "PngImageFile (4, 3) (0, 255, 0)",
        "bytes b'\\x89PNG'",
        "plain text 3 ['docs', 'grid', 'meta', 'note', 'photo', 'raw', 'table']",
    ]
    system = server.root_requests[0]["messages"][0]["content"]
    for described in ("`docs` is a `list` of 2 documents", "`table` is a pandas `DataFrame` of 3 rows × 2 columns",
                      "`grid` is a numpy `ndarray` of shape (3, 4), dtype int32", "`photo` is a PIL `Image` of 4×3",
                      "`raw` is `bytes` of", "(a PNG image)", "`note` is a `str` of 10 characters",
                      "`context` is the dict of them"):
        assert described in system, described
    assert all("second document" not in body.decode() for body in server.bodies[1:])  # only previewed


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def load_point(path):
    import json

    with open(path) as f:
        x, y = json.load(f)
    return complex(x, y)


async def test_a_registered_type_travels_with_its_own_loader(scripted):
    register_input_type(Point, lambda p: f"[{p.x}, {p.y}]".encode(), load_point,
                        lambda p: "a point in the plane")
    server = scripted([fenced("print(where, abs(where))", "answer['ready'] = True")])
    result = await run_on(server, {"where": Point(3, 4)})
    assert result.turns[0].output.splitlines()[0] == "(3+4j) 5.0"
    assert "`where` is a point in the plane." in server.root_requests[0]["messages"][0]["content"]


async def test_names_the_repl_owns_or_that_are_not_identifiers_keep_one_json_input(scripted):
    server = scripted([fenced("print(type(context).__name__, sorted(context))", "answer['ready'] = True")])
    result = await run_on(server, {"answer": 1, "two words": 2})
    assert result.turns[0].output.splitlines()[0] == "dict ['answer', 'two words']"


async def test_an_object_array_is_refused_before_anything_starts(scripted):
    with pytest.raises(rlm.ConfigError, match="pickle"):
        await run_on(scripted([]), {"bad": numpy.array([object()], dtype=object)})
