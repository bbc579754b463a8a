"""A cache of models converted from checkpoints, keyed by the checkpoint's content.

    entry = cached_onnx_model(prefix, variant={...}, build=build)
    with entry:                      # entry.path: the model file to load
        session = load(entry.path)   # entry.info: what `build` returned

Where: `cache_dir()`, i.e. $FCN_GRAPH_CACHE, else $XDG_CACHE_HOME/fcn_graph,
else ~/.cache/fcn_graph. Each entry is a folder CACHE/onnx/KEY holding
`model.onnx`, any files beside it (its external data) and `manifest.json`.

The key is a SHA-256 of the checkpoint's content and of the variant: the
bytes of PREFIX.index (it holds every tensor's extent and checksum), the name
and size of each data shard, the bytes of the sidecar (or its absence), the
cache's format version and the `variant` dict (the build options: opset,
kernels, mean pixel, precision, ...). Computing it needs no TensorFlow, so a
hit (`lookup`) needs none either: what the caller needs to know about the
model (e.g. its `ModelSpec`) travels in `info`, stored in the manifest.

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
from fcn_graph.core.fileio import cache_dir, json_text, read_regular_file
from fcn_graph.weights.checkpoint_files import DATA_SHARD, SIDECAR_SUFFIX

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fcn_graph.model_cache"
MODEL_FILE = "model.onnx"
KIND = "onnx"                    # the sub-folder of the cache holding ONNX models
TEMP_PREFIX = ".tmp-"            # folders being built: CACHE/onnx/.tmp-HEX
STALE_TEMP_SECONDS = 24 * 3600   # a temporary folder this old is left from a killed run
HASH_CHUNK = 1 << 22


def _note(text, log):
    print(f"note: {text}", file=log or sys.stderr)


def file_sha256(path):
    """SHA-256 (hex) of the regular file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(HASH_CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def checkpoint_key(prefix, variant):
    """The cache key of checkpoint `prefix` built with `variant` (a JSON-able
    dict), as hex; see the module docstring. Raises OSError when a file of the
    checkpoint cannot be read (NotARegularFile for a FIFO or a folder)."""
    digest = hashlib.sha256()
    digest.update(json_text({"format": MANIFEST_FORMAT, "version": FORMAT_VERSION,
                             "variant": variant}).encode())
    index = read_regular_file(prefix + ".index")
    digest.update(b"\0index %d\0" % len(index) + index)
    directory, base = os.path.split(prefix)
    shards = sorted(name for name in os.listdir(directory or ".")
                    if DATA_SHARD.search(name) and name[:DATA_SHARD.search(name).start()] == base)
    for name in shards:
        digest.update(b"\0shard %s %d" % (name[len(base):].encode(),
                                          os.stat(os.path.join(directory, name)).st_size))
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


def _manifest_problem(entry, key):
    """(None, info) when the entry folder `entry` is complete and unchanged,
    else (the reason, None)."""
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


def lookup(prefix, variant, *, root=None, log=None):
    """The cached `ModelFile` of checkpoint `prefix` built with `variant`, or
    None on a miss. Needs no TensorFlow. An unreadable checkpoint is a miss; a
    damaged entry is noted on `log`, removed, and a miss."""
    root = cache_dir() if root is None else root
    try:
        key = checkpoint_key(prefix, variant)
    except OSError:
        return None
    entry = _entry_dir(root, key)
    if not os.path.isdir(entry):
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
        files[name] = {"size": status.st_size, "mtime_ns": status.st_mtime_ns,
                       "sha256": file_sha256(path)}
    if MODEL_FILE not in files:
        raise ValueError(f"{folder}: the build wrote no {MODEL_FILE}")
    record = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION, "key": key,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files, "info": info}
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as handle:
        handle.write(json_text(record, indent=2) + "\n")


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


def cached_onnx_model(prefix, *, variant, build, root=None, log=None):
    """The model of checkpoint `prefix` for `variant`: from the cache when
    there, else built by `build(folder)` (which writes FOLDER/model.onnx and
    any files beside it, and returns a JSON-able dict, kept as `info`) and
    published in the cache. Returns a `ModelFile`; see the module docstring
    for the rules. `variant`: a JSON-able dict of everything besides the
    checkpoint that the model depends on."""
    root = cache_dir() if root is None else root
    found = lookup(prefix, variant, root=root, log=log)
    if found is not None:
        return found
    try:
        key = checkpoint_key(prefix, variant)
    except OSError as err:
        raise UserError(f"{prefix}: cannot read the checkpoint ({err.strerror or err})") from None
    kind_dir = os.path.join(root, KIND)
    folder = None
    try:
        os.makedirs(kind_dir, exist_ok=True)
        _remove_stale_temporaries(kind_dir)
        folder = os.path.join(kind_dir, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        os.mkdir(folder)
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
        changed = checkpoint_key(prefix, variant) != key
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
        # not be removed is in the way): use it when it is sound, else ours.
        problem, theirs = _manifest_problem(entry, key) if os.path.isdir(entry) else ("", None)
        if problem is None:
            shutil.rmtree(folder, ignore_errors=True)
            return ModelFile(os.path.join(entry, MODEL_FILE), theirs, prefix, hit=True)
        return ModelFile(model, info, prefix, hit=False, temporary=folder)
    return ModelFile(os.path.join(entry, MODEL_FILE), info, prefix, hit=False)
