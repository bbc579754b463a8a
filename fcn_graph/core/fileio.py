"""Atomic file writes: a target is either its old self or complete, never partial."""

import contextlib
import errno
import json
import os
import stat
import tempfile
import time
import uuid

import numpy as np

from fcn_graph.core.errors import UserError


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
    naming `where` (standard JSON has no such values; write None instead).

    Text is written as it is, except where it holds file names that are not
    UTF-8 (Python keeps their bytes as lone surrogates, os.fsdecode): then
    every non-ASCII character is written as a \\u escape, which json.loads
    reads back to the same string, so os.fsencode gives the same bytes."""
    try:
        text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False,
                          default=_json_default)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj, indent=indent, ensure_ascii=True, allow_nan=False,
                              default=_json_default)
        return text
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


# -- output paths ------------------------------------------------------------------

def kind_of(mode):
    """What a file of `st_mode` is, in words: "a directory", "a FIFO", ..."""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link"),
                        (stat.S_ISREG, "a regular file")):
        if test(mode):
            return words
    return "not a regular file"


class NotARegularFile(OSError):
    """`read_regular_file` found a directory, FIFO, device or socket; `mode` is
    its st_mode."""

    def __init__(self, path, mode):
        super().__init__(f"{path}: is {kind_of(mode)}, not a regular file")
        self.filename, self.mode = path, mode


def read_regular_file(path):
    """The bytes of the regular file at `path`.

    The file is opened without blocking and checked before any read, so a
    FIFO, a device, a socket or a directory raises NotARegularFile instead of
    blocking or reading forever; other failures raise the OSError that
    opening or reading raised.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, mode)
        return f.read()


def _file_above(path):
    """The nearest existing ancestor of `path` that is not a directory, or None."""
    path = os.path.abspath(path)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
        if os.path.lexists(path) and not os.path.isdir(path):
            return path


def ensure_output_dir(path, flag):
    """Create folder `path` and its parents where missing, and check that files
    can be created in it (by creating an unnamed temporary file).

    Raises UserError naming `flag` and `path` when `path` is not a directory,
    lies under a file, or cannot be created or written.
    """
    path = os.fspath(path)
    where = f"{flag} {path}" if flag else path
    if os.path.lexists(path) and not os.path.isdir(path):
        problem = link_problem(path) or f"is {kind_of(os.lstat(path).st_mode)}"
        raise UserError(f"{where}: {problem}; expected a folder (or a path to create one at)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        above = _file_above(path)
        if above is not None:
            raise UserError(f"{where}: cannot create this folder; {above} is "
                            f"{kind_of(os.lstat(above).st_mode)}, not a folder") from None
        raise UserError(f"{where}: cannot create this folder ({err.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{where}: cannot write in this folder ({err.strerror})") from None


def check_output_file(path, flag):
    """Prepare to write file `path`: create its folder where missing and check
    that it can be written there. Returns True when `path` already exists (a
    regular file; what may replace it is the caller's rule).

    Raises UserError naming `flag` and `path` when `path` is a directory or
    another non-regular file, or its folder cannot be created or written.
    """
    path = os.fspath(path)
    where = f"{flag} {path}" if flag else path
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{where}: is {kind_of(mode)}; expected a file to write")
    ensure_output_dir(directory, f"{flag} {path}: folder" if flag else f"{path}: folder")
    return os.path.exists(path)


def json_written_with(path, keys):
    """Whether file `path` is a JSON object holding every key in `keys`: an
    earlier output of the writer that puts those keys there."""
    try:
        with open(path, "rb") as handle:
            record = json.loads(handle.read(1 << 24).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and all(key in record for key in keys)


OUTPUT_RECORD = ".fcn_graph-outputs.json"
RECORD_FORMAT = "fcn_graph.outputs"


class OutputFolder:
    """A folder that a command writes many files into, and the record of the
    files fcn_graph wrote there, FOLDER/.fcn_graph-outputs.json.

    The record maps each file name written to its size and modification time.
    A file counts as fcn_graph's own while both still match, or while it is
    claimed by a run that has not recorded it yet (a run that was killed).
    `claim` refuses to let a run write over any other existing file: a user's
    file, or one of fcn_graph's that was edited since, is never replaced, and
    neither is an input of the run.
    """

    def __init__(self, directory, flag):
        ensure_output_dir(directory, flag)
        self.directory = os.fspath(directory)
        self.flag = flag
        self.path = os.path.join(self.directory, OUTPUT_RECORD)
        self.files = self._load()
        self._changed = False
        self._flushed = time.monotonic()

    def _load(self):
        if not os.path.lexists(self.path):
            return {}
        problem = None
        try:
            if not os.path.isfile(self.path):
                raise OSError(0, f"it is {kind_of(os.lstat(self.path).st_mode)}")
            with open(self.path, "rb") as handle:
                record = json.loads(handle.read().decode("utf-8"))
            if not (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
                    and isinstance(record.get("files"), dict)
                    and all(isinstance(v, dict) for v in record["files"].values())):
                problem = f"expected a JSON object with format {RECORD_FORMAT!r} and files"
            else:
                files = record["files"]
        except OSError as err:
            problem = err.strerror
        except (UnicodeDecodeError, ValueError) as err:
            problem = f"not JSON: {err}"
        if problem is not None:
            raise UserError(f"{self.path}: not a readable record of the files fcn_graph wrote "
                            f"in {self.directory} ({problem}); move it away (existing files "
                            "there will then be refused) or choose another "
                            f"{self.flag or 'folder'}")
        return {name: entry for name, entry in files.items()
                if os.path.lexists(os.path.join(self.directory, name))}

    def owns(self, name):
        """Whether existing file `name` is one that fcn_graph wrote here."""
        entry = self.files.get(name)
        if entry is None:
            return False
        if entry.get("pending"):
            return True
        info = os.lstat(os.path.join(self.directory, name))
        return (stat.S_ISREG(info.st_mode) and entry.get("size") == info.st_size
                and entry.get("mtime_ns") == info.st_mtime_ns)

    def claim(self, names, inputs=()):
        """Check that this run may write every file in `names` (names within the
        folder), then record them as claimed.

        `inputs` are the paths this run reads; an output that is the same file
        as one of them (by its directory entry or the file it links to) is
        refused, naming both. Any other existing file that fcn_graph did not
        write here, a directory or a link is refused too.
        """
        protected = {}
        for path in inputs:
            for fn in (os.lstat, os.stat):
                with contextlib.suppress(OSError):
                    info = fn(path)
                    protected.setdefault((info.st_dev, info.st_ino), path)
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            where = f"{self.flag} {self.directory}" if self.flag else self.directory
            source = protected.get((info.st_dev, info.st_ino))
            if source is not None:
                raise UserError(f"{path}: is the input {source}; refusing to write an output "
                                f"over an input (choose another {self.flag or 'folder'})")
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{path}: is {kind_of(info.st_mode)}; expected to write a file "
                                f"there (move it or choose another {self.flag or 'folder'})")
            if not self.owns(name):
                raise UserError(f"{path}: exists and was not written by fcn_graph into {where} "
                                f"(or was changed since; see {OUTPUT_RECORD}); refusing to "
                                f"overwrite it: move it or choose another "
                                f"{self.flag or 'folder'}")
        for name in names:
            self.files[name] = {"pending": True}
        self._changed = True
        self.flush()

    def wrote(self, name):
        """Record that file `name` has been written; the record is saved every
        few seconds and by `flush`."""
        info = os.stat(os.path.join(self.directory, name))
        self.files[name] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        self._changed = True
        if time.monotonic() - self._flushed > 5.0:
            self.flush()

    def flush(self):
        """Save the record (atomically) if it changed."""
        if not self._changed:
            return
        record = {"format": RECORD_FORMAT,
                  "note": "files fcn_graph wrote in this folder; it overwrites only these",
                  "files": dict(sorted(self.files.items()))}
        try:
            write_json_atomic(self.path, record)
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from None
        self._changed = False
        self._flushed = time.monotonic()


def cache_dir(environ=None):
    """The cache folder: $FCN_GRAPH_CACHE, else $XDG_CACHE_HOME/fcn_graph, else
    ~/.cache/fcn_graph (empty variables count as unset)."""
    environ = os.environ if environ is None else environ
    if environ.get("FCN_GRAPH_CACHE"):
        return environ["FCN_GRAPH_CACHE"]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fcn_graph")


# -- input paths -------------------------------------------------------------------

def link_problem(path):
    """Why `path` does not lead to a file because of symbolic links, in words
    ("is a symbolic link loop", "is a dangling symbolic link to X"), or None
    when it resolves (or is missing for another reason)."""
    try:
        os.stat(path)
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return ("is a symbolic link loop" if os.path.islink(path)
                    else "passes through a symbolic link loop")
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                return "is a dangling symbolic link"
            return f"is a dangling symbolic link to {target}"
    return None


def input_problem(path, *, folder=False):
    """Why `path` cannot be read as an input, in words ("no such file",
    "is a FIFO", "is a dangling symbolic link to X", "is a directory"...), or
    None when it is a readable regular file (a readable directory with
    `folder=True` too). Nothing is opened, so nothing blocks."""
    problem = link_problem(path)
    if problem is not None:
        return problem
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file or directory" if folder else "no such file"
    except NotADirectoryError:
        return "a part of this path is not a directory"
    except OSError as err:
        return f"cannot be examined ({err.strerror})"
    if not (stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode))):
        return f"is {kind_of(mode)}"
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        return "cannot be read (permission denied)"
    return None


def check_input_file(path, expected, *, folder=False):
    """Raise UserError "PATH: PROBLEM; expected EXPECTED" unless `path` is a
    readable regular file (or, with `folder=True`, a readable directory); see
    `input_problem`."""
    problem = input_problem(path, folder=folder)
    if problem is not None:
        raise UserError(f"{os.fspath(path)}: {problem}; expected {expected}")
