"""Atomic file writes: a target is either its old self or complete, never partial."""

import contextlib
import json
import os
import uuid

import numpy as np

from fcn_graph.errors import UserError


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path`; move it onto `path` on success.

    Rules:
    - The temporary file lives in the same directory as `path` (so that the
      final `os.replace` is a rename within one file system, atomic on POSIX
      and Windows) and keeps the extension of `path` (so that writers that
      pick a format by extension, such as OpenCV, still work). Its name starts
      with a dot and contains `.tmp`.
    - The caller creates the temporary file itself; it is created with the
      ordinary permissions of the process (umask), not mkstemp's 0600.
    - If the body raises (KeyboardInterrupt included), the temporary file is
      removed and `path` is left untouched.
    - If the body returns without creating the temporary file, that is an
      error: nothing would have been written.
    - No fsync: this guards against crashes of the program, not of the
      machine.

    Raises UserError when the directory of `path` does not exist or `path` is
    a directory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise UserError(
            f"{path}: cannot write; directory {directory!r} does not exist (create it first)"
        )
    if os.path.isdir(path):
        raise UserError(f"{path}: cannot write a file; a directory of that name exists")
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    tmp = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"{path}: the writer produced no file (expected {tmp})")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _json_default(obj):
    """Let json write NumPy scalars and arrays as plain numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def json_text(obj, *, indent=None, where="JSON"):
    """`obj` as strict JSON text: NaN and infinite numbers raise ValueError
    naming `where` (standard JSON has no such values; write None instead)."""
    try:
        return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False,
                          default=_json_default)
    except ValueError as err:
        raise ValueError(f"{where}: {err} (NaN and infinite numbers have no strict JSON "
                         "form; undefined values are written as null)") from None


def write_json_atomic(path, obj, *, indent=2):
    """Write `obj` as UTF-8 JSON (keys in insertion order, trailing newline), atomically.

    NumPy scalars and arrays are written as numbers and lists. The JSON is
    strict: NaN and infinite numbers raise ValueError naming `path`, and anything
    else that json cannot write raises TypeError, both before `path` is touched.
    """
    text = json_text(obj, indent=indent, where=path) + "\n"
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
