# mypy: ignore-errors
# (kernel-side code patching IPython's classes at run time; its tests check it, in real kernels)
"""Run by each kernel at start-up (as a file, not imported): keeps honest code inside the
channel limits of `sandbox.base.KernelLimits`.

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
