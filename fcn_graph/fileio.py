"""Atomic file writes: a reader never sees a partly written file."""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path`; move it over `path` on success.

    The temporary file lives in the same directory, so `os.replace` is atomic.
    If the block raises, the temporary file is removed and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    os.close(fd)
    # mkstemp creates the file private; give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path, obj):
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False)
            handle.write("\n")
