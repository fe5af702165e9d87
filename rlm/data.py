"""How a run's data reaches the kernel, never passing through a prompt: each input is a file
delivered read-only (or a read-only mount), loaded in the kernel by its type's loader, and
described to the model by type, size and a short preview.

`data` is one input (`context`), or a dict of named inputs: `{"docs": [...], "table": df}`
gives the REPL `docs` and `table`, and `context` is the dict of them. Types: str, bytes, paths,
JSON values, lists of documents, pandas DataFrames (Parquet), numpy arrays (.npy), PIL images
(PNG), and any type registered with `register_input_type`.
"""

from __future__ import annotations

import inspect
import io
import json
import keyword
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import Sandbox

from .config import RESERVED_NAMES
from .errors import ConfigError

_WRITE_CHUNK = 1 << 24
#: A dict of more keys than this is one JSON input, not that many files and variables.
MAX_NAMED = 32
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"RIFF": "WEBP"}


@dataclass(frozen=True)
class InputType:
    """How one type of input travels. `serialize` turns a value into bytes on the host; `load`
    names the kernel's loader (a built-in kind of `rlm.runtime.load_context`, or a function whose
    source is sent to the kernel); `describe` says what the value is, for the prompt."""

    name: str
    matches: Callable[[Any], bool]
    serialize: Callable[[Any], Iterable[bytes]]
    load: str | Callable[[str], Any]
    describe: Callable[[Any], str]
    suffix: str = ".bin"


def _text_chunks(text: str) -> Iterable[bytes]:
    """Encoded a slice at a time: bounded extra memory for huge text."""
    return (text[i : i + _WRITE_CHUNK].encode("utf-8") for i in range(0, len(text), _WRITE_CHUNK))


def _image_format(data: bytes) -> str | None:
    return next((name for magic, name in _IMAGE_MAGIC.items() if data.startswith(magic)), None)


def _is_documents(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)


def _is_dataframe(value: Any) -> bool:
    return type(value).__module__.startswith("pandas") and type(value).__name__ == "DataFrame"


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "save") and hasattr(value, "size")


def _parquet(frame: Any) -> Iterable[bytes]:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return [buffer.getvalue()]


def _npy(array: Any) -> Iterable[bytes]:
    import numpy

    buffer = io.BytesIO()
    numpy.save(buffer, array, allow_pickle=False)
    return [buffer.getvalue()]


def _png(image: Any) -> Iterable[bytes]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return [buffer.getvalue()]


def _json_chunks(value: Any) -> Iterable[bytes]:
    try:
        return [json.dumps(value).encode("utf-8")]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data must be str, bytes, a path, a DataFrame, a numpy array, an image, "
                          f"JSON-serializable, or a registered type: {exc}") from exc


def _describe_bytes(data: bytes) -> str:
    kind = _image_format(data)
    return f"`bytes` of {len(data):,} bytes" + (f" (a {kind} image)" if kind else "")


_TYPES: list[InputType] = [
    InputType("text", lambda v: isinstance(v, str), _text_chunks, "text", lambda v: f"a `str` of {len(v):,} characters",
              ".txt"),
    InputType("bytes", lambda v: isinstance(v, (bytes, bytearray, memoryview)), lambda v: [bytes(v)], "bytes",
              lambda v: _describe_bytes(bytes(v))),
    InputType("documents", _is_documents, _json_chunks, "json",
              lambda v: f"a `list` of {len(v):,} documents (`str`), {sum(map(len, v)):,} characters in all", ".json"),
    InputType("dataframe", _is_dataframe, _parquet, "parquet",
              lambda v: f"a pandas `DataFrame` of {v.shape[0]:,} rows × {v.shape[1]:,} columns "
                        f"({', '.join(map(str, list(v.columns)[:20]))})", ".parquet"),
    InputType("array", _is_array, _npy, "npy", lambda v: f"a numpy `ndarray` of shape {v.shape}, dtype {v.dtype}",
              ".npy"),
    InputType("image", _is_image, _png, "image",
              lambda v: f"a PIL `Image` of {v.size[0]}×{v.size[1]} pixels, mode {v.mode}", ".png"),
]


def register_input_type(matches: type | Callable[[Any], bool], serialize: Callable[[Any], bytes | Iterable[bytes]],
                        load: Callable[[str], Any], describe: Callable[[Any], str], *, name: str | None = None) -> None:
    """Teach rlm a new input type. `load(path)` runs in the kernel (its source is sent there,
    so it must import what it needs inside); the others run on the host. Later registrations win."""
    test = (lambda v: isinstance(v, matches)) if isinstance(matches, type) else matches
    inspect.getsource(load)  # fails now, not in the kernel, when the source is not available

    def chunks(value: Any) -> Iterable[bytes]:
        out = serialize(value)
        return [out] if isinstance(out, bytes) else out

    label = name or (matches.__name__ if isinstance(matches, type) else load.__name__)
    _TYPES.insert(0, InputType(label, test, chunks, load, describe))


def _type_of(value: Any) -> InputType | None:
    return next((kind for kind in _TYPES if kind.matches(value)), None)


class Input:
    """One input: its name in the REPL (None: it is `context` itself), its type, and how it
    reaches the kernel."""

    def __init__(self, name: str | None, value: Any) -> None:
        self.name = name
        self.value = value
        self.mount: Path | None = None
        self._where: str | None = None
        if isinstance(value, os.PathLike):
            self.mount = Path(value).resolve()
            if not self.mount.exists():
                raise ConfigError(f"data path {self.mount} does not exist")
            self.type: InputType | None = None
            return
        self.type = _type_of(value)
        if _is_array(value) and value.dtype.hasobject:
            raise ConfigError(f"data {name or 'context'}: numpy arrays of Python objects cannot travel as .npy "
                              "without pickle: convert them")
        if self.type is None:  # JSON, the fallback: fail now when it cannot be
            self._json = b"".join(_json_chunks(value))
            self.type = InputType("json", lambda v: True, lambda v: [self._json], "json",
                                  lambda v: f"a `{type(v).__name__}` loaded from {len(self._json):,} bytes of JSON",
                                  ".json")

    @property
    def kind(self) -> str:
        if self.mount is not None:
            return "path" if self.mount.is_dir() else "text"
        assert self.type is not None
        return self.type.name

    def load_code(self, sandbox: Sandbox, runtime_ref: str, load_function: str) -> str:
        """Kernel code whose value is this input; delivers it on the first call. The file goes
        into a delivery only the host writes, so a kernel restored after a crash reads the same
        file again and nothing it planted can redirect the write."""
        if self.mount is not None:
            return f"{runtime_ref}.{load_function}({str(self.mount)!r}, {self.kind!r})"
        assert self.type is not None
        if self._where is None:
            self._where = sandbox.delivery().write(f"{self.name or 'context'}{self.type.suffix}",
                                                   self.type.serialize(self.value))
        if isinstance(self.type.load, str):
            return f"{runtime_ref}.{load_function}({self._where!r}, {self.type.load!r})"
        source = inspect.getsource(self.type.load)
        return f"{runtime_ref}.load_with({source!r}, {self.type.load.__name__!r}, {self._where!r})"

    def describe(self, preview_chars: int) -> str:
        """Type, size and a short preview: never the data itself."""
        label = f"`{self.name}`" if self.name else "`context`"
        if self.mount is not None:
            what = "a `pathlib.Path` to a read-only directory" if self.mount.is_dir() else (
                f"a `str` read from a file of {self.mount.stat().st_size:,} bytes")
            text = f"{label} is {what}."
            if self.kind == "text" and preview_chars:
                with open(self.mount, encoding="utf-8", errors="replace") as f:
                    text += _preview(f.read(min(preview_chars, 4096)), preview_chars)
            return text
        assert self.type is not None
        text = f"{label} is {self.type.describe(self.value)}."
        value = self.value
        if isinstance(value, (list, dict)) and self.type.name == "json":
            text += f" It has {len(value):,} top-level {'items' if isinstance(value, list) else 'keys'}."
        if preview_chars:  # JSON was serialized once already, to check it can be: its head is the sample
            sample = (self._json[:4096].decode("utf-8", "replace") if self.type.name == "json"
                      else _sample(value, self.type.name))
            if sample is not None:
                text += _preview(sample, preview_chars)
        return text


def _sample(value: Any, kind: str) -> str | None:
    if kind == "text":
        return str(value)
    if kind == "bytes":
        return None if _image_format(bytes(value)) else str(bytes(value[:4096]))
    if kind == "documents":
        return json.dumps(value[:3])[:4096]
    if kind == "dataframe":
        return str(value.head(5).to_string())
    if kind == "array":
        return str(value[:5])
    return None


def _preview(sample: str, limit: int) -> str:
    shown = sample[:limit]
    return f" Its first {len(shown):,} characters:\n```\n{shown}\n```"


class DataFile:
    """All of a run's inputs: one (`context`), or several named ones."""

    def __init__(self, data: Any) -> None:
        self.inputs: list[Input] = []
        if data is None:
            return
        if isinstance(data, dict) and 0 < len(data) <= MAX_NAMED and all(_input_name(key) for key in data):
            self.inputs = [Input(key, value) for key, value in data.items()]
        else:
            self.inputs = [Input(None, data)]

    @property
    def mounts(self) -> list[Path]:
        return [item.mount for item in self.inputs if item.mount is not None]

    @property
    def named(self) -> bool:
        return bool(self.inputs) and self.inputs[0].name is not None

    def load_code(self, sandbox: Sandbox, runtime_ref: str, load_function: str) -> str:
        """Kernel code that defines `context` (and each named input)."""
        if not self.inputs:
            return "context = None\n"
        if not self.named:
            return f"context = {self.inputs[0].load_code(sandbox, runtime_ref, load_function)}\n"
        lines = [f"{item.name} = {item.load_code(sandbox, runtime_ref, load_function)}" for item in self.inputs]
        names = ", ".join(f"{item.name!r}: {item.name}" for item in self.inputs)
        return "\n".join([*lines, f"context = {{{names}}}"]) + "\n"

    def describe(self, preview_chars: int) -> str:
        if not self.inputs:
            return "No input data was given: `context` is None."
        if not self.named:
            return self.inputs[0].describe(preview_chars)
        names = ", ".join(f"`{item.name}`" for item in self.inputs)
        head = f"There are {len(self.inputs)} inputs, each a REPL variable: {names}; `context` is the dict of them."
        return "\n\n".join([head, *(f"- {item.describe(preview_chars)}" for item in self.inputs)])


def _input_name(key: Any) -> bool:
    return (isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key) and key not in RESERVED_NAMES
            and not key.startswith("_"))
