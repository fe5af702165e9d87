# mypy: ignore-errors
# (kernel-side script, run as a file in the sandbox: typed loosely like guard.py; tests drive it)
"""A small Jupyter kernel: the messaging protocol over pyzmq and a persistent namespace, no IPython.

Run as `python lean_kernel.py <connection file> <chunk> [<start-up file>]`, standard library and
pyzmq only, so it starts in a fraction of ipykernel's import time and answers a cell without
IPython's per-message machinery. It keeps what the REPL needs: stdout/stderr in `stream` messages
of at most `chunk` characters (the bounds `sandbox.guard` sets in ipykernel), the last expression
shown as an `execute_result`, tracebacks, user expressions, `input()` over the stdin channel,
interrupts (SIGINT raises KeyboardInterrupt in user code only), top-level `await`. Security does
not rest on it: the host treats every kernel as hostile.
"""

import ast
import builtins
import codecs
import hashlib
import hmac
import io
import json
import linecache
import os
import select
import signal
import sys
import threading
import time
import traceback
import types
from datetime import UTC, datetime

import zmq

PROTOCOL_VERSION = "5.3"
DELIMITER = b"<IDS|MSG>"
#: Most seconds written text waits in a stream's buffer (ipykernel flushes every 0.2 s too).
FLUSH_SECONDS = 0.2
#: Output messages waiting for the host at most; past it, printing waits (ipykernel drops them).
IOPUB_QUEUE = 64
#: Traceback lines kept (the last ones), as the guard keeps them in ipykernel.
TRACEBACK_LINES = 200
#: Containers shown with a repr longer than this stay one line (laying them out costs more).
PRETTY_CHARS = 100_000
#: Said after a SyntaxError on a line that IPython would have run.
NOT_IPYTHON = ("This kernel runs plain Python: IPython's `!` shell commands and `%` magics are not "
               "available (subprocess.run runs commands).")
_KERNEL_FILE = os.path.abspath(__file__)
_MAIN_THREAD = threading.get_ident()
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def _pack(value, strict=True):
    """JSON bytes as jupyter_client packs them: UTF-8 with surrogateescape, so other lone
    surrogates raise UnicodeEncodeError; unless not `strict`, where they travel as JSON escapes."""
    try:
        return json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        if strict:
            raise
        return json.dumps(value, default=repr).encode("ascii")


class Interrupts:
    """SIGINT raises KeyboardInterrupt in user code only, and never between the frames of one
    message the main thread is sending: a half-sent message would garble the channel."""

    def __init__(self):
        self.enabled = False
        self.holding = 0
        self.pending = False
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if not self.enabled:
            return
        if self.holding:
            self.pending = True
            return
        raise KeyboardInterrupt

    def hold(self):
        if threading.get_ident() == _MAIN_THREAD:
            self.holding += 1

    def release(self):
        if threading.get_ident() != _MAIN_THREAD:
            return
        self.holding -= 1
        if not self.holding and self.pending:
            self.pending = False
            if self.enabled:
                raise KeyboardInterrupt

    def allow(self, enabled):
        self.enabled, self.pending = enabled, False


class Session:
    """Signs, sends, receives and verifies Jupyter messages (HMAC-SHA256 over the four parts)."""

    def __init__(self, key, interrupts):
        self.key = key
        self.id = os.urandom(16).hex()
        self.interrupts = interrupts
        self.locks = {}  # one per socket: iopub is written from any thread that prints

    def sign(self, parts):
        if not self.key:
            return b""
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def send(self, socket, msg_type, content, parent, idents=(), strict=True):
        """Send one message; `strict`: raise UnicodeEncodeError for text UTF-8 cannot carry, as
        jupyter_client does (output is sent escaped instead: the host replaces what it must)."""
        header = {"msg_id": os.urandom(16).hex(), "session": self.id, "username": "kernel",
                  "date": datetime.now(UTC).isoformat(), "msg_type": msg_type,
                  "version": PROTOCOL_VERSION}
        parts = [_pack(header), _pack(parent), b"{}", _pack(content, strict)]
        frames = [*idents, DELIMITER, self.sign(parts), *parts]
        self.interrupts.hold()
        try:
            with self.locks.setdefault(socket, threading.Lock()):
                while True:
                    try:
                        socket.send_multipart(frames, zmq.NOBLOCK)
                        break
                    except zmq.Again:  # iopub is full: the host reads slower than this kernel writes
                        time.sleep(0.005)
        finally:
            self.interrupts.release()

    def recv(self, socket, flags=0):
        """(identities, message) of the next message, or None for one unsigned or malformed."""
        frames = socket.recv_multipart(flags)
        try:
            at = frames.index(DELIMITER)
            signature, parts = frames[at + 1], frames[at + 2 : at + 6]
            if len(parts) < 4 or not hmac.compare_digest(signature, self.sign(parts)):
                return None
            header, parent, _, content = (json.loads(part) for part in parts)
        except ValueError:
            return None
        if not (isinstance(header, dict) and isinstance(content, dict)):
            return None
        return frames[:at], {"header": header, "parent_header": parent, "content": content,
                             "msg_type": header.get("msg_type")}


def shown_text(value):
    """How a cell's last expression is shown: its repr, or for a long one of the built-in
    containers, laid out over lines in insertion order, as IPython shows them."""
    text = repr(value)
    if 80 < len(text) < PRETTY_CHARS and type(value) in (dict, list, tuple, set, frozenset):
        import pprint  # on first use only

        text = pprint.pformat(value, sort_dicts=False)
    return text


def cut(text, chunk):
    """`text` within `chunk` characters: head and tail with a visible mark between."""
    if len(text) <= chunk:
        return text
    mark = f"\n[... {len(text) - chunk:,} characters cut in the kernel ...]\n"
    return text[: chunk // 2] + mark + text[-chunk // 2 :]


class Stream(io.TextIOBase):
    """sys.stdout or sys.stderr: text buffered, then sent as `stream` messages of at most `chunk`
    characters each, so a loop of prints costs a few messages, not one per write."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, kernel, name):
        self.kernel, self.name = kernel, name
        self._parts = []
        self._size = 0
        self._flushed = time.monotonic()
        self._lock = threading.RLock()  # reentrant: a signal handler may print mid-write

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            if self._size >= self.kernel.chunk or time.monotonic() - self._flushed > FLUSH_SECONDS:
                self.flush()
        return len(text)

    def flush(self):
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._flushed = time.monotonic()
            for start in range(0, len(text), self.kernel.chunk):
                self.kernel.publish("stream", {"name": self.name, "text": text[start : start + self.kernel.chunk]})


class Capture:
    """File descriptors 1 and 2 as pipes read into the streams, so that what subprocesses and C
    code write reaches the host too, as ipykernel forwards it. A thread forwards while a cell
    runs; `drain` reads the rest at the cell's end, under the lock both take to read."""

    def __init__(self, streams):
        self.lock = threading.Lock()
        self.pipes = {}
        for fd, stream in zip((1, 2), streams, strict=True):
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            os.set_blocking(read, False)
            self.pipes[read] = (stream, codecs.getincrementaldecoder("utf-8")("replace"))
        threading.Thread(target=self._forward, name="capture", daemon=True).start()

    def _forward(self):
        poller = select.poll()
        for read in self.pipes:
            poller.register(read, select.POLLIN)
        while True:
            poller.poll()
            self.drain()

    def drain(self, reads=16):
        """Forward what the pipes hold, at most `reads` reads each: a process that never stops
        writing cannot hold the caller here."""
        with self.lock:
            for read, (stream, decoder) in self.pipes.items():
                for _ in range(reads):
                    try:
                        data = os.read(read, 1 << 16)
                    except BlockingIOError:
                        break
                    stream.write(decoder.decode(data))


class Kernel:
    """The five sockets of a connection file, and the handlers of the messages the host sends."""

    def __init__(self, info, chunk):
        self.chunk = chunk
        self.interrupts = Interrupts()
        self.session = Session(info["key"].encode(), self.interrupts)
        self.context = zmq.Context()
        self.sockets = {}
        for channel, kind in (("shell", zmq.ROUTER), ("iopub", zmq.XPUB), ("stdin", zmq.ROUTER),
                              ("control", zmq.ROUTER), ("hb", zmq.REP)):
            socket = self.context.socket(kind)
            socket.linger = 1000
            if kind == zmq.XPUB:  # a PUB that makes writers wait rather than drop what the host reads slowly
                socket.setsockopt(zmq.XPUB_NODROP, 1)
                socket.sndhwm = IOPUB_QUEUE
            socket.bind(f"ipc://{info['ip']}-{info[f'{channel}_port']}")
            self.sockets[channel] = socket
        self.parent = {}
        self.idents = []
        self.allow_stdin = False
        self.count = 0
        self.loop = None  # the event loop of top-level `await`, made on first use
        # a real module as __main__, so that pickle and dataclasses find what cells define
        self.module = types.ModuleType("__main__")
        self.namespace = self.module.__dict__
        sys.modules["__main__"] = self.module
        sys.path[0] = ""  # the working directory, as in IPython; not this script's directory
        self.streams = (Stream(self, "stdout"), Stream(self, "stderr"))
        sys.stdout, sys.stderr = self.streams
        builtins.input, builtins.display = self.input, self.display
        self.log_fd = os.dup(2)  # the kernel process's own output: the host keeps its tail
        self.capture = None  # made by `capture_fds`, once the start-up file ran

    def capture_fds(self):
        self.capture = Capture(self.streams)

    # -- output -------------------------------------------------------------------------------

    def publish(self, msg_type, content):
        self.session.send(self.sockets["iopub"], msg_type, content, self.parent,
                          idents=[f"kernel.{msg_type}".encode()], strict=False)

    def flush(self):
        if self.capture is not None:
            self.capture.drain()
        for stream in self.streams:
            stream.flush()

    def display(self, *objects):
        """IPython's `display` for text: each object's repr as a `display_data` message."""
        self.flush()
        for value in objects:
            self.publish("display_data", {"data": {"text/plain": cut(repr(value), self.chunk)},
                                          "metadata": {}, "transient": {}})

    def input(self, prompt=""):
        """`input()` as a stdin request to the host; an interrupt ends the wait."""
        if not self.allow_stdin:
            raise RuntimeError("input() is not available: this request does not allow stdin")
        self.flush()
        stdin = self.sockets["stdin"]
        while stdin.poll(0):  # a reply to an earlier, interrupted request
            stdin.recv_multipart()
        self.session.send(stdin, "input_request", {"prompt": str(prompt), "password": False},
                          self.parent, idents=self.idents)  # strict: unsendable text raises here
        while True:
            got = self.session.recv(stdin)
            if got is not None and got[1]["msg_type"] == "input_reply":
                break
        value = got[1]["content"].get("value", "")
        if value == "\x04":
            raise EOFError
        return value if isinstance(value, str) else ""

    # -- running code -------------------------------------------------------------------------

    def _run(self, code):
        """Evaluate a compiled code object in the namespace, awaiting it when it is a coroutine."""
        value = eval(code, self.namespace)
        if code.co_flags & _CO_COROUTINE:
            if self.loop is None:
                import asyncio  # on first use only: it costs more to import than the rest

                self.loop = asyncio.new_event_loop()
            value = self.loop.run_until_complete(value)
        return value

    def run_cell(self, code):
        """Run one cell; returns error content (ename, evalue, traceback) or None."""
        filename = f"<cell {self.count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.interrupts.allow(True)
        try:
            try:
                tree = ast.parse(code, filename)
                shown = tree.body.pop() if (tree.body and isinstance(tree.body[-1], ast.Expr)
                                            and not code.rstrip().endswith(";")) else None
                self._run(compile(tree, filename, "exec", flags=flags))
                if shown is not None:
                    value = self._run(compile(ast.Expression(shown.value), filename, "eval", flags=flags))
                    if value is not None:
                        self.namespace["_"] = value
                        self.flush()
                        self.publish("execute_result", {"execution_count": self.count, "metadata": {},
                                                        "data": {"text/plain": cut(shown_text(value), self.chunk)}})
            finally:
                self.interrupts.allow(False)
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the kernel lives on
            return self.error(exc)
        return None

    def error(self, exc):
        """Error content for `exc`, this file's own frames left out, bounded like the guard's."""
        tb = None if isinstance(exc, SyntaxError) else exc.__traceback__  # the parser's frames tell nothing
        while tb is not None and tb.tb_frame.f_code.co_filename == _KERNEL_FILE:
            tb = tb.tb_next
        lines = "".join(traceback.format_exception(type(exc), exc, tb)).splitlines()
        if isinstance(exc, SyntaxError) and (exc.text or "").lstrip().startswith(("!", "%")):
            lines.append(NOT_IPYTHON)
        try:
            evalue = str(exc)
        except Exception:
            evalue = "<exception str() failed>"
        return {"ename": type(exc).__name__, "evalue": cut(evalue, self.chunk),
                "traceback": [cut(line, self.chunk) for line in lines[-TRACEBACK_LINES:]]}

    def evaluate(self, expression):
        """One user expression, as Jupyter reports it: its repr, or the error it raised."""
        self.interrupts.allow(True)
        try:
            try:
                value = repr(eval(expression, self.namespace))
            finally:
                self.interrupts.allow(False)
        except BaseException as exc:
            return {"status": "error", **self.error(exc)}
        return {"status": "ok", "data": {"text/plain": value}, "metadata": {}}

    # -- handlers -----------------------------------------------------------------------------

    def kernel_info(self):
        return {"status": "ok", "protocol_version": PROTOCOL_VERSION, "implementation": "rlm-lean",
                "implementation_version": "1", "banner": "rlm lean kernel", "help_links": [],
                "language_info": {"name": "python", "version": sys.version.split()[0],
                                  "mimetype": "text/x-python", "file_extension": ".py"}}

    def execute(self, content):
        code = content.get("code", "")
        self.count += 1
        self.allow_stdin = bool(content.get("allow_stdin", False))
        failure = self.run_cell(code if isinstance(code, str) else "")
        self.flush()
        if failure is not None:
            self.publish("error", failure)
            return {"status": "error", "execution_count": self.count, "user_expressions": {}, **failure}
        expressions = content.get("user_expressions") or {}
        values = {name: self.evaluate(text) for name, text in expressions.items() if isinstance(text, str)}
        self.flush()
        return {"status": "ok", "execution_count": self.count, "user_expressions": values, "payload": []}

    def handle_shell(self, idents, message):
        kind = message["msg_type"]
        if kind not in ("execute_request", "kernel_info_request"):
            return  # completion, inspection, history...: not served, as ipykernel ignores unknowns
        self.parent, self.idents = message["header"], idents
        self.publish("status", {"execution_state": "busy"})
        reply = self.execute(message["content"]) if kind == "execute_request" else self.kernel_info()
        # A user expression whose repr UTF-8 cannot carry loses the reply, as in ipykernel: the
        # host times the cell out and restarts the kernel, a clean slate. Other text travels escaped.
        try:
            self.session.send(self.sockets["shell"], kind.replace("_request", "_reply"), reply, self.parent, idents,
                              strict=bool(reply.get("user_expressions")))
        except UnicodeEncodeError as exc:
            os.write(self.log_fd, f"lean kernel: reply not sent: {exc}\n".encode())
        self.publish("status", {"execution_state": "idle"})

    def serve_control(self):
        """On its own thread: interrupts, shutdown, kernel info, and heartbeat echoes."""
        control, heartbeat = self.sockets["control"], self.sockets["hb"]
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(heartbeat, zmq.POLLIN)
        while True:
            for socket, _ in poller.poll():
                if socket is heartbeat:
                    heartbeat.send(heartbeat.recv())
                    continue
                got = self.session.recv(control)
                if got is None:
                    continue
                idents, message = got
                kind = message["msg_type"]
                if kind == "interrupt_request":
                    signal.pthread_kill(_MAIN_THREAD, signal.SIGINT)  # the main thread runs user code
                    reply = {"status": "ok"}
                elif kind == "shutdown_request":
                    reply = {"status": "ok", "restart": bool(message["content"].get("restart", False))}
                elif kind == "kernel_info_request":
                    reply = self.kernel_info()
                else:
                    continue
                self.session.send(control, kind.replace("_request", "_reply"), reply, message["header"], idents)
                if kind == "shutdown_request":
                    os._exit(0)

    def serve(self):
        threading.Thread(target=self.serve_control, name="control", daemon=True).start()
        shell = self.sockets["shell"]
        while True:
            try:
                got = self.session.recv(shell)
                if got is not None:
                    self.handle_shell(*got)
            except KeyboardInterrupt:  # one that landed between cells: nothing to stop
                continue
            except Exception:  # a request of a shape not foreseen: logged, and the kernel lives on
                os.write(self.log_fd, traceback.format_exc().encode(errors="replace"))


def main(argv):
    with open(argv[1], encoding="utf-8") as file:
        info = json.load(file)
    kernel = Kernel(info, chunk=int(argv[2]))
    if len(argv) > 3:  # like IPython's exec_files: run in the user namespace before serving
        with open(argv[3], encoding="utf-8") as file:
            source = file.read()
        try:
            exec(compile(source, argv[3], "exec"), kernel.namespace)
        except Exception:
            traceback.print_exc(file=sys.__stderr__)
        kernel.flush()
    kernel.capture_fds()
    kernel.serve()


if __name__ == "__main__":
    main(sys.argv)
