# mypy: ignore-errors
# (kernel-side code patching IPython's classes at run time; its tests check it, in real kernels)
"""Run by each kernel at start-up (as a file, not imported): keeps honest code inside the
channel limits of `sandbox.base.KernelLimits`.

It also makes a kernel waiting for the reply to a stdin request (`llm_batch` during a slow
sub-call) sleep instead of polling every 10 ms, so hundreds of waiting kernels cost no CPU.

Stream output leaves in pieces of at most `chunk` characters; display data, results and
tracebacks are cut to `chunk` characters with a visible mark. User expressions are not cut:
they travel on the shell channel, whose limit is larger. Hostile code can undo all of this;
the host's limits in `sandbox.wire` still hold then, and the kernel is restarted instead.
"""


def _rlm_guard(chunk):
    """Install the bounds in this kernel."""
    import sys

    from IPython import get_ipython

    def cut(text):
        if len(text) <= chunk:
            return text
        mark = f"\n[... {len(text) - chunk:,} characters cut in the kernel ...]\n"
        return text[: chunk // 2] + mark + text[-chunk // 2 :]

    # Patched on the class: IPython swaps the instances' `write` attributes around each cell.
    stream_type = type(sys.stdout)
    write_all = stream_type.write

    def write(self, text):
        pending = getattr(self, "_rlm_pending", 0)
        if not isinstance(text, str) or (len(text) <= chunk and pending + len(text) < chunk):
            self._rlm_pending = pending + (len(text) if isinstance(text, str) else 0)
            return write_all(self, text)
        for start in range(0, len(text), chunk):
            write_all(self, text[start : start + chunk])
            self.flush()
        self._rlm_pending = 0
        return len(text)

    stream_type.write = write

    def cut_data(data):
        for key, value in list(data.items()):
            if isinstance(value, str) and len(value) > chunk:
                if key.startswith("text/"):
                    data[key] = cut(value)
                else:
                    del data[key]  # an image or other binary payload cannot be cut and stay valid
        return data

    if "debugpy" in sys.modules and sys.modules["debugpy"] is None:  # blocked for start-up only
        del sys.modules["debugpy"]
    shell = get_ipython()
    publish = shell.display_pub.publish
    shell.display_pub.publish = lambda data, *args, **kwargs: publish(cut_data(dict(data)), *args, **kwargs)
    write_format_data = shell.displayhook.write_format_data
    shell.displayhook.write_format_data = lambda data, *args: write_format_data(cut_data(dict(data)), *args)
    show = shell._showtraceback

    class Short:
        def __init__(self, value):
            self.value = value

        def __str__(self):
            return cut(str(self.value))

    def showtraceback(etype, evalue, stb):
        return show(etype, Short(evalue), [cut(line) for line in stb[-200:]])

    shell._showtraceback = showtraceback
    _rlm_quiet_input(shell.kernel)


def _rlm_quiet_input(kernel):
    """Replace ipykernel's wait for an input reply (a `zmq.select` every 10 ms, so that SIGINT is
    noticed) with a sleep in `zmq.poll` that a signal wakes through `signal.set_wakeup_fd`:
    an interrupt still lands at once, and waiting costs nothing."""
    import os
    import signal
    import sys
    import types

    import zmq

    # Installed once, from the main thread (start-up files run there), and never closed: nothing
    # else in the kernel sets a wake-up fd, and one left behind can do no harm.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)

    def wait_for_reply(socket):
        """Whether `socket` became readable; returns early on any signal so its handler runs
        (SIGINT raises KeyboardInterrupt). The one-second bound covers code that replaced the
        wake-up fd, or waits off the main thread: a signal is then noticed within a second."""
        try:
            while os.read(wake_read, 512):  # signals already handled
                pass
        except BlockingIOError:
            pass
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN | zmq.POLLERR)
        poller.register(wake_read, zmq.POLLIN)
        return socket in dict(poller.poll(1000))

    def input_request(self, prompt, ident, parent, password=False):
        if sys.stdout is not None:
            sys.stdout.flush()
        if sys.stderr is not None:
            sys.stderr.flush()
        while True:  # stale replies from an earlier, interrupted request
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        self.session.send(self.stdin_socket, "input_request", {"prompt": prompt, "password": password},
                          parent, ident=ident)
        while True:
            try:
                if wait_for_reply(self.stdin_socket):
                    ident, reply = self.session.recv(self.stdin_socket)
                    if (ident, reply) != (None, None):
                        break
            except KeyboardInterrupt:
                raise KeyboardInterrupt("Interrupted by user") from None
            except Exception:
                self.log.warning("Invalid Message:", exc_info=True)
        try:
            value = reply["content"]["value"]
        except Exception:
            self.log.error("Bad input_reply: %s", parent)
            value = ""
        if value == "\x04":
            raise EOFError
        return value

    kernel._input_request = types.MethodType(input_request, kernel)
