"""Checkpoint files found by their names, without TensorFlow.

A checkpoint is a prefix with `PREFIX.index` and `PREFIX.data-*` files
(`fcn_graph.weights.checkpoint` reads them); this module lists the prefixes in a
folder, newest first, and turns a path naming a checkpoint into its prefix,
so that a command that needs no TensorFlow (a cached ONNX model) can find its
checkpoint without loading it.
"""

import dataclasses
import os
import re
from typing import Optional

from fcn_graph.core.errors import UserError

SIDECAR_SUFFIX = ".json"

DATA_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
STEP_SUFFIX = re.compile(r"-(\d+)$")
# Temporary files of interrupted saves: TensorFlow's bundle writer
# (PREFIX.index.tempstateN, PREFIX.data-*.tempstateN), its sharded saver
# (PREFIX_temp/ or PREFIX_temp_HEX/ holding part-* files) and its state file
# writer (checkpoint.tmpHEX); and fileio.atomic_write's (.NAME.HEX12.tmpEXT).
TEMP_FILE = re.compile(r"^(.+\.(index|data-\d{5}-of-\d{5})\.tempstate\d+"
                       r"|checkpoint\.tmp[0-9a-f]{32}"
                       r"|\..+\.[0-9a-f]{12}\.tmp(\.[^.]*)?)$")
TEMP_SHARD_DIR = re.compile(r"^.+_temp(_[0-9a-f]{32})?$")
TEMP_SHARD_PART = re.compile(r"^part-\d{5}-of-\d{5}(\.index|\.data-\d{5}-of-\d{5})?"
                             r"(\.tempstate\d+)?$")
STATE_FILE = "checkpoint"


@dataclasses.dataclass
class Found:
    """A checkpoint found by its files: its prefix, its step (from a `-STEP`
    suffix, else None), whether it fully reads and, when not, why."""
    prefix: str
    step: Optional[int]
    problem: Optional[str] = None


def _step_of(prefix):
    match = STEP_SUFFIX.search(os.path.basename(prefix))
    return int(match.group(1)) if match else None


def list_checkpoints(directory):
    """Every checkpoint in `directory`, newest first, found by scanning its files
    (never by TensorFlow's `checkpoint` state file, which may be stale or garbage).

    A checkpoint is a prefix with a `PREFIX.index` or `PREFIX.data-*` file
    (temporary files of interrupted saves excluded). Newest: the highest
    `-STEP` suffix, then the latest modification time; prefixes without a step
    come after those with one. Returns `Found` records with `problem` unset.
    """
    prefixes = {}
    try:
        names = os.listdir(directory)
    except OSError as err:
        raise UserError(f"{directory}: cannot list checkpoints: {err.strerror}") from None
    for name in names:
        if TEMP_FILE.match(name):
            continue
        if name.endswith(".index"):
            prefix = name[:-len(".index")]
        elif DATA_SHARD.search(name):
            prefix = name[:DATA_SHARD.search(name).start()]
        else:
            continue
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or not prefix:
            continue
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:  # removed since the listing
            continue
        full = os.path.join(directory, prefix)
        prefixes[full] = max(mtime, prefixes.get(full, mtime))

    def newest_first(prefix):
        step = _step_of(prefix)
        return (step is not None, -1 if step is None else step, prefixes[prefix])

    return [Found(prefix, _step_of(prefix)) for prefix in sorted(prefixes, key=newest_first,
                                                                  reverse=True)]



def checkpoint_prefix(path):
    """The prefix of the checkpoint that `path` names: a prefix, or one of its
    files (`.index`, `.meta`, `.json`, `.data-*`). Raises a UserError when no
    `PREFIX.index` exists."""
    for suffix in (".index", ".meta", SIDECAR_SUFFIX):
        if path.endswith(suffix):
            path = path[:-len(suffix)]
    if ".data-" in os.path.basename(path):
        path = path[:path.rindex(".data-")]
    if not os.path.exists(path + ".index"):
        raise UserError(f"{path}: no checkpoint here (expected {path}.index and "
                        f"{path}.data-*, or a directory holding checkpoints)")
    return path
