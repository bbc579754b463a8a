"""An exclusive lock on a training log directory.

`fcntl.flock` on `LOG_DIR/.lock`: the kernel drops the lock when the process
ends, however it ends (SIGKILL and crashes included), so a stale lock file
never blocks a later run. The file holds one JSON line describing the holder
(pid, host, start time, command) for the message a second run prints.
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import open_own

LOCK_NAME = ".lock"


@contextlib.contextmanager
def locked_log_dir(log_dir):
    """Hold the lock on `log_dir` for the body; UserError at once, naming the
    holder, when another process holds it."""
    path = os.path.join(log_dir, LOCK_NAME)
    try:
        fd = open_own(path, os.O_RDWR | os.O_CREAT)  # never a planted link or foreign file
    except OSError as err:
        raise UserError(f"{path}: cannot create the lock file of train.log_dir: "
                        f"{err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{log_dir}: another training run is using this train.log_dir "
                            f"({_describe(fd)}); wait for it to finish or stop it, or set "
                            "train.log_dir to another directory") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        except OSError as err:
            raise UserError(f"{path}: cannot write the lock file of train.log_dir: "
                            f"{err.strerror}") from None
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays, empty of meaning


def _describe(fd):
    """'pid 12, host h, started ..., command ...' from the holder's record."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return (f"pid {record['pid']} on host {record['host']}, started {record['started']}: "
                f"{record['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "its lock file does not say which; it is starting or stopping"
