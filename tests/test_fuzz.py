"""Property-based fuzz of the two channels hostile kernel code writes to: RPC requests (stdin
prompts starting with `RPC_PREFIX`) and the answer state (the `_rlm_state()` user expression).

Random, malformed, huge and non-UTF-8 requests must get typed errors; hostile answer states must
become events and notes; the run continues or ends with a recorded error; the controller never
raises. Kernels are expensive, so each hypothesis test keeps ONE sandbox (or one run) alive on an
event loop of its own and feeds every example through it as one cell (or one root turn).

Every expectation is computed on the host from the example alone (an oracle), never read back
from the code under test. The regression tests at the end pin the bugs this fuzz found.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import json
import os
import queue
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Hypothesis keeps caches (unicode tables, constants) in ./.hypothesis unless told otherwise: keep
# them out of the work tree, in a directory removed after this module.
_HYPOTHESIS_HOME = None
if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
    _HYPOTHESIS_HOME = os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = tempfile.mkdtemp(prefix="fuzz-hypothesis-")

from hypothesis import HealthCheck, assume, event, example, given, note, settings
from hypothesis import strategies as st

from rlm import prompts
from rlm.broker import Broker
from rlm.config import RLMConfig
from rlm.controller import Controller
from rlm.conversation import Conversation
from rlm.models import ModelClient
from rlm.state import RunState
from rlm.testing import ScriptedServer, fenced
from rlm.trajectory import Result, Turn
from sandbox import KernelLimits, Reply, SandboxProtocolError, create_sandbox, valid_text
from sandbox.rpc import PREFIX as RPC_PREFIX
from tests.conftest import ISOLATING, made_by, run_on
from tests.controller_process import run_controller

MAX_BATCH = 16  # max_batch_prompts of the fuzzed broker: a "huge prompt list" is cheap to make
MAX_PROMPT = 2000  # max_prompt_chars
ANSWER_LIMIT = 1000  # max_answer_chars of the fuzzed runs
MAX_TURNS = 40  # turns per fuzzed run before the harness starts a fresh one
CHANNEL_LIMIT = KernelLimits().message_bytes
#: Nesting depths where json's recursion limit may or may not trip depending on the caller's stack
#: depth; the fuzz keeps out of this band (test_deep_nesting_at_the_parsers_edge walks it).
NEST = st.one_of(st.integers(0, 850), st.integers(1150, 150_000))

FUZZ = settings(
    deadline=None,
    database=None,  # no example database: failures are kept as explicit tests instead
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def processes_of_ours() -> list[int]:
    """Live processes whose command line names a sandbox directory of this test process (other
    test sessions may run sandboxes of their own meanwhile)."""
    mine = f"/rlm-{os.getpid()}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mine in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module", autouse=True)
def nothing_of_ours_left_behind():
    yield
    if _HYPOTHESIS_HOME is not None:
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    left = {p.name for p in tmp.glob(f"rlm-{os.getpid()}-*")}
    assert left == set(), f"sandbox directories left behind, made by {made_by(left)}"
    assert processes_of_ours() == [], "kernels left behind"


# --------------------------------------------------------------------------------------------
# Plumbing: an event loop in a thread, so synchronous hypothesis tests keep one kernel alive.


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fuzz-loop")
        self._thread.start()

    def spawn(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any, timeout: float = 120) -> Any:
        future = self.spawn(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"hung: no answer within {timeout:g}s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def loop_thread():
    thread = LoopThread()
    yield thread
    thread.close()


def fresh_stack(fn: Any, *args: Any) -> Any:
    """`fn(*args)` on a thread of its own: the oracle parses JSON nested as deep as the host's
    loop thread can, whatever depth pytest and hypothesis run this test at."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn(*args)))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


# --------------------------------------------------------------------------------------------
# Text that breaks things: control characters, NUL, lone surrogates, surrogateescape'd bytes.

ODD_CHARS = ["\x00", "\x01", "\x1b", "\x7f", "\r", "\n", "\t", '"', "\\", "'", "\u2028", "\ufeff",
             "\ufffd", "\U0001f600", "\xe9", "\x85"]
any_but_surrogates = st.characters(exclude_categories=["Cs"])
clean_chars = st.one_of(any_but_surrogates, st.sampled_from(ODD_CHARS))
nasty_chars = st.one_of(
    any_but_surrogates,
    any_but_surrogates,  # twice: as likely as all the odd ones together
    st.sampled_from(ODD_CHARS),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates: not encodable as UTF-8
    st.integers(0xDC80, 0xDCFF).map(chr),  # bytes 0x80-0xff as surrogateescape decodes them
)


def nasty_text(max_size: int = 30, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(nasty_chars, min_size=min_size, max_size=max_size).map("".join)


def clean_text(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.lists(clean_chars, max_size=max_size).map("".join)


def utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10**60), 10**60),
                        st.floats(), nasty_text(20))
json_keys = st.one_of(st.sampled_from(["method", "prompts", "packages", "ok", "error", "result",
                                       "content", "length", "ready", "invalid", ""]), nasty_text(8))
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def json_texts(draw: Any, values: st.SearchStrategy[Any] = json_values) -> str:
    """JSON of a value, sometimes damaged: cut short, trailing junk, or one character swapped."""
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
    damage = draw(st.sampled_from(["none"] * 4 + ["truncate", "append", "swap"]))
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "append":
        text += draw(nasty_text(5, min_size=1))
    elif damage == "swap" and text:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(nasty_chars) + text[at + 1 :]
    return text


@dataclass(frozen=True)
class Text:
    """A string built in the kernel by `expr` (ASCII source; big strings by repetition, so the
    cell stays small) whose value, as the kernel holds it, is `value`."""

    expr: str
    value: str

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        cut = "..." if len(self.expr) > 300 else ""
        return f"Text({self.expr[:300]}{cut}, {len(self.value):,} chars)"


def literal(text: str) -> Text:
    return Text(ascii(text), text)


def repeated(*parts: tuple[str, int]) -> Text:
    return Text(" + ".join(f"{piece!a} * {count}" for piece, count in parts),
                "".join(piece * count for piece, count in parts))


def from_bytes(raw: bytes, errors: str) -> Text:
    """Bytes that need not be UTF-8, decoded in the kernel ('latin-1', or UTF-8 with surrogateescape)."""
    call = "decode('latin-1')" if errors == "latin-1" else "decode('utf-8', 'surrogateescape')"
    value = raw.decode("latin-1") if errors == "latin-1" else raw.decode("utf-8", "surrogateescape")
    return Text(f"bytes.fromhex({raw.hex()!r}).{call}", value)


# --------------------------------------------------------------------------------------------
# The RPC channel: request payloads and their oracle.

methods = st.one_of(st.just("llm_batch"), st.just("pip_install"),
                    st.sampled_from(["LLM_BATCH", "llm_batch\x00", " llm_batch", "", "\ud800", "__init__"]),
                    json_values)
prompt_lists = st.one_of(
    st.lists(clean_text(30), max_size=5),  # often valid (and then really served)
    st.lists(st.text(max_size=5), min_size=MAX_BATCH + 1, max_size=MAX_BATCH + 4),  # too many
    st.lists(st.sampled_from(["", "x" * MAX_PROMPT, "y" * (MAX_PROMPT + 1)]), min_size=1, max_size=3),
    st.lists(st.one_of(st.text(max_size=5), json_leaves), min_size=1, max_size=4),  # wrong element types
    json_values,  # not a list at all, most of the time
)
requirements = st.one_of(
    st.sampled_from(["six", "six==1.16.0", "a[b,c]>=1,<2", "-e .", "--index-url=http://evil", "../../etc",
                     "six; os_name == 'nt'", "", "  six  ", "git+https://x/y.git", "six\x00", "six==1.0\n-e ."]),
    nasty_text(20),
)
package_lists = st.one_of(st.lists(requirements, max_size=4), requirements, json_values)
requests = st.one_of(
    st.fixed_dictionaries({"method": methods},
                          optional={"prompts": prompt_lists, "packages": package_lists, "extra": json_values}),
    st.fixed_dictionaries({"method": st.just("llm_batch"), "prompts": prompt_lists}),
)

HUGE_TEMPLATES = {
    "deep list": lambda n: repeated(("[", n), ("]", n)),
    "deep object": lambda n: repeated(('{"a": ', n), ("0", 1), ("}", n)),
    "deep prompts": lambda n: repeated(('{"method": "llm_batch", "prompts": ', 1), ("[", n), ("]", n), ("}", 1)),
    "deep method": lambda n: repeated(('{"method": ', 1), ("[", n), ("]", n), ("}", 1)),
    "unclosed": lambda n: repeated(("[", n)),
    "long prompt": lambda n: repeated(('{"method": "llm_batch", "prompts": ["', 1), ("a", n), ('"]}', 1)),
    "long method": lambda n: repeated(('{"method": "', 1), ("\xe9", n), ('"}', 1)),
    "many prompts": lambda n: repeated(('{"method": "llm_batch", "prompts": [', 1), ('"p", ', n), ('"p"]}', 1)),
    "many packages": lambda n: repeated(('{"method": "pip_install", "packages": [', 1), ('"six", ', n),
                                        ('"six"]}', 1)),
    "leading spaces": lambda n: repeated((" ", n), ("{}", 1)),
    "many digits": lambda n: repeated(('{"method": ', 1), ("9", n), ("}", 1)),
    "escaped NULs": lambda n: repeated(('"', 1), ("\\u0000", n), ('"', 1)),
    "escaped surrogates in method": lambda n: repeated(('{"method": "', 1), ("\\udc80\\ud800", n), ('"}', 1)),
}
NESTED_TEMPLATES = {"deep list", "deep object", "deep prompts", "deep method", "unclosed"}


@st.composite
def huge_payloads(draw: Any) -> Text:
    name = draw(st.sampled_from(sorted(HUGE_TEMPLATES)))
    if name in NESTED_TEMPLATES:
        count = draw(NEST)
    elif name == "many digits":
        count = draw(st.integers(1, 10_000))  # past 4,300 digits json refuses the number
    else:
        count = draw(st.one_of(st.integers(0, 100), st.integers(100, 50_000), st.integers(50_000, 1_000_000),
                               st.integers(2_000_000, 3_000_000)))  # some of these past the 16 MB limit
    return HUGE_TEMPLATES[name](count)


@st.composite
def wrapped_bytes(draw: Any) -> Text:
    """Random bytes, alone or inside an otherwise valid request, sent as non-UTF-8 text."""
    raw = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        raw = b'{"method": "llm_batch", "prompts": ["' + raw + b'"]}'
    return from_bytes(raw, draw(st.sampled_from(["latin-1", "surrogateescape"])))


valid_batches = st.builds(
    lambda prompts_, ascii_only: json.dumps({"method": "llm_batch", "prompts": prompts_}, ensure_ascii=ascii_only),
    st.lists(clean_text(30), max_size=MAX_BATCH), st.booleans())
payloads = st.one_of(
    valid_batches.map(literal),
    json_texts(requests).map(literal),
    json_texts().map(literal),
    nasty_text(60).map(literal),
    wrapped_bytes(),
    huge_payloads(),
)
prefixes = st.sampled_from([RPC_PREFIX] * 25 + ["", RPC_PREFIX[:-1], " " + RPC_PREFIX, RPC_PREFIX.upper(),
                                                "rlm-rpc:"])


def served(request: dict[str, Any]) -> list[str] | None:
    """The prompts of a request the broker must serve (valid llm_batch within the limits)."""
    prompts_ = request.get("prompts")
    if (request.get("method") == "llm_batch" and isinstance(prompts_, list)
            and all(isinstance(p, str) for p in prompts_)
            and len(prompts_) <= MAX_BATCH and all(len(p) <= MAX_PROMPT for p in prompts_)):
        return prompts_
    return None


def rpc_oracle(prefix: str, payload: str) -> tuple[str, Any]:
    """What must happen to `input(prefix + payload)` in the kernel.

    The kernel's Jupyter session sends the prompt as UTF-8 with surrogateescape (other lone
    surrogates cannot be sent: input() raises there), the host decodes it with 'replace'. A
    message over the channel's limit cuts the channel: a typed SandboxProtocolError.
    """
    try:
        wire = (prefix + payload).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "kernel raises", None
    size = len(json.dumps(prefix + payload, ensure_ascii=False).encode("utf-8", "surrogateescape"))
    if size > CHANNEL_LIMIT:
        return "over the limit", None
    if size > CHANNEL_LIMIT - (64 << 10):
        return "near the limit", None  # the message's envelope is not modelled: callers skip these
    prompt = wire.decode("utf-8", "replace")
    if not prompt.startswith(RPC_PREFIX):
        return "plain input", None
    try:
        request = json.loads(prompt[len(RPC_PREFIX) :])
    except (ValueError, RecursionError):
        return "malformed", None
    if not isinstance(request, dict):
        return "malformed", None
    return ("served" if served(request) is not None else "refused"), request


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def result_digest(results: list[str]) -> str:
    return hashlib.sha256(json.dumps(results).encode()).hexdigest()


#: Kernel side of every RPC example: send one prompt, summarize the reply in a few short fields.
KERNEL_SEND = '''
import json as _fz_json, hashlib as _fz_hashlib

def _fz_send(payload, prefix):
    try:
        reply = input(prefix + payload)
    except BaseException as exc:
        return {"raised": type(exc).__name__}
    try:
        value = _fz_json.loads(reply)
    except Exception:
        return {"reply_not_json": reply[:200]}
    if not isinstance(value, dict):
        return {"reply_type": type(value).__name__}
    out = {"keys": sorted(map(str, value)), "ok": value.get("ok")}
    if "error" in value:
        error = value["error"]
        out["error"] = error[:300] if isinstance(error, str) else "not a str: " + type(error).__name__
    if "result" in value:
        result = value["result"]
        out["result_len"] = len(result) if isinstance(result, list) else -1
        out["result_digest"] = _fz_hashlib.sha256(_fz_json.dumps(result).encode()).hexdigest()
        out["result_head"] = str(result)[:200]
    return out
'''


def expect_rpc(prefix: str, payload: Text) -> tuple[str, Any]:
    """The oracle's verdict on an example."""
    outcome, request = fresh_stack(rpc_oracle, prefix, payload.value)
    assume(outcome != "near the limit")
    event(f"rpc: {outcome}")
    return outcome, request


def check_rpc(expected: tuple[str, Any], out: Any, seen: list[dict[str, Any]] | None, seen_before: int) -> None:
    """Assert that what the kernel got back (`out`, from KERNEL_SEND) is what the oracle says."""
    outcome, request = expected
    note(f"oracle: {outcome}; kernel got: {str(out)[:500]}")
    assert isinstance(out, dict), out
    if outcome == "over the limit":
        assert out == {"channel cut": "SandboxProtocolError"}
    elif outcome == "kernel raises":
        assert out == {"raised": "UnicodeEncodeError"}
    elif outcome == "plain input":
        assert out == {"reply_not_json": ""}  # a plain input() gets '' and reaches nobody
    elif outcome == "malformed":
        assert out["keys"] == ["error", "ok"] and out["ok"] is False
        assert out["error"].startswith("malformed request"), out
    elif outcome == "refused":
        assert out["keys"] == ["error", "ok"] and out["ok"] is False, out
        assert out["error"] and not out["error"].startswith(("malformed", "harness")), out
    else:
        echoes = [f"echo: {valid_text(p)}" for p in served(request)]  # lone surrogates replaced
        assert out["keys"] == ["ok", "result"] and out["ok"] is True, out
        assert out["result_len"] == len(echoes) and out["result_digest"] == result_digest(echoes), out
    if seen is not None:
        reached = outcome in ("served", "refused")
        assert len(seen) == seen_before + reached
        if reached:
            assert fresh_stack(canonical, seen[-1]) == fresh_stack(canonical, request)


class RpcBench:
    """One started sandbox and a real Broker (its sub-model a scripted server that echoes): each
    `send` runs one cell whose `input()` carries a payload. The handler records every request it
    gets and any exception the broker raises (answered with an error, so the kernel goes on)."""

    def __init__(self, backend: str = "local") -> None:
        self.backend = backend
        self.server = ScriptedServer().__enter__()
        self.config = RLMConfig(model="scripted-sub", base_url=self.server.base_url, max_retries=0,
                                request_timeout=30, max_batch_prompts=MAX_BATCH, max_prompt_chars=MAX_PROMPT,
                                max_sub_calls=None, allow_pip=True)  # no delivery: pip never runs
        self.seen: list[dict[str, Any]] = []
        self.raised: list[BaseException] = []
        self.sandbox = create_sandbox(backend)

    async def start(self) -> RpcBench:
        self.client = ModelClient.from_config(self.config, "sub")
        self.broker = Broker(RunState.new(self.config, Conversation(self.config)), self.client)
        await self.sandbox.start()
        await self._setup()
        return self

    async def _setup(self) -> None:
        setup = await self.sandbox.execute(KERNEL_SEND, timeout=60)
        assert setup.ok, setup.error

    async def handle(self, request: dict[str, Any]) -> Reply:
        self.seen.append(request)
        try:
            return await self.broker.handle(request)
        except Exception as exc:
            self.raised.append(exc)
            return Reply.failed(f"harness: the broker raised {exc!r}")

    async def send(self, payload_expr: str, prefix: str = RPC_PREFIX, timeout: float = 60) -> Any:
        try:
            outcome = await self.sandbox.execute(
                f"_fz_out = _fz_send({payload_expr}, {prefix!a})", on_request=self.handle,
                user_expressions={"out": "_fz_out"}, timeout=timeout,
            )
        except SandboxProtocolError:  # typed, and the kernel must be restarted: so be it
            await self.sandbox.restart()
            await self._setup()
            return {"channel cut": "SandboxProtocolError"}
        assert outcome.ok and not outcome.restarted, (outcome.error, outcome.stderr)
        return outcome.expressions.get("out")

    async def close(self) -> None:
        try:
            await self.sandbox.close()
            await self.client.close()
        finally:
            self.server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def rpc_bench(loop_thread):
    bench = RpcBench("local")
    try:
        loop_thread.run(bench.start())
        yield bench
    finally:
        loop_thread.run(bench.close())


@settings(FUZZ, max_examples=300)
@given(prefix=prefixes, payload=payloads)
@example(prefix=RPC_PREFIX, payload=HUGE_TEMPLATES["many prompts"](2_500_000))  # over 16 MB
def test_rpc_requests_get_typed_replies_and_the_broker_never_raises(rpc_bench, loop_thread, prefix, payload):
    expected = expect_rpc(prefix, payload)
    seen, raised = len(rpc_bench.seen), len(rpc_bench.raised)
    out = loop_thread.run(rpc_bench.send(payload.expr, prefix))
    assert rpc_bench.raised[raised:] == [], "the broker raised"
    check_rpc(expected, out, rpc_bench.seen, seen)


# --------------------------------------------------------------------------------------------
# A live run: the test is the root model, one root reply per hypothesis example.


class LiveController(Controller):
    """The real controller, keeping a handle on the run's live Result (read only between turns,
    while the run waits for the root model's next reply)."""

    def __init__(self, config: RLMConfig, live: LiveRun) -> None:
        super().__init__(config)
        self._live = live

    async def _loop(self, run, root, broker):  # type: ignore[no-untyped-def]
        self._live.result = run.result
        await super()._loop(run, root, broker)


@dataclass
class Step:
    turn: Turn
    result: Result  # the live result, or the final one when the run ended with this turn
    ended: bool


#: Kernel code that routes the runtime's answer-state hook (`rlm.runtime.answer_state`) through a
#: user-namespace `_rlm_state()` and its limits through a `_RLM_LIMITS` dict, so that hostile
#: examples reach both from a plain cell. Installed again after a restart (a fresh runtime).
STATE_HOOK = (
    "import sys as _fz_sys, dataclasses as _fz_dc\n"
    "_fz_rt = _fz_sys.modules['rlm_runtime']\n"
    "if not hasattr(_fz_rt, '_fz_state'):\n"
    "    _fz_rt._fz_state = _fz_rt.answer_state\n"
    "    _RLM_LIMITS = _fz_dc.asdict(_fz_rt.LIMITS)\n"
    "    _fz_rt.LIMITS = type('L', (), {'__getattr__': lambda self, key: _RLM_LIMITS[key]})()\n"
    "    _fz_rt.answer_state = lambda namespace: namespace['_rlm_state']()\n"
    "    _rlm_state = lambda: _fz_rt._fz_state(globals())\n"
)
#: Run at the start of every run.
LIVE_SETUP = STATE_HOOK + KERNEL_SEND
#: Run first in every example: undo what the previous example did to the state channel (the
#: runtime's `_rlm_state` is kept at the first example, and again after a kernel restart).
PROLOGUE = (STATE_HOOK + "_rlm_state = globals().setdefault('_fz_state', _rlm_state)\n"
            f"_RLM_LIMITS['answer_chars'] = {ANSWER_LIMIT}\n")


class LiveRun:
    """An rlm run (real controller, local sandbox, scripted server) whose root replies come from the
    test one at a time: `turn(code)` sends a reply running `code` and returns once the controller
    has finished that turn, i.e. asks for the next reply or ends the run. A run that ends (ready,
    max_turns) is replaced by a fresh one at the next turn."""

    def __init__(self, loop: LoopThread, **settings: Any) -> None:
        self.loop = loop
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._replies: queue.Queue[str] = queue.Queue()
        self.server = ScriptedServer(self._root).__enter__()
        self.settings = {"model": "scripted-root", "base_url": self.server.base_url, "max_retries": 0,
                         "sandbox": "local", "max_turns": MAX_TURNS, "timeout": None, "exec_timeout": 60,
                         **settings}
        self.result: Result | None = None
        self._run: concurrent.futures.Future[Result] | None = None
        self.runs = 0

    def _root(self, request: dict[str, Any]) -> str | dict[str, Any]:  # on the server's thread
        self._events.put(("request", request))
        try:
            return self._replies.get(timeout=600)
        except queue.Empty:
            return {"status": 500, "error": "the test sent no reply"}

    def _wait(self) -> tuple[str, Any]:
        try:
            return self._events.get(timeout=120)
        except queue.Empty:
            raise AssertionError("hung: the controller finished no turn within 120 s") from None

    def _start(self) -> None:
        self.result = None
        self._run = self.loop.spawn(LiveController(RLMConfig(**self.settings), self).run("Fuzz.", None))
        self._run.add_done_callback(lambda future: self._events.put(("done", future)))
        self.runs += 1
        kind, item = self._wait()
        assert kind == "request", f"the run ended before its first turn: {item.result().error}"
        step = self.turn(LIVE_SETUP)
        assert not step.ended and step.turn.error is None, step.turn.output

    @property
    def answer(self) -> str:
        """The run's answer so far ('' before a run starts)."""
        return self.result.answer if self._run is not None and self.result is not None else ""

    def turn(self, code: str) -> Step:
        if self._run is None:
            self._start()
        self._replies.put(fenced(code))
        kind, item = self._wait()
        if kind == "request":
            assert self.result is not None
            return Step(self.result.turns[-1], self.result, ended=False)
        self._run = None
        if item.exception() is not None:
            raise AssertionError(f"the controller raised {item.exception()!r}") from item.exception()
        final: Result = item.result()
        assert final.turns, f"the run ended without a turn: {final.status} {final.error}"
        return Step(final.turns[-1], final, ended=True)

    def close(self) -> None:
        try:
            if self._run is not None:
                self._replies.put(fenced(PROLOGUE + "answer = {'content': '', 'ready': True}"))
                try:
                    self._run.result(120)
                except concurrent.futures.TimeoutError:
                    self._run.cancel()
                    self._replies.put("no more")
        finally:
            self.server.__exit__(None, None, None)


def check_continues(step: Step) -> None:
    """The run goes on after a hostile turn, or ended at its turn budget."""
    if step.ended:
        assert step.result.status == "max_turns" and step.turn.index == MAX_TURNS, \
            (step.result.status, step.result.error)


# --------------------------------------------------------------------------------------------
# The answer-state channel: hostile `answer` values and `_rlm_state` redefinitions, with oracles.


@dataclass(frozen=True)
class Expect:
    kind: str  # "state", "unreadable" or "not a dict"
    content: str = ""  # state: the content as the kernel holds it (after UTF-8 'replace')
    length: int = 0  # state: the length the kernel reports
    ready: bool = False
    what: str = ""  # not a dict: the name the note must carry


UNREADABLE = Expect("unreadable")


def replaced(text: str) -> str:
    """`text` after the runtime's encode('utf-8', 'replace'): each lone surrogate becomes '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class Hostile:
    code: str
    expect: Expect

    def __repr__(self) -> str:
        return f"Hostile({self.code[:400]!r}, {self.expect!r})"


# A. `answer` replaced by something that is not a dict: the runtime reports its type's name (which
# Python keeps UTF-8: type() refuses lone surrogates, and NUL).
class_names = st.lists(clean_chars, min_size=1, max_size=150).map("".join).filter(lambda name: "\x00" not in name)
non_dicts = st.one_of(
    st.integers().map(lambda n: (repr(n), "int")),
    nasty_text(10).map(lambda s: (ascii(s), "str")),
    st.binary(max_size=10).map(lambda b: (repr(b), "bytes")),
    st.lists(st.integers(), max_size=3).map(lambda v: (repr(v), "list")),
    st.sampled_from([("None", "NoneType"), ("(1, 2)", "tuple"), ("{1, 2}", "set"), ("1.5", "float"),
                     ("True", "bool"), ("print", "builtin_function_or_method"), ("__import__('sys')", "module"),
                     ("lambda: 0", "function"), ("ValueError('x')", "ValueError"), ("NotImplemented",
                                                                                     "NotImplementedType")]),
    class_names.map(lambda name: (f"type({name!a}, (), {{}})()", name)),
)


@st.composite
def answer_not_a_dict(draw: Any) -> Hostile:
    expr, name = draw(non_dicts)
    return Hostile(f"answer = {expr}", Expect("not a dict", what=name[:100]))


# B. `answer` a dict whose content and ready have odd types or sizes.
RAISING_STR = "type('Bad', (), {'__str__': lambda self: 1 / 0})()"
NON_STR_STR = "type('Odd', (), {'__str__': lambda self: 5})()"
contents = st.one_of(  # (expression, its str() in the kernel, or None when str() raises)
    nasty_text(50).map(lambda s: (ascii(s), s)),
    st.tuples(nasty_text(4, min_size=1), st.integers(0, 300_000)).map(
        lambda t: (f"{t[0]!a} * {t[1]}", t[0] * t[1])),  # long: mostly over the limit
    st.binary(max_size=30).map(lambda b: (repr(b), str(b))),
    st.integers().map(lambda n: (repr(n), str(n))),
    # str() of an int refuses more than 4,300 digits
    st.integers(0, 6000).map(lambda k: (f"10 ** {k}", str(10**k) if k < 4300 else None)),
    st.floats().map(lambda x: (f"float({repr(x)!r})", str(x))),
    st.lists(st.one_of(st.integers(), nasty_text(5), st.none()), max_size=4).map(lambda v: (ascii(v), str(v))),
    st.sampled_from([("None", "None"), (RAISING_STR, None), (NON_STR_STR, None)]),
    nasty_text(20).map(lambda s: (f"type('S', (str,), {{'__str__': lambda self: 1 / 0}})({s!a})", s)),
)
readies = st.sampled_from([("True", True), ("False", False), ("1", False), ("0", False), ("'True'", False),
                           ("None", False), ("[True]", False), ("1.0", False), (None, False)])


@st.composite
def answer_dict(draw: Any) -> Hostile:
    content_expr, text = draw(st.one_of(contents, st.just((None, ""))))  # None: no content key
    ready_expr, ready = draw(readies)
    items = [f"'content': {content_expr}"] if content_expr is not None else []
    items += [f"'ready': {ready_expr}"] if ready_expr is not None else []
    shape = draw(st.sampled_from(["dict", "dict subclass", "dict whose get raises"]))
    body = "{" + ", ".join(items) + "}"
    if shape == "dict":
        code = f"answer = {body}"
    elif shape == "dict subclass":
        code = f"answer = type('D', (dict,), {{}})({body})"
    else:
        code = f"answer = type('D', (dict,), {{'get': lambda self, *a: 1 / 0}})({body})"
        text = None
    if draw(st.booleans()):  # hostile code lifts the kernel's own cut: the controller must still cut
        code = f"_RLM_LIMITS['answer_chars'] = 10 ** 9\n{code}"
    expect = UNREADABLE if text is None else Expect("state", replaced(text), len(text), ready)
    return Hostile(code, expect)


# C. `_rlm_state` redefined: raising, returning non-strings, garbage text, forged states.
@st.composite
def forged_states(draw: Any) -> tuple[str, Expect]:
    """A state in the runtime's format, maybe with lies or one field broken (the oracle is the
    construction itself)."""
    content = draw(st.one_of(st.binary(max_size=40), st.integers(0, 5000).map(lambda n: b"z" * n),
                             nasty_text(30).map(lambda s: s.encode("utf-8", "surrogatepass"))))
    length = draw(st.one_of(st.integers(-(10**30), 10**30), st.integers(0, 3000), st.just(len(content))))
    ready = draw(st.sampled_from([False, False, False, True]))  # ready ends the run: a new one costs 0.4 s
    decoded = content.decode("utf-8", "replace")
    good = Expect("state", decoded, length, ready)
    mutation = draw(st.sampled_from(["none", "none", "extra keys", "length is a bool", "no content", "no length",
                                     "no ready", "length is a str", "length is a float", "ready is 1",
                                     "ready is a str", "content is a number", "content not base64",
                                     "content with a newline", "content urlsafe", "content unpadded"]))
    b64 = base64.b64encode(content).decode()
    fields: dict[str, Any] = {"content": b64, "length": length, "ready": ready}
    if mutation == "none":
        return json.dumps(fields), good
    if mutation == "extra keys":
        return json.dumps({**fields, "zz": [1, {"a": None}], "": ""}), good
    if mutation == "length is a bool":
        return json.dumps({**fields, "length": True}), Expect("state", decoded, 1, ready)
    broken = dict(fields)
    if mutation.startswith("no "):
        del broken[mutation[3:]]
    elif mutation == "length is a str":
        broken["length"] = str(length)
    elif mutation == "length is a float":
        broken["length"] = float(len(content)) + 0.5
    elif mutation == "ready is 1":
        broken["ready"] = 1
    elif mutation == "ready is a str":
        broken["ready"] = "true"
    elif mutation == "content is a number":
        broken["content"] = 12
    elif mutation == "content not base64":
        broken["content"] = "!!" + b64
    elif mutation == "content with a newline":
        broken["content"] = b64[:4] + "\n" + b64[4:]
    elif mutation == "content urlsafe":
        broken["content"] = base64.urlsafe_b64encode(content + b"\xfb\xff").decode()
        if "-" not in broken["content"] and "_" not in broken["content"]:
            decoded = (content + b"\xfb\xff").decode("utf-8", "replace")
            return json.dumps(broken), Expect("state", decoded, length, ready)
    elif mutation == "content unpadded":
        broken["content"] = b64.rstrip("=")
        if broken["content"] == b64:
            return json.dumps(broken), good
    return json.dumps(broken), UNREADABLE


def state_text_oracle(text: str) -> Expect:
    """What a str from `_rlm_state` means, by the runtime's contract: JSON of {"invalid": type
    name} or of {"content": strict base64 of UTF-8, "length": int, "ready": bool}; anything else
    is unreadable."""
    try:
        state = json.loads(text)
    except (ValueError, RecursionError):
        return UNREADABLE
    if not isinstance(state, dict):
        return UNREADABLE
    if "invalid" in state:
        return Expect("not a dict", what=str(state["invalid"])[:100])
    if not {"content", "length", "ready"} <= state.keys() or not isinstance(state["content"], str):
        return UNREADABLE
    try:  # strict base64 as the standard library defines it
        content = base64.b64decode(state["content"].encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return UNREADABLE
    length, ready = state["length"], state["ready"]
    if not isinstance(length, int) or not isinstance(ready, bool):
        return UNREADABLE
    return Expect("state", content.decode("utf-8", "replace"), length, ready)


def repr_text_oracle(text: str) -> Expect:
    """An object whose repr is `text`: the host reads the user expression's text/plain as a Python
    literal when it is one, else keeps the text."""
    try:
        raw = ast.literal_eval(text)
    except Exception:
        raw = text
    return state_text_oracle(raw) if isinstance(raw, str) else UNREADABLE


PARSER_TORTURE = [  # reprs that make ast.literal_eval on the host fail in every way it can
    "-" * 200_000 + "1", "not " * 50_000 + "1", "(" * 50_000, "[" * 50_000 + "]" * 50_000, "1+" * 50_000 + "1",
    "a" + ".a" * 50_000, "lambda:" * 50_000 + "1", "f" + "()" * 50_000, "1" * 5000, "1 if 1 else " * 50_000 + "1",
    "{'content': 1}", "'{}'", "b'{}'", "'\\x'", "''' ", "\\", "...", "__import__('os')",
]


def state_returning(expr: str) -> str:
    return f"def _rlm_state():\n    return {expr}"


@st.composite
def state_redefined(draw: Any) -> Hostile:
    kind = draw(st.sampled_from(["raises", "not a str", "text", "json", "forged", "invalid", "huge", "repr"]))
    if kind == "raises":
        exc = draw(st.sampled_from(["ValueError('x')", "KeyboardInterrupt()", "SystemExit(3)", "RecursionError()",
                                    "MemoryError()", "GeneratorExit()", "StopIteration()"]))
        return Hostile(f"def _rlm_state():\n    raise {exc}", UNREADABLE)
    if kind == "not a str":
        expr = draw(st.one_of(st.sampled_from(["None", "b'{}'", "1.5", "float('nan')", "[]", "print", "object()",
                                               "{'content': '', 'length': 0, 'ready': True}"]),
                              st.integers().map(repr)))
        return Hostile(state_returning(expr), UNREADABLE)
    if kind == "invalid":
        text = json.dumps({"invalid": draw(json_values)})
        what = str(json.loads(text)["invalid"])[:100]  # JSON joins escaped surrogate pairs
        return Hostile(state_returning(ascii(text)), Expect("not a dict", what=what))
    if kind == "forged":
        text, expect = draw(forged_states())
        return Hostile(state_returning(ascii(text)), expect)
    if kind == "huge":
        name = draw(st.sampled_from(["long text", "deep json", "big valid state"]))
        n = draw(st.integers(0, 3_000_000))
        if name == "long text":
            return Hostile(state_returning(f"'x' * {n}"), UNREADABLE)
        if name == "deep json":
            depth = draw(NEST)
            nested = repeated(("[", depth), ("]", depth))
            return Hostile(state_returning(nested.expr), fresh_stack(state_text_oracle, nested.value))
        size = draw(st.integers(0, 1_000_000))
        expr = (f"__import__('json').dumps({{'content': __import__('base64').b64encode(b'q' * {size}).decode(), "
                f"'length': {size}, 'ready': False}})")
        return Hostile(state_returning(expr), Expect("state", "q" * size, size, False))
    if kind == "repr":
        text = draw(st.one_of(
            st.sampled_from(PARSER_TORTURE),
            st.builds(lambda t: repr(t), st.one_of(json_texts(), forged_states().map(lambda f: f[0]))),
            nasty_text(40),
        ))
        # Only text the kernel can send and IPython passes on unchanged: a repr with a line break is
        # re-broken by IPython's printer; one with a lone surrogate cannot be encoded by the kernel,
        # whose reply is then lost and the cell times out (hostile, but not the controller's fault).
        assume(utf8_ok(text) and (text == "" or text.splitlines() == [text]))
        code = f"_fz_repr = {text!a}\n" + state_returning("type('R', (), {'__repr__': lambda self: _fz_repr})()")
        return Hostile(code, fresh_stack(repr_text_oracle, text))
    text = draw(nasty_text(60) if kind == "text" else json_texts())
    return Hostile(state_returning(ascii(text)), fresh_stack(state_text_oracle, text))


hostile_states = st.one_of(answer_not_a_dict(), answer_dict(), answer_dict(), state_redefined(), state_redefined())


def check_state(step: Step, expect: Expect, answer_before: str) -> None:
    turn, result = step.turn, step.result
    kinds = [event.kind for event in turn.events]
    feedback = result.messages[-1]["content"]
    event(f"state: {expect.kind}")
    note(f"turn {turn.index}: events {kinds}, error {turn.error!r}, status {result.status}; expected {expect!r}")
    assert turn.error is None and not turn.restarted, turn.output
    assert isinstance(result.answer, str) and len(result.answer) <= ANSWER_LIMIT
    if expect.kind == "state":
        cut = expect.length > ANSWER_LIMIT or len(expect.content) > ANSWER_LIMIT
        assert result.answer == expect.content[:ANSWER_LIMIT]
        assert kinds == (["answer_cut"] if cut else []), kinds
        assert ("only the first" in feedback) == cut
        if expect.ready:
            assert step.ended and result.status == "ready", (result.status, result.error)
        else:
            check_continues(step)
        return
    assert result.answer == answer_before  # kept as it was
    if expect.kind == "unreadable":
        assert kinds == ["state_unreadable"], kinds
        assert prompts.STATE_UNREADABLE in feedback
    else:
        assert kinds == [], kinds
        assert prompts.ANSWER_NOT_DICT.format(kind=expect.what) in feedback
    check_continues(step)


@pytest.fixture(scope="module")
def state_run(loop_thread):
    live = LiveRun(loop_thread, max_answer_chars=ANSWER_LIMIT)
    yield live
    live.close()


@settings(FUZZ, max_examples=150)
@given(hostile=hostile_states)
def test_hostile_answer_states_become_events_and_the_run_goes_on(state_run, hostile):
    before = state_run.answer
    step = state_run.turn(PROLOGUE + hostile.code)
    check_state(step, hostile.expect, before)


# --------------------------------------------------------------------------------------------
# The RPC channel again, through the real controller and its own broker.


@pytest.fixture(scope="module")
def rpc_run(loop_thread):
    live = LiveRun(loop_thread, max_batch_prompts=MAX_BATCH, max_prompt_chars=MAX_PROMPT, max_sub_calls=None,
                   allow_pip=["rlm-fuzz-never-requested"], max_output_chars=20_000)
    yield live
    live.close()


@settings(FUZZ, max_examples=100)
@given(prefix=prefixes, payload=payloads)
@example(prefix=RPC_PREFIX, payload=HUGE_TEMPLATES["many prompts"](2_500_000))  # over 16 MB
def test_rpc_requests_through_the_controller_leave_the_run_going(rpc_run, prefix, payload):
    expected = expect_rpc(prefix, payload)
    over = expected[0] == "over the limit"
    step = rpc_run.turn(PROLOGUE + KERNEL_SEND + f"print('FZ:' + _fz_json.dumps(_fz_send({payload.expr}, {prefix!a})))")
    turn = step.turn
    if over:  # the channel was cut: a recorded restart, the answer restored, the run goes on
        assert turn.error.startswith("SandboxProtocolError") and turn.restarted, turn.error
        assert [e.kind for e in turn.events] == ["kernel_restarted"]
    else:
        assert turn.error is None and not turn.restarted and turn.events == [], turn.output
        found = re.search(r"FZ:(\{.*\})", turn.output)
        assert found, turn.output
        check_rpc(expected, json.loads(found.group(1)), None, 0)
    check_continues(step)


# --------------------------------------------------------------------------------------------
# Explicit regressions: the nastiest inputs of each channel, on every isolating backend.


@pytest.fixture(params=ISOLATING)
async def bench(request):
    bench = RpcBench(request.param)
    try:
        yield await bench.start()
    finally:
        await bench.close()


#: (opening: fixed text, repeated unit), middle, (closing: fixed text, repeated unit) per shape.
DEEP_PARTS = {
    "request": (("", "["), "", ("", "]")),
    "method": (('{"method": ', "["), "", ("}", "]")),
    "prompts": (('{"method": "llm_batch", "prompts": ', "["), "", ("}", "]")),
    "object": (("", '{"a": '), "0", ("", "}")),
}


async def test_deep_nesting_at_the_parsers_edge(bench):
    """Every depth around json's recursion limit, in each place a request can nest, and far
    past it: each one a typed error, never an exception in the host."""
    depths = [*range(880, 1120), 5000, 100_000, 1_000_000]
    code = (
        "_fz_replies = {}\n"
        f"for _fz_shape, (_fz_open, _fz_mid, _fz_close) in {DEEP_PARTS!a}.items():\n"
        f"    for _fz_n in {depths!r}:\n"
        "        _fz_replies[_fz_shape, _fz_n] = _fz_send(_fz_open[0] + _fz_open[1] * _fz_n + _fz_mid"
        " + _fz_close[1] * _fz_n + _fz_close[0], _FZ_PREFIX)\n"
        "_fz_bad = [(key, out) for key, out in _fz_replies.items()\n"
        "           if out.get('keys') != ['error', 'ok'] or out.get('ok') is not False or not out.get('error')]\n"
    )
    outcome = await bench.sandbox.execute(
        f"_FZ_PREFIX = {RPC_PREFIX!a}\n{code}", on_request=bench.handle, timeout=120,
        user_expressions={"count": "len(_fz_replies)", "bad": "_fz_bad[:5]"},
    )
    assert outcome.ok, outcome.error
    assert bench.raised == [], f"the broker raised: {bench.raised[:3]!r}"
    assert outcome.expressions == {"count": len(DEEP_PARTS) * len(depths), "bad": []}
    # The kernel is still fine and the channel still serves requests.
    assert await bench.send(ascii('{"method": "llm_batch", "prompts": ["still here"]}')) == {
        "keys": ["ok", "result"], "ok": True, "result_len": 1,
        "result_digest": result_digest(["echo: still here"]), "result_head": "['echo: still here']"}


async def test_non_utf8_and_unsendable_requests(bench):
    cases = [  # (payload expression, what the kernel must get back)
        (from_bytes(b'{"method": "llm_batch", "prompts": ["\xff\xfe\x80ok"]}', "surrogateescape").expr,
         {"ok": True, "echo": ["echo: \ufffd\ufffd\ufffdok"]}),
        (from_bytes(b'{"method": "llm_batch", "prompts": ["\xe9t\xe9"]}', "latin-1").expr,
         {"ok": True, "echo": ["echo: \xe9t\xe9"]}),
        (from_bytes(b"\xff" * 100_000, "surrogateescape").expr, {"malformed": True}),
        (from_bytes(b'{"method": "\xc3\x28"}', "surrogateescape").expr, {"ok": False}),
        (ascii('{"method": "llm_batch", "prompts": ["\ud800"]}'), {"raised": "UnicodeEncodeError"}),
        (ascii('{"method": "\\ud800\\u0000", "packages": ["\\udfff"]}'), {"ok": False}),
        (ascii('{"method": "pip_install", "packages": ["six\\u0000", "-e ."]}'), {"ok": False}),
        (ascii("\x00" * 1000), {"malformed": True}),
        (ascii('{"method": "llm_batch", "prompts": ["\\u0000\\u001b[31m\\r\\n"]}'),
         {"ok": True, "echo": ["echo: \x00\x1b[31m\r\n"]}),
    ]
    for expr, expected in cases:
        out = await bench.send(expr)
        if "raised" in expected:
            assert out == expected, (expr, out)
        elif "malformed" in expected:
            assert out["ok"] is False and out["error"].startswith("malformed request"), (expr, out)
        elif expected["ok"]:
            assert out["ok"] is True and out["result_digest"] == result_digest(expected["echo"]), (expr, out)
        else:
            assert out["ok"] is False and out["error"] and not out["error"].startswith("malformed"), (expr, out)
    assert bench.raised == []


async def test_a_request_over_the_channel_limit_restarts_the_kernel_and_the_run_goes_on(scripted):
    server = scripted([
        fenced("answer['content'] = 'kept'"),
        fenced(f"input({RPC_PREFIX!r} + '[' + ' ' * 3_000_000 + ']')"),
        fenced("print(answer['content'], llm_batch(['after']))\nanswer['ready'] = True"),
    ])
    result = await run_on(server, None, sandbox_options={"limits": {"message_bytes": 2 << 20}})
    cut, after = result.turns[1], result.turns[-1]
    assert (result.status, result.answer, len(result.turns)) == ("ready", "kept", 3), (result.status, result.error)
    assert cut.error.startswith("SandboxProtocolError") and cut.restarted, (cut.error, cut.output)
    assert [e.kind for e in cut.events] == ["kernel_restarted"], cut.events
    assert after.output.strip() == "kept ['echo: after']", (after.error, after.output)


async def test_nastiest_answer_states_in_one_run(scripted):
    torture = "type('R', (), {'__repr__': lambda self: %r})()"
    hostile = [
        state_returning("'[' * 100_000"),  # json past its recursion limit
        state_returning("'\"' + 'x' * 10_000_000 + '\"'"),  # a valid JSON string of 10 MB, not a dict
        state_returning(torture % ("-" * 1_000_000 + "1")),  # parser: MemoryError on the host
        state_returning(torture % ("1+" * 200_000 + "1")),  # parser: RecursionError on the host
        state_returning(torture % ("(" * 100_000)),  # parser: too many nested parentheses
        "def _rlm_state():\n    raise SystemExit(1)",
        "_rlm_state = None",
        "answer = {'content': 10 ** 5000, 'ready': True}",  # str() refuses past 4,300 digits
        "answer = {'content': type('Bad', (), {'__str__': lambda self: 1 / 0})(), 'ready': True}",
    ]
    server = scripted(
        [fenced(STATE_HOOK + "_fz_state = _rlm_state\nanswer['content'] = 'kept'")]
        + [fenced(PROLOGUE + code) for code in hostile]
        + [fenced(PROLOGUE + "_RLM_LIMITS['answer_chars'] = 10 ** 9\n"
                  "answer = {'content': '\\ud800' * 5000, 'ready': True}")]
    )
    result = await run_on(server, None, max_answer_chars=ANSWER_LIMIT, max_turns=len(hostile) + 2)
    assert result.status == "ready", (result.status, result.error)
    for turn in result.turns[1:-1]:
        assert [e.kind for e in turn.events] == ["state_unreadable"], (turn.index, turn.code, turn.events)
        assert turn.answer is None and turn.error is None
    last = result.turns[-1]
    assert [e.kind for e in last.events] == ["answer_cut"] and result.answer == "?" * ANSWER_LIMIT


async def test_a_state_the_kernel_cannot_send_costs_a_timeout_and_the_run_goes_on(scripted):
    """A repr holding a lone surrogate cannot be encoded by the kernel: its execute_reply is lost,
    so the host sees no reply, the cell counts as timed out and the kernel is restarted (the
    idle status came and went). Costly (exec_timeout plus a restart) but recorded, and the run
    goes on with the answer restored."""
    server = scripted([
        fenced("answer['content'] = 'kept'"),
        fenced(STATE_HOOK + "_rlm_state = lambda: type('R', (), {'__repr__': lambda self: '\\ud800'})()"),
        fenced("answer['ready'] = True"),
    ])
    result = await run_on(server, None, exec_timeout=2)
    lost = result.turns[1]
    assert (result.status, result.answer) == ("ready", "kept"), (result.status, result.error)
    assert lost.error == "timeout" and lost.restarted, (lost.error, lost.output)
    assert [e.kind for e in lost.events] == ["kernel_restarted"], lost.events


# --------------------------------------------------------------------------------------------
# Regressions: bugs this fuzz found, each pinned by its smallest input.


async def test_a_lone_surrogate_in_a_prompt_stays_in_the_broker(scripted):
    """A prompt holding a lone surrogate (the JSON escape \\ud800 in a hostile request) once made
    httpx raise UnicodeEncodeError out of the broker and the controller: the run was lost."""
    payload = '{"method": "llm_batch", "prompts": ["\\ud800", "fine"]}'
    server = scripted([
        fenced(f"print(input({RPC_PREFIX!r} + {payload!r}))"),
        fenced("answer['ready'] = True"),
    ])
    result = await run_on(server, None)  # raised before the fix
    assert result.status == "ready"
    reply = json.loads(result.turns[0].output.strip())
    assert reply == {"ok": True, "result": ["echo: ?", "echo: fine"]}  # the surrogate replaced, not sent


async def test_an_invalid_state_naming_a_lone_surrogate_leaves_the_run_going(scripted):
    """A redefined `_rlm_state` returning '{"invalid": "\\ud800"}' once put a lone surrogate in the
    root model's messages, and the next request raised out of the controller."""
    server = scripted([
        fenced(STATE_HOOK + "_fz_state = _rlm_state\n_rlm_state = lambda: '{\"invalid\": \"\\\\ud800\"}'"),
        fenced("_rlm_state = _fz_state\nanswer['ready'] = True"),
    ])
    result = await run_on(server, None)  # raised before the fix
    assert result.status == "ready"


async def test_a_root_reply_with_a_lone_surrogate_leaves_the_run_going(scripted):
    """A root reply whose code holds a lone surrogate (a server can send the JSON escape \\ud800)
    once made the kernel message unencodable and the controller raised."""
    server = scripted([fenced("x = '\ud800'"), fenced("answer['ready'] = True")])
    result = await run_on(server, None)  # raised before the fix
    assert result.status in ("ready", "error")
    assert result.status == "ready" or result.error


def test_a_hostile_repr_of_the_state_leaves_controller_memory_bounded(scripted):
    """User-expression text is the kernel's to choose: a 2 MB list literal, far under the channel
    limit, once cost the controller ~0.7 GB of AST (some 350 bytes per byte sent)."""
    hostile = (STATE_HOOK + "_fz_state = _rlm_state\n"
               "_rlm_state = lambda: type('R', (), {'__repr__': lambda self: '[' + '0,' * 1_000_000 + ']'})()")
    done = STATE_HOOK + "_rlm_state = globals().get('_fz_state', _rlm_state)\nanswer = {'content': 'done', 'ready': True}"
    baseline = run_controller(scripted([fenced(done)]).base_url, max_answer_chars=ANSWER_LIMIT)
    report = run_controller(scripted([fenced(hostile), fenced(done)]).base_url, max_answer_chars=ANSWER_LIMIT)
    assert report["status"] == "ready" and "state_unreadable" in report["events"][0], report
    grown = report["peak_rss_mb"] - baseline["peak_rss_mb"]
    assert grown < 250, f"controller peak grew by {grown:.0f} MB for a 2 MB user expression"



def test_every_text_field_of_an_output_message_is_made_valid():
    """A kernel whose packer escapes as ASCII can spell lone surrogates anywhere in a message:
    stream text, display text and tracebacks alike reach the host as valid text."""
    from sandbox.base import ExecutionResult, Output
    from sandbox.kernel import _collect

    result, stdout, stderr = ExecutionResult(), Output(1000), Output(1000)
    for msg_type, content in [("stream", {"name": "stdout", "text": "a\ud800"}),
                              ("display_data", {"data": {"text/plain": "b\udfff"}}),
                              ("error", {"ename": "E\ud800", "traceback": ["t\udc80"]})]:
        _collect({"msg_type": msg_type, "content": content}, result, stdout, stderr)
    assert stdout.render() == "a?b?\n" and (result.error_name, result.error) == ("E?", "t?")
