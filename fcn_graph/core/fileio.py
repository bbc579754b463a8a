"""Safe file writes: atomic (a target is either its old self or complete, never
partial), never through a link or over another user's file planted at the
target's name, and replacing only what the folder's record of fcn_graph's
outputs shows it wrote (`OutputFolder`, `claim_output`)."""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
import uuid

import numpy as np

from fcn_graph.core.errors import UserError


def refuse_planted(path, *, directory_ok=False):
    """Check that `path` is absent or an entry fcn_graph may replace: a regular
    file (or, with `directory_ok`, a directory) that this user owns. A
    symbolic link, any other kind of file, or a file of another user (planted
    in a shared folder) raises UserError naming `path`. Returns its lstat
    result, or None when `path` does not exist."""
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise UserError(f"{path}: is a symbolic link; fcn_graph never writes through a link "
                        "(remove it, or choose another path)")
    if stat.S_ISDIR(info.st_mode) and not directory_ok:
        raise UserError(f"{path}: cannot write a file; a directory of that name exists")
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise UserError(f"{path}: is {kind_of(info.st_mode)}; expected a file to write")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise UserError(f"{path}: belongs to another user (uid {info.st_uid}); fcn_graph "
                        "replaces only files of its own user (move it, or choose another path)")
    return info


def open_own(path, flags, mode=0o644):
    """`os.open(path, flags | O_NOFOLLOW)` for a file that fcn_graph creates or
    appends to in a folder others may write in: returns the descriptor of a
    regular file of this user with one link. A symbolic link in its place, any
    other kind of file, a file of another user or a hard link to a file
    elsewhere raises UserError naming `path`; nothing has been written then."""
    path = os.fspath(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP or os.path.islink(path):
            raise UserError(f"{path}: is a symbolic link; fcn_graph never writes through a "
                            "link (remove it)") from None
        if err.errno == errno.ENXIO:  # a FIFO without a reader
            raise UserError(f"{path}: is a FIFO; expected a file to write") from None
        raise
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"is {kind_of(info.st_mode)}; expected a file to write"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = f"belongs to another user (uid {info.st_uid}); fcn_graph writes only its own files"
    elif info.st_nlink != 1:
        problem = (f"has {info.st_nlink} hard links; fcn_graph writes only a file of its own "
                   "that no other name shares")
    if problem is not None:
        os.close(fd)
        raise UserError(f"{path}: {problem} (move it away)")
    if getattr(os, "O_NONBLOCK", 0):
        os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path beside `path`; move it onto `path` on success.

    Rules:
    - The temporary file lives in the same directory as `path` (so that the
      final `os.replace` is a rename within one file system, atomic on POSIX
      and Windows) and keeps the extension of `path` (so that writers that
      pick a format by extension, such as OpenCV, still work). Its name starts
      with a dot and contains `.tmp` and 48 random bits.
    - The caller creates the temporary file itself; it is created with the
      ordinary permissions of the process (umask), not mkstemp's 0600.
    - If the body raises (KeyboardInterrupt included), the temporary file is
      removed and `path` is left untouched.
    - If the body returns without creating the temporary file, that is an
      error: nothing would have been written.
    - Never through a planted link: `path` must be absent or a regular file
      of this user (`refuse_planted`), checked before the body and again
      before the rename, and the temporary file must still be a regular file
      of this user. A `path` that was absent is put in place with a hard link,
      which fails rather than replace a file created there meanwhile. The
      rename replaces directory entries, so it never writes into the file a
      link points to.
    - No fsync: this guards against crashes of the program, not of the
      machine.

    Raises UserError when the directory of `path` does not exist, or `path`
    is a directory, a link, another kind of file or another user's file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise UserError(
            f"{path}: cannot write; directory {directory!r} does not exist (create it first)"
        )
    before = refuse_planted(path)
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    tmp = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise RuntimeError(f"{path}: the writer produced no file (expected {tmp})")
        refuse_planted(tmp)
        now = refuse_planted(path)
        if before is None and now is None:
            _link_new(tmp, path)
        elif before is None or now is None or (now.st_dev, now.st_ino) != (before.st_dev,
                                                                           before.st_ino):
            raise UserError(f"{path}: was created, replaced or removed by someone else while "
                            "fcn_graph wrote it; left as it is (run again)")
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def place_file(tmp, path):
    """Move file `tmp` onto `path` (in the same folder): replacing `path` only
    when it is a regular file of this user (`refuse_planted`), and, when
    `path` is absent, never replacing a file that appears there meanwhile."""
    if refuse_planted(path) is None:
        _link_new(tmp, path)
    else:
        os.replace(tmp, path)


def _link_new(tmp, path):
    """Put file `tmp` at the absent name `path` without replacing anything
    that appeared there (a hard link, then `tmp` removed); where the file
    system has no hard links, a rename."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise UserError(f"{path}: was created by someone else while fcn_graph wrote it; "
                        "left as it is (move it away and run again)") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
                             errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        os.replace(tmp, path)
        return
    with contextlib.suppress(FileNotFoundError):  # removed by another clean-up meanwhile
        os.remove(tmp)


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


OUTPUT_RECORD = ".fcn_graph-outputs.json"
RECORD_FORMAT = "fcn_graph.outputs"


def fingerprint(path):
    """The SHA-256 of what `path` holds, without following links: a regular
    file's bytes, or for a folder every entry's relative name, kind and
    content, in name order. None when `path` is anything else."""
    info = os.lstat(path)
    digest = hashlib.sha256()
    if stat.S_ISREG(info.st_mode):
        _hash_file(path, digest)
    elif stat.S_ISDIR(info.st_mode):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(dirs + files):
                full = os.path.join(root, name)
                mode = os.lstat(full).st_mode
                digest.update(os.path.relpath(full, path).encode("utf-8", "surrogateescape"))
                digest.update(b"\0" + kind_of(mode).encode() + b"\0")
                if stat.S_ISREG(mode):
                    _hash_file(full, digest)
                elif stat.S_ISLNK(mode):
                    digest.update(os.readlink(full).encode("utf-8", "surrogateescape"))
    else:
        return None
    return digest.hexdigest()


def file_sha256(path, *, follow=True):
    """SHA-256 (hex) of the regular file at `path`, read in chunks; a FIFO,
    device or folder raises NotARegularFile before any read, and with
    `follow` False a symbolic link raises OSError (ELOOP)."""
    digest = hashlib.sha256()
    _hash_file(path, digest, follow=follow)
    return digest.hexdigest()


def _hash_file(path, digest, *, follow=False):
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, mode)
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)


class OutputFolder:
    """A folder that commands write files into, and the record of the files
    fcn_graph wrote there, FOLDER/.fcn_graph-outputs.json.

    The record maps each name written (a file, or a folder such as a
    SavedModel) to its size and the SHA-256 of its content (`fingerprint`).
    An entry counts as fcn_graph's own while both still match, or while it is
    claimed by a run that has not recorded it yet (a run that was killed); a
    file on record when a run claims it keeps its fingerprint until recorded
    again, so an edit after a failed run is still seen.
    `claim` refuses to let a run write over any other existing file: a user's
    file, or one of fcn_graph's that was edited since (unless `force`), is
    never replaced, and neither is an input of the run, a link or another
    user's file.

    Several processes may write into one folder at once: every change of the
    record is a read-modify-write under an exclusive `flock` on the folder,
    which keeps the other writers' entries.
    """

    def __init__(self, directory, flag, *, one_file=False):
        ensure_output_dir(directory, flag)
        self.directory = os.fspath(directory)
        self.flag = flag
        self.one_file = one_file  # `flag` names one file of the folder, not the folder
        self.path = os.path.join(self.directory, OUTPUT_RECORD)
        self.files = self._load()
        self._mine = {}  # the entries this object set, merged into the record on save
        self._flushed = time.monotonic()

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive flock on the folder for the body (other writers wait)."""
        fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self):
        if not os.path.lexists(self.path):
            return {}
        problem = None
        try:
            mode = os.lstat(self.path).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(0, f"it is {kind_of(mode)}")
            record = json.loads(read_regular_file(self.path).decode("utf-8"))
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

    def owns(self, name, *, force=False):
        """Whether existing entry `name` is one that fcn_graph wrote here and
        nobody changed since; with `force`, whether fcn_graph wrote it here,
        changed or not. Never a link or another user's file."""
        entry = self.files.get(name)
        if entry is None:
            return False
        path = os.path.join(self.directory, name)
        info = os.lstat(path)
        if (stat.S_ISLNK(info.st_mode)
                or hasattr(os, "geteuid") and info.st_uid != os.geteuid()):
            return False
        if entry.get("pending") or force:
            return True
        if "sha256" not in entry:  # a record of an earlier version: size and time
            return (stat.S_ISREG(info.st_mode) and entry.get("size") == info.st_size
                    and entry.get("mtime_ns") == info.st_mtime_ns)
        if stat.S_ISREG(info.st_mode) and entry.get("size") != info.st_size:
            return False
        return entry["sha256"] == fingerprint(path)

    def claim(self, names, inputs=(), *, force=False, folders=()):
        """`check` that this run may write every entry in `names` (names within
        the folder), then record them as claimed."""
        with self._locked():
            self._check(names, inputs, force, folders)
            for name in names:
                # A file on record stays on its fingerprint until rewritten: a run
                # that fails before recording it cannot make an edit of it count.
                entry = self.files.get(name)
                if not (entry and "sha256" in entry
                        and os.path.lexists(os.path.join(self.directory, name))):
                    entry = {"pending": True}
                self._mine[name] = self.files[name] = entry
            self._save()

    def check(self, names, inputs=(), *, force=False, folders=()):
        """Check that this run may write every entry in `names` (names within
        the folder), recording nothing.

        `inputs` are the paths this run reads; an output that is the same file
        as one of them (by its directory entry or the file it links to) is
        refused, naming both. Any other existing file that fcn_graph did not
        write here (with `force`: wrote here, changed since or not), a link,
        another user's file, or a directory not named in `folders` is refused.
        """
        with self._locked():
            self._check(names, inputs, force, folders)

    def _check(self, names, inputs, force, folders):
        protected = {}
        for path in inputs:
            for fn in (os.lstat, os.stat):
                with contextlib.suppress(OSError):
                    info = fn(path)
                    protected.setdefault((info.st_dev, info.st_ino), path)
        self.files = self._load()
        for name in names:
            self._check_claim(name, protected, force, name in folders)

    def _check_claim(self, name, protected, force, folder):
        path = os.path.join(self.directory, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        other = f"choose another {self.flag or 'folder'}"
        where = f"{self.flag} {path}" if self.one_file and self.flag else path
        source = protected.get((info.st_dev, info.st_ino))
        if source is not None:
            raise UserError(f"{where}: is the input {source}; refusing to write an output "
                            f"over an input ({other})")
        if stat.S_ISLNK(info.st_mode):
            raise UserError(f"{where}: is a symbolic link; fcn_graph never writes through or "
                            f"over a link (remove it or {other})")
        if not (stat.S_ISREG(info.st_mode) or folder and stat.S_ISDIR(info.st_mode)):
            raise UserError(f"{where}: is {kind_of(info.st_mode)}; expected to write "
                            f"{'a folder' if folder else 'a file'} there (move it or {other})")
        if not self.owns(name, force=force):
            into = "" if self.one_file else (
                f" into {self.flag} {self.directory}" if self.flag else f" into {self.directory}")
            why = ("; --force replaces only fcn_graph's own earlier output" if force
                   else " (or was changed since)")
            raise UserError(f"{where}: exists and was not written by fcn_graph{into}{why} "
                            f"(see {os.path.join(self.directory, OUTPUT_RECORD)}); refusing "
                            f"to overwrite it: move it or {other}")

    def wrote(self, name):
        """Record that `name` (a file or folder) has been written; the record is
        saved every few seconds and by `flush`."""
        path = os.path.join(self.directory, name)
        info = os.lstat(path)
        self._mine[name] = self.files[name] = {
            "size": info.st_size if stat.S_ISREG(info.st_mode) else None,
            "mtime_ns": info.st_mtime_ns, "sha256": fingerprint(path)}
        if time.monotonic() - self._flushed > 5.0:
            self.flush()

    def flush(self):
        """Merge this object's entries into the record on disk (under the
        folder's lock, so entries other writers recorded meanwhile stay) and
        save it atomically."""
        if not self._mine:
            return
        with self._locked():
            self.files = self._load()
            self._save()
        self._flushed = time.monotonic()

    def _save(self):
        for name, entry in self._mine.items():
            if entry is None:
                self.files.pop(name, None)
            else:
                self.files[name] = entry
        self._mine = {name: entry for name, entry in self._mine.items() if entry is not None}
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


def claim_output(path, flag, *, force=False, also=(), folder=False):
    """Before a command writes file `path` (and `also`, more names in its
    folder): create the folder where missing and check the names against the
    folder's record (`OutputFolder.check`; nothing is written, so a run that
    fails leaves no trace; `record_output` records the files once written,
    atomically, so no claim is needed): an existing entry is replaced only
    when fcn_graph wrote it there and nobody changed it since, or with `force`
    when fcn_graph wrote it there. `folder`: `path` is a folder written whole
    (a SavedModel)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if folder:
        ensure_output_dir(directory, f"{flag} {path}: folder" if flag else f"{path}: folder")
    else:
        check_output_file(path, flag)
    record = OutputFolder(directory, flag, one_file=True)
    names = [os.path.basename(path), *(os.path.basename(p) for p in also)]
    record.check(names, force=force, folders=names[:1] if folder else ())


def record_output(path, also=()):
    """After a command wrote `path` (and `also`): record them in their
    folder's record as fcn_graph's, with their fingerprints."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    record = OutputFolder(directory, None)
    for name in (path, *also):
        record.wrote(os.path.basename(os.fspath(name)))
    record.flush()


def read_input(path, expected):
    """The bytes of input file `path` (a regular file only: `read_regular_file`),
    or a UserError naming it, what was found and `expected`: a link loop or
    dangling link, a folder, a FIFO or device, a missing or unreadable file."""
    problem = link_problem(path)
    if problem is not None:
        raise UserError(f"{path}: {problem} (expected {expected})")
    try:
        return read_regular_file(path)
    except NotARegularFile as err:
        if stat.S_ISDIR(err.mode):
            raise UserError(f"{path}: is a directory (expected {expected})") from None
        raise UserError(f"{path}: is {kind_of(err.mode)}, not a regular file "
                        f"(expected {expected})") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected {expected})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory (expected {expected})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror}; expected {expected})") from None
