"""Calls that must not block: a test fails instead of hanging the suite."""

import threading


def within(seconds, fn, *args):
    """fn(*args) in a daemon thread; its result, or its exception re-raised here.
    Fails when the call is still running after `seconds` (a FIFO or device
    read that blocks)."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as err:  # handed to the caller below
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked for {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]
