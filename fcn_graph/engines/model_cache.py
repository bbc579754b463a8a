"""A cache of models converted from checkpoints, keyed by the checkpoint's content.

    entry = cached_onnx_model(prefix, variant={...}, build=build)
    with entry:                      # entry.path: the model file to load
        session = load(entry.path)   # entry.info: what `build` returned

Where: `cache_dir()`, i.e. $FCN_GRAPH_CACHE, else $XDG_CACHE_HOME/fcn_graph,
else ~/.cache/fcn_graph. Each entry is a folder CACHE/onnx/KEY holding
`model.onnx`, any files beside it (its external data) and `manifest.json`.

The key is a SHA-256 of the checkpoint's content and of the variant: the
bytes of PREFIX.index (it holds every tensor's extent and checksum), the
name, size and SHA-256 of each data shard, the bytes of the sidecar (or its
absence), the cache's format version and the `variant` dict (the build
options: opset, kernels, mean pixel, precision, ...). A shard replaced by
another of the same size therefore changes the key, and its old entry is
never served. A shard's digest is remembered in CACHE/digests.json by the
shard's size, times, inode and device (`private_cache.file_digest`), so a hit
reads only the small files. Computing the key needs no TensorFlow, so a hit
(`lookup`) needs none either: what the caller needs to know about the model
(e.g. its `ModelSpec`) travels in `info`, stored in the manifest.

Trust (`private_cache`): the cache folder and CACHE/onnx are created with
mode 0700. An entry is used only when the cache folder, CACHE/onnx, the
entry and every file in it are owned by this user and writable by no one
else, and no folder or file inside the cache is a symbolic link; anything
else is ignored with one note on stderr, never loaded. When the cache folder
itself fails that test, nothing is read from it or written to it: the model
is built for this run alone.

Rules:
- An entry is built in a temporary folder beside the entries and published
  by renaming the folder once every file and the manifest are complete, so
  another process sees either no entry or a complete one. Two processes that
  build the same entry at once both succeed; the first rename wins.
- The manifest lists each file's size, modification time and SHA-256. A hit
  checks every size, the hash of the model file, and the hash of every file
  whose modification time changed; an entry that fails is reported on one
  line, removed and built again, never used.
- A cache folder that cannot be written (read-only, full, not a folder)
  never fails the run: the model is built in a temporary folder for this
  run alone, with a one-line note.
- A checkpoint rewritten while it was converted is not cached (its key is
  computed again after the build).
"""

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import cache_dir, file_sha256, json_text, read_regular_file
from fcn_graph.core.private_files import (
    file_digest,
    make_private_folder,
    note_once,
    status_problem,
    untrusted,
    write_private_file,
)
from fcn_graph.weights.checkpoint_files import DATA_SHARD, SIDECAR_SUFFIX

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DIGESTS = "digests.json"         # the memo of the shards' digests, in the cache folder
MANIFEST_FORMAT = "fcn_graph.model_cache"
MODEL_FILE = "model.onnx"
KIND = "onnx"                    # the sub-folder of the cache holding ONNX models
TEMP_PREFIX = ".tmp-"            # folders being built: CACHE/onnx/.tmp-HEX
STALE_TEMP_SECONDS = 24 * 3600   # a temporary folder this old is left from a killed run


def _note(text, log):
    print(f"note: {text}", file=log or sys.stderr)


def checkpoint_key(prefix, variant, *, memo=None):
    """The cache key of checkpoint `prefix` built with `variant` (a JSON-able
    dict), as hex; see the module docstring. `memo`: the digest memo file
    (None: every shard is read). Raises OSError when a file of the checkpoint
    cannot be read (NotARegularFile for a FIFO or a folder)."""
    digest = hashlib.sha256()
    digest.update(json_text({"format": MANIFEST_FORMAT, "version": FORMAT_VERSION,
                             "variant": variant}).encode())
    index = read_regular_file(prefix + ".index")
    digest.update(b"\0index %d\0" % len(index) + index)
    directory, base = os.path.split(prefix)
    shards = sorted(name for name in os.listdir(directory or ".")
                    if DATA_SHARD.search(name) and name[:DATA_SHARD.search(name).start()] == base)
    for name in shards:
        path = os.path.join(directory, name)
        digest.update(b"\0shard %s %d %s" % (name[len(base):].encode(), os.stat(path).st_size,
                                             file_digest(path, memo).encode()))
    try:
        sidecar = read_regular_file(prefix + SIDECAR_SUFFIX)
        digest.update(b"\0sidecar %d\0" % len(sidecar) + sidecar)
    except FileNotFoundError:
        digest.update(b"\0no sidecar")
    return digest.hexdigest()


class ModelFile:
    """A model ready to load: `path` (its model file), `info` (the dict its
    build returned), `prefix` (the checkpoint), `hit` (whether it came from
    the cache). Closing it (or leaving its `with` block) removes the files of
    a model built for this run alone; a cached entry stays."""

    def __init__(self, path, info, prefix, *, hit, temporary=None):
        self.path, self.info, self.prefix, self.hit = path, info, prefix, hit
        self._temporary = temporary

    def close(self):
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _entry_dir(root, key):
    return os.path.join(root, KIND, key)


def _root_problem(root):
    """None when the cache folder `root` (a link to it allowed) and its
    CACHE/onnx, where present, only this user can write; else why not."""
    problem = untrusted(root, follow=True)
    if problem is not None:
        return f"the model cache {root} {problem}"
    kind_dir = os.path.join(root, KIND)
    if os.path.lexists(kind_dir):
        problem = untrusted(kind_dir)
        if problem is not None:
            return f"the model cache folder {kind_dir} {problem}"
    return None


def _note_untrusted(problem, log):
    note_once(f"{problem}; ignoring it (it must be this user's alone, as ssh requires of keys); "
              "converting for this run only", log)


def _entry_trust_problem(entry):
    """None when the entry folder and everything in it are this user's alone
    (no links, no group or other write), else why not ("it ...", "its NAME ...")."""
    problem = untrusted(entry)
    if problem is not None:
        return f"it {problem}"
    try:
        names = os.listdir(entry)
    except OSError as err:
        return f"it cannot be listed ({err.strerror or err})"
    for name in names:
        try:
            problem = status_problem(os.lstat(os.path.join(entry, name)), kind=None)
        except OSError as err:
            problem = f"cannot be read ({err.strerror or err})"
        if problem is not None:
            return f"its {name} {problem}"
    return None


def _manifest_problem(entry, key):
    """(None, info) when the entry folder `entry` is this user's alone,
    complete and unchanged, else (the reason, None)."""
    problem = _entry_trust_problem(entry)
    if problem is not None:
        return problem, None
    try:
        record = json.loads(read_regular_file(os.path.join(entry, MANIFEST)).decode("utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST} is missing", None
    except OSError as err:
        return f"{MANIFEST}: {err.strerror or err}", None
    except (UnicodeDecodeError, ValueError) as err:
        return f"{MANIFEST} is not JSON ({err})", None
    files = record.get("files") if isinstance(record, dict) else None
    if (not isinstance(files, dict) or record.get("format") != MANIFEST_FORMAT
            or record.get("version") != FORMAT_VERSION or record.get("key") != key
            or MODEL_FILE not in files or not all(isinstance(v, dict) for v in files.values())):
        return f"{MANIFEST} is not a manifest of this entry", None
    for name, expected in files.items():
        path = os.path.join(entry, name)
        try:
            info = os.lstat(path)
        except OSError as err:
            return f"{name}: {err.strerror}", None
        if not stat.S_ISREG(info.st_mode):
            return f"{name} is not a regular file", None
        if info.st_size != expected.get("size"):
            return f"{name} holds {info.st_size:,} bytes, the manifest says {expected.get('size')}", None
        if name == MODEL_FILE or info.st_mtime_ns != expected.get("mtime_ns"):
            try:
                if file_sha256(path) != expected.get("sha256"):
                    return f"{name} does not match its checksum", None
            except OSError as err:
                return f"{name}: {err.strerror}", None
    return None, record.get("info")


def _discard(entry):
    """Remove an entry folder: renamed aside first (so no process picks it up
    half-removed), then deleted. Failures are ignored."""
    aside = os.path.join(os.path.dirname(entry), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _key(prefix, variant, root):
    """The key of `prefix` and `variant`, its shards' digests remembered in
    the cache folder `root` (None: an untrusted cache, nothing remembered)."""
    return checkpoint_key(prefix, variant, memo=None if root is None else
                          os.path.join(root, DIGESTS))


def lookup(prefix, variant, *, root=None, log=None, key=None):
    """The cached `ModelFile` of checkpoint `prefix` built with `variant`, or
    None on a miss. Needs no TensorFlow. An unreadable checkpoint is a miss;
    an entry that is not this user's alone is noted on `log` and a miss; a
    damaged entry is noted, removed, and a miss. `key`: the key when already
    computed."""
    root = cache_dir() if root is None else root
    if not os.path.isdir(root):
        return None
    problem = _root_problem(root)
    if problem is not None:
        _note_untrusted(problem, log)
        return None
    try:
        key = key or _key(prefix, variant, root)
    except OSError:
        return None
    entry = _entry_dir(root, key)
    if not os.path.lexists(entry):
        return None
    problem = _entry_trust_problem(entry)
    if problem is not None:
        note_once(f"ignoring the cached model {entry}: {problem}; an entry must be this "
                  "user's alone", log)
        return None
    problem, info = _manifest_problem(entry, key)
    if problem is not None:
        _note(f"cached model {entry} is damaged ({problem}); converting the checkpoint again",
              log)
        _discard(entry)
        return None
    return ModelFile(os.path.join(entry, MODEL_FILE), info, prefix, hit=True)


def _write_manifest(folder, key, info):
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        status = os.lstat(path)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{path}: the build left {name}, not a regular file")
        if status.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(status.st_mode) & 0o700)
            status = os.lstat(path)
        files[name] = {"size": status.st_size, "mtime_ns": status.st_mtime_ns,
                       "sha256": file_sha256(path)}
    if MODEL_FILE not in files:
        raise ValueError(f"{folder}: the build wrote no {MODEL_FILE}")
    record = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION, "key": key,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files, "info": info}
    write_private_file(os.path.join(folder, MANIFEST),
                       (json_text(record, indent=2) + "\n").encode("utf-8"))


def _remove_stale_temporaries(kind_dir):
    """Remove temporary folders that killed runs left (older than a day)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(kind_dir):
            path = os.path.join(kind_dir, name)
            with contextlib.suppress(OSError):
                if (name.startswith(TEMP_PREFIX)
                        and time.time() - os.lstat(path).st_mtime > STALE_TEMP_SECONDS):
                    shutil.rmtree(path, ignore_errors=True)


def _build_temporary(prefix, build):
    """Build into a temporary folder outside the cache, for this run alone."""
    folder = tempfile.mkdtemp(prefix="fcn_graph_model_")
    try:
        info = build(folder)
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"{folder}: cannot write the converted model of {prefix} "
                        f"({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ModelFile(os.path.join(folder, MODEL_FILE), info, prefix, hit=False,
                     temporary=folder)


def _private_kind_dir(root, log):
    """CACHE/onnx, created 0700 with the cache folder when missing; None (with
    a note) when the cache cannot be written or is not this user's alone."""
    kind_dir = os.path.join(root, KIND)
    try:
        problem = make_private_folder(root, follow=True)
        problem = problem and f"the model cache {root} {problem}"
        if problem is None:
            problem = make_private_folder(kind_dir)
            problem = problem and f"the model cache folder {kind_dir} {problem}"
    except OSError as err:
        _note(f"cannot write the model cache {root} ({err.strerror or err}); converting "
              "for this run only", log)
        return None
    if problem is not None:
        _note_untrusted(problem, log)
        return None
    return kind_dir


def cached_onnx_model(prefix, *, variant, build, root=None, log=None):
    """The model of checkpoint `prefix` for `variant`: from the cache when
    there, else built by `build(folder)` (which writes FOLDER/model.onnx and
    any files beside it, and returns a JSON-able dict, kept as `info`) and
    published in the cache. Returns a `ModelFile`; see the module docstring
    for the rules. `variant`: a JSON-able dict of everything besides the
    checkpoint that the model depends on."""
    root = cache_dir() if root is None else root
    kind_dir = _private_kind_dir(root, log)
    if kind_dir is None:
        return _build_temporary(prefix, build)
    try:
        key = _key(prefix, variant, root)
    except OSError as err:
        raise UserError(f"{prefix}: cannot read the checkpoint ({err.strerror or err})") from None
    found = lookup(prefix, variant, root=root, log=log, key=key)
    if found is not None:
        return found
    folder = None
    try:
        _remove_stale_temporaries(kind_dir)
        folder = os.path.join(kind_dir, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        os.mkdir(folder, 0o700)
    except OSError as err:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        _note(f"cannot write the model cache {root} ({err.strerror or err}); converting "
              "for this run only", log)
        return _build_temporary(prefix, build)
    try:
        info = build(folder)
        _write_manifest(folder, key, info)
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        _note(f"cannot write the model cache {root} ({err.strerror or err}); converting "
              "for this run only", log)
        return _build_temporary(prefix, build)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    model = os.path.join(folder, MODEL_FILE)
    try:
        changed = _key(prefix, variant, root) != key
    except OSError:
        changed = True
    if changed:
        _note(f"{prefix} changed while it was converted; the converted model is not cached",
              log)
        return ModelFile(model, info, prefix, hit=False, temporary=folder)
    entry = _entry_dir(root, key)
    try:
        os.rename(folder, entry)
    except OSError:
        # Another process published this entry first (or an entry that could
        # not be removed, or one that is not ours, is in the way): use it when
        # it is ours and sound, else ours for this run.
        problem, theirs = (_manifest_problem(entry, key) if not os.path.islink(entry)
                           and os.path.isdir(entry) else ("", None))
        if problem is None:
            shutil.rmtree(folder, ignore_errors=True)
            return ModelFile(os.path.join(entry, MODEL_FILE), theirs, prefix, hit=True)
        return ModelFile(model, info, prefix, hit=False, temporary=folder)
    return ModelFile(os.path.join(entry, MODEL_FILE), info, prefix, hit=False)
