"""Reading, computing and writing overlapped, in order.

    run_pipeline(paths, read=decode, compute=segment, write=save)

`read(item)` runs in a reader thread, item after item, up to `read_ahead`
results ahead of the computation; `compute(pairs)`, a generator function
that takes the iterator of (item, read(item)) pairs in order and yields
results, runs in the calling thread (the network, which runs its own threads
inside); `write(result)` runs in a writer thread, in the order the results
were yielded, up to `write_behind` results behind. With the three stages
about as fast as the slowest, the time per item is the slowest stage's.

Rules:
- Order is kept at every stage; the queues are bounded, so memory holds at
  most read_ahead + write_behind results besides what `compute` keeps.
- An exception raised by `read` or `write` (KeyboardInterrupt included) is
  raised again in the calling thread: for `read`, at its place in the order,
  once the results of the earlier items are written; for `write`, as soon as
  it is seen. The other workers stop.
- When the calling thread stops early (an exception in `compute`, Ctrl-C),
  the reader stops after the item it is reading, and the writer after the
  result it is writing (results not yet written are dropped); `run_pipeline`
  returns or raises only once both threads have ended, so no write goes on
  behind the caller's back.
"""

import contextlib
import queue
import signal
import threading

_END = object()
POLL_SECONDS = 0.05  # how often a blocked worker looks whether the run stopped


class _Raised:
    """An exception of a worker, carried to the calling thread."""

    def __init__(self, error):
        self.error = error


def run_pipeline(items, *, read, compute, write, read_ahead=2, write_behind=2):
    """Run `read`, `compute` and `write` over `items` overlapped (see the
    module docstring). Returns None once every result is written."""
    if read_ahead < 1 or write_behind < 1:
        raise ValueError(f"read_ahead and write_behind: expected at least 1, found "
                         f"{read_ahead} and {write_behind}")
    stop = threading.Event()
    inbox, outbox = queue.Queue(read_ahead), queue.Queue(write_behind)
    failed = []  # the writer's exception
    reader_failed = []

    def put(box, value):
        """Put `value`, waiting for room; False when the run stopped first."""
        while not stop.is_set():
            try:
                box.put(value, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            for item in items:
                if stop.is_set():
                    return
                value = read(item)
                if not put(inbox, (item, value)):
                    return
        except BaseException as err:  # carried to the calling thread
            put(inbox, _Raised(err))
            return
        put(inbox, _END)

    def writer():
        while True:
            try:
                result = outbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if result is _END or stop.is_set():
                return
            try:
                write(result)
            except BaseException as err:  # carried to the calling thread
                failed.append(err)
                stop.set()
                return

    def check_writer():
        if failed:
            raise failed[0]

    def pairs():
        while True:
            check_writer()
            try:
                got = inbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if got is _END:
                return
            if isinstance(got, _Raised):
                reader_failed.append(got.error)
                raise got.error
            yield got

    threads = [threading.Thread(target=reader, name="pipeline-reader", daemon=True),
               threading.Thread(target=writer, name="pipeline-writer", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        for result in compute(pairs()):
            check_writer()
            if not put(outbox, result):
                break
        check_writer()
        put(outbox, _END)
        threads[1].join()
        check_writer()
    except BaseException:
        if reader_failed and not stop.is_set():
            put(outbox, _END)  # the results before the failed read are written first
            threads[1].join()
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@contextlib.contextmanager
def terminate_as_interrupt():
    """Inside the block, SIGTERM raises KeyboardInterrupt in the main thread,
    as Ctrl-C does, so that a terminated run stops the way an interrupted one
    does. Outside the main thread, or where SIGTERM is ignored, it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
