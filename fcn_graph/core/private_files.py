"""Folders and files of the cache that only this user can write, and content
digests of large files, remembered by their status.

Trust, as ssh treats keys: a cache folder or file is used only when it is
owned by this user and writable by no one else (no group or other write bit);
a folder inside the cache, or a file, must not be a symbolic link. Anything
else is ignored with one note on stderr and never run or read as ours.

    problem = untrusted(path)          # None, or why it must not be used
    problem = make_private_folder(p)   # created 0700 when missing, then checked
    write_private_file(path, data)     # O_EXCL|O_NOFOLLOW temporary + rename
    digest = file_digest(path, memo)   # SHA-256, remembered in the file `memo`

The digest memo (a small JSON file in the private cache folder) maps a file's
absolute path to its size, modification and status-change times (ns), inode
and device, and SHA-256, as version-control tools keep a file's status: when
all of them still match, the file is taken as unchanged and not read again.
A file changed within the last `RACY_SECONDS` is hashed but not remembered,
so that a write in the same clock tick as the hashing is never missed.
"""

import contextlib
import errno
import json
import os
import stat
import sys
import time
import uuid

from fcn_graph.core.fileio import file_sha256, json_text

MEMO_FORMAT = "fcn_graph.file_digests"
MEMO_VERSION = 1
MEMO_ENTRIES = 512        # the memo keeps the files hashed most recently
RACY_SECONDS = 2.0
GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH

_noted = set()            # notes already printed by this process


def note_once(text, log=None):
    """Print "note: `text`" on `log` (default stderr), once per process."""
    if text not in _noted:
        _noted.add(text)
        print(f"note: {text}", file=log or sys.stderr)


def status_problem(status, *, kind):
    """None when the `os.stat_result` `status` is a `kind` ("folder", "file",
    or None: any but a link) owned by this user and writable by no one else,
    else why not."""
    if stat.S_ISLNK(status.st_mode):
        return "is a symbolic link"
    if kind == "folder" and not stat.S_ISDIR(status.st_mode):
        return "is not a folder"
    if kind == "file" and not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    if hasattr(os, "geteuid") and status.st_uid != os.geteuid():
        return f"is owned by user id {status.st_uid}, not by this user ({os.geteuid()})"
    if status.st_mode & GROUP_OTHER_WRITE:
        return (f"is writable by {'group and others' if status.st_mode & stat.S_IWOTH else 'group'}"
                f" (mode {stat.S_IMODE(status.st_mode):04o})")
    return None


def untrusted(path, *, kind="folder", follow=False):
    """None when `path` is a `kind` ("folder" or "file") that only this user
    can write (`status_problem`), else why not; a link itself is refused
    unless `follow` (the cache folder the user names may be a link)."""
    try:
        status = os.stat(path) if follow else os.lstat(path)
    except OSError as err:
        return err.strerror or str(err)
    return status_problem(status, kind=kind)


def make_private_folder(path, *, follow=False):
    """Create the folder `path` with mode 0700 when missing (its parents with
    the usual modes); None when it is then a folder only this user can write,
    else why not. OSError when it cannot be created or is not a folder."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return untrusted(path, kind="folder", follow=follow)


def write_private_file(path, data):
    """Write the bytes `data` to `path` atomically, mode 0600: a new temporary
    file beside it (O_CREAT|O_EXCL|O_NOFOLLOW: never an existing file or a
    planted link), then renamed over `path` (which replaces a link there, never
    writes through it)."""
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def read_private_file(path):
    """The bytes of `path` when it is a regular file only this user can write
    (opened with O_NOFOLLOW, checked on the open file), else None."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if status_problem(os.fstat(handle.fileno()), kind="file") is not None:
            return None
        return handle.read()


def _signature(status):
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns,
            "ctime_ns": status.st_ctime_ns, "inode": status.st_ino, "device": status.st_dev}


def _read_memo(memo):
    data = read_private_file(memo)
    try:
        record = json.loads(data.decode("utf-8")) if data else None
    except (UnicodeDecodeError, ValueError):
        record = None
    if (not isinstance(record, dict) or record.get("format") != MEMO_FORMAT
            or record.get("version") != MEMO_VERSION or not isinstance(record.get("files"), dict)):
        return {}
    return record["files"]


def file_digest(path, memo=None):
    """SHA-256 (hex) of the file at `path` (links followed). With `memo` (the
    path of the memo file, in a folder only this user can write), a digest
    remembered for the same status is returned without reading the file, and
    a new digest is remembered; see the module docstring. OSError when the
    file cannot be read; a memo that cannot be read or written is ignored."""
    path = os.path.abspath(path)
    before = os.stat(path)
    if memo is not None:
        known = _read_memo(memo).get(path)
        if (isinstance(known, dict) and known.get("signature") == _signature(before)
                and isinstance(known.get("sha256"), str)):
            return known["sha256"]
    digest = file_sha256(path)
    after = os.stat(path)
    recent = time.time() - max(after.st_mtime, after.st_ctime) < RACY_SECONDS
    if memo is None or _signature(after) != _signature(before) or recent:
        return digest
    files = _read_memo(memo)
    files.pop(path, None)
    files[path] = {"signature": _signature(after), "sha256": digest}
    files = dict(list(files.items())[-MEMO_ENTRIES:])
    record = {"format": MEMO_FORMAT, "version": MEMO_VERSION, "files": files}
    with contextlib.suppress(OSError):
        write_private_file(memo, (json_text(record) + "\n").encode())
    return digest
