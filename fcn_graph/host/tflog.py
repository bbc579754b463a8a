"""TensorFlow's start-up lines, kept out of a command's standard error.

While TensorFlow loads, its C++ libraries (two of them, each with its own absl)
write a few lines straight to file descriptor 2, before any logging setting
applies, so TF_CPP_MIN_LOG_LEVEL does not silence them:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. You may see ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.

and on a machine without CUDA, the first GPU probe (a session, or a device
listing) adds

    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

`filtered_stderr()` points file descriptor 2 at a pipe for the length of a
`with` block; a thread passes every line on to the real standard error as it
arrives, in order, except the exact start-up lines above (`StartupFilter`).
The cuInit failure is dropped only after the "Could not find cuda drivers"
line, i.e. where no CUDA library is installed at all. The real standard error
is restored when the block ends, however it ends.

`import_tensorflow_quietly()` imports TensorFlow and probes for GPUs inside
that block; every command calls it through `load_tensorflow()` after parsing
its arguments, before it imports the library modules that use TensorFlow.
With TF_CPP_MIN_LOG_LEVEL=0 in the environment nothing is filtered.
"""

import contextlib
import os
import re
import signal
import sys
import threading

_PREFIX = rb"[IWEF]\d{4} [\d:.]+ +\d+ "
ABSL_PREAMBLE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    rb"STDERR\r?\n?\Z")
ONEDNN_NOTICE = re.compile(
    _PREFIX + rb"port\.cc:\d+\] oneDNN custom operations are on\. You may see slightly "
    rb"different numerical results due to floating-point round-off errors from different "
    rb"computation orders\. To turn them off, set the environment variable "
    rb"`TF_ENABLE_ONEDNN_OPTS=0`\.\r?\n?\Z")
NO_CUDA = re.compile(
    _PREFIX + rb"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will "
    rb"not be used\.\r?\n?\Z")
CUINIT_FAILED = re.compile(_PREFIX + rb"cuda_platform\.cc:\d+\] failed call to cuInit: ")

class StartupFilter:
    """`keep(line)`: False for TensorFlow's known start-up lines (bytes), True
    for every other line."""

    def __init__(self):
        self.no_cuda = False

    def keep(self, line):
        if ABSL_PREAMBLE.match(line) or ONEDNN_NOTICE.match(line):
            return False
        if NO_CUDA.match(line):
            self.no_cuda = True
            return False
        if self.no_cuda and CUINIT_FAILED.match(line):
            return False
        return True


def filtering_enabled():
    """False when TF_CPP_MIN_LOG_LEVEL=0 asks for all of TensorFlow's lines."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() != "0"


@contextlib.contextmanager
def filtered_stderr(keep=None):
    """Inside the block, lines written to file descriptor 2 reach the real
    standard error only where `keep(line)` is true (default: `StartupFilter`).

    Lines are passed on as they arrive, in order; a last line without a newline
    is passed on when the block ends. File descriptor 2 is restored on the way
    out, also on an exception or Ctrl-C.
    """
    keep = keep or StartupFilter().keep
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error at all: nothing to filter
        yield
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:  # out of file descriptors: run unfiltered rather than fail
        os.close(saved)
        yield
        return
    forwarder = threading.Thread(target=_forward, args=(read_end, saved, keep),
                                 name="stderr-filter", daemon=True)
    forwarder.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        _flush_python_stderr()
        os.dup2(saved, 2)  # closes the pipe's last write end in this process
        # A child process started inside the block may hold the write end open;
        # the thread then keeps forwarding its lines after the block.
        forwarder.join(timeout=5)
        if not forwarder.is_alive():
            os.close(saved)


def _forward(read_end, out_fd, keep):
    pending = b""
    try:
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            _write_all(out_fd, b"".join(line + b"\n" for line in lines if keep(line + b"\n")))
        if pending and keep(pending):
            _write_all(out_fd, pending)
    finally:
        os.close(read_end)


def _write_all(fd, data):
    while data:
        try:
            written = os.write(fd, data)
        except OSError:  # standard error itself is gone: nothing left to tell
            return
        data = data[written:]


def _flush_python_stderr():
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def import_tensorflow_quietly():
    """Import TensorFlow and probe for GPUs with the start-up lines filtered out."""
    if not filtering_enabled():
        return
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


def load_tensorflow():
    """Load TensorFlow for a command, once its arguments are parsed.

    TF_CPP_MIN_LOG_LEVEL defaults to 2 (TensorFlow's C++ info and warning
    lines off; errors still show) and the start-up lines are filtered out
    (`import_tensorflow_quietly`). A Ctrl-C meanwhile is held until the import
    is over (code inside it may swallow a KeyboardInterrupt) and then raised
    as KeyboardInterrupt, which `errors.run_cli` reports on one line. Nothing
    happens when TensorFlow is already loaded.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threading.current_thread() is not threading.main_thread():
        import_tensorflow_quietly()
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        import_tensorflow_quietly()
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
