"""Checkpoints: find, inspect, restore and write them, with a JSON sidecar.

A checkpoint is a TensorFlow V2 checkpoint prefix (`PREFIX.index` plus
`PREFIX.data-*`). Beside it, `PREFIX.json` (the sidecar) records what the
variable shapes cannot tell: the mean pixel, the channel order and the
architecture. FCN.tensorflow checkpoints have no sidecar; their architecture
is read from the variable names, their class count and widths from the
variable shapes, and the VGG mean is assumed.
"""

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import sys
from collections import OrderedDict
from typing import Optional

import numpy as np
import tensorflow as tf

from fcn_graph import model as fcn_model
from fcn_graph.errors import UserError
from fcn_graph.fileio import atomic_write, write_json_atomic

tf1 = tf.compat.v1

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "fcn_graph.checkpoint"


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


def checkpoint_problem(prefix, *, full=True):
    """None when the checkpoint at `prefix` reads, else the reason, in a few words.

    Always: the index opens and lists its tensors, every data shard
    `PREFIX.data-0000i-of-0000n` is present, and the shards together are at
    least as long as the fixed-size tensors the index lists. `full`: also read
    every tensor, which checks each one's extent and checksum (one pass over
    the data; one tensor in memory at a time).
    """
    index = prefix + ".index"
    if not os.path.isfile(index):
        return f"{os.path.basename(index)} is missing"
    if os.path.getsize(index) == 0:
        return f"{os.path.basename(index)} is empty"
    try:
        reader = tf.train.load_checkpoint(prefix)
        dtypes = reader.get_variable_to_dtype_map()
        shapes = reader.get_variable_to_shape_map()
    except Exception as err:  # a truncated or foreign index, or missing data
        return f"unreadable index ({_first_line(err)})"
    directory, base = os.path.split(prefix)
    shards = {}
    for name in os.listdir(directory or "."):
        match = DATA_SHARD.search(name)
        if match and name[:match.start()] == base:
            shards[int(match.group(1))] = (int(match.group(2)), os.path.join(directory, name))
    if dtypes and not shards:
        return "no data file"
    counts = {count for count, _ in shards.values()}
    if len(counts) > 1:
        return f"data files of different shard counts ({sorted(counts)})"
    if shards:
        (count,) = counts
        missing = [i for i in range(count) if i not in shards]
        if missing:
            return f"data shard {missing[0]} of {count} is missing"
    stored = sum(os.path.getsize(path) for _, path in shards.values())
    needed = sum(int(np.prod(shapes[name], dtype=np.int64)) * dtype.size
                 for name, dtype in dtypes.items() if dtype != tf.string)
    if stored < needed:
        return f"data files are truncated ({stored} bytes, the index needs {needed})"
    if full:
        for name in sorted(dtypes):
            try:
                reader.get_tensor(name)
            except Exception as err:  # a short read or a checksum mismatch
                return f"tensor {name!r} does not read ({_first_line(err)})"
    return None


def _first_line(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def find_checkpoints(directory, *, full=True):
    """`list_checkpoints` with each record's `problem` filled in (see
    `checkpoint_problem`)."""
    found = list_checkpoints(directory)
    for record in found:
        record.problem = checkpoint_problem(record.prefix, full=full)
    return found


def newest_complete(directory, *, what="checkpoint", log=None):
    """The newest checkpoint in `directory` that fully reads, or None when the
    directory holds no checkpoint file at all. The newer ones that do not read
    are named with the reason on `log`; when none reads, a UserError names
    each file and its problem."""
    found = list_checkpoints(directory)
    skipped = []
    for record in found:
        record.problem = checkpoint_problem(record.prefix, full=True)
        if record.problem is None:
            for bad in skipped:
                print(f"skipping {what} {bad.prefix}: {bad.problem}", file=log or sys.stderr)
            return record
        skipped.append(record)
    if skipped:
        problems = "; ".join(f"{os.path.basename(r.prefix)}: {r.problem}" for r in skipped[:4])
        more = f" and {len(skipped) - 4} more" if len(skipped) > 4 else ""
        raise UserError(f"{directory}: holds {len(skipped)} checkpoint(s) but none reads "
                        f"({problems}{more}); move them away to start over")
    return None


def resolve_checkpoint(path):
    """A checkpoint prefix from a prefix, one of its files, or a directory (its
    newest checkpoint that fully reads; see `newest_complete`)."""
    if os.path.isdir(path):
        found = newest_complete(path)
        if found is None:
            raise UserError(f"{path}: no checkpoint in this directory (expected "
                            "PREFIX.index and PREFIX.data-* files)")
        return found.prefix
    for suffix in (".index", ".meta", SIDECAR_SUFFIX):
        if path.endswith(suffix):
            path = path[:-len(suffix)]
    if ".data-" in os.path.basename(path):
        path = path[:path.rindex(".data-")]
    if not os.path.exists(path + ".index"):
        raise UserError(f"{path}: no checkpoint here (expected {path}.index and "
                        f"{path}.data-*, or a directory holding checkpoints)")
    return path


def read_variable_shapes(prefix):
    """Checkpoint name -> shape of every variable stored under `prefix`."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as err:  # a truncated or foreign file
        raise UserError(f"{prefix}: not a readable TensorFlow checkpoint "
                        f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}


def read_variables(prefix, names=None):
    """Checkpoint name -> numpy array, for `names` (default: all)."""
    reader = tf.train.load_checkpoint(prefix)
    names = names if names is not None else sorted(reader.get_variable_to_shape_map())
    return {name: reader.get_tensor(name) for name in names}


def sidecar_path(prefix):
    return prefix + SIDECAR_SUFFIX


def write_sidecar(prefix, spec, **extra):
    """Write `PREFIX.json` for a `ModelSpec` (atomically)."""
    record = {"format": SIDECAR_FORMAT, "version": 1}
    record.update(dataclasses.asdict(spec))
    record["vgg_widths"] = list(spec.vgg_widths)
    record["mean_pixel"] = None if spec.mean_pixel is None else [float(v) for v in spec.mean_pixel]
    record.update(extra)
    write_json_atomic(sidecar_path(prefix), record)


def read_sidecar(prefix):
    """The sidecar's dict, or None when the checkpoint has none."""
    path = sidecar_path(prefix)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable checkpoint sidecar ({err})") from None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path}: not an fcn_graph sidecar (expected \"format\": \"{SIDECAR_FORMAT}\")")
    return record


def prune_sidecars(directory):
    """Remove sidecars whose checkpoint files are gone (after Saver's max_to_keep)."""
    for path in glob.glob(os.path.join(directory, "*" + SIDECAR_SUFFIX)):
        prefix = path[:-len(SIDECAR_SUFFIX)]
        if os.path.exists(prefix + ".index"):
            continue
        if _is_sidecar(path):
            os.remove(path)


def _is_sidecar(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("format") == SIDECAR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def remove_checkpoint(prefix):
    """Delete a checkpoint's files: the index first (so that it stops counting
    as a checkpoint), then its data shards, `.meta` and sidecar."""
    directory, base = os.path.split(prefix)
    names = os.listdir(directory or ".")
    doomed = [base + ".index"]
    doomed += [n for n in names if DATA_SHARD.search(n) and n[:DATA_SHARD.search(n).start()] == base]
    doomed += [base + ".meta"]
    if _is_sidecar(sidecar_path(prefix)):
        doomed.append(base + SIDECAR_SUFFIX)
    for name in doomed:
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:
            pass


def prune_checkpoints(directory, keep, *, pattern=r"model\.ckpt-\d+"):
    """Keep the `keep` newest complete checkpoints whose names match `pattern`
    (found by scanning, so a resumed run prunes what earlier runs wrote) and
    delete the older ones, complete or not, with their sidecars. Checkpoints
    newer than the newest complete one are left alone. Returns the kept
    prefixes, newest first. Completeness here is the quick check (index, shards
    and their lengths; `checkpoint_problem(full=False)`)."""
    ours = [r for r in list_checkpoints(directory)
            if r.step is not None and re.fullmatch(pattern, os.path.basename(r.prefix))]
    kept = []
    for record in ours:
        if len(kept) == keep:
            break
        if checkpoint_problem(record.prefix, full=False) is None:
            kept.append(record)
    if kept:
        for record in ours:
            if record.step < kept[-1].step:
                remove_checkpoint(record.prefix)
    prune_sidecars(directory)
    return [record.prefix for record in kept]


def clean_temp_files(directory):
    """Remove what interrupted saves left in `directory` (see TEMP_FILE and
    TEMP_SHARD_DIR): only names of that form, and a shard directory only when
    every file in it is a shard part. Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if TEMP_FILE.match(name) and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed.append(name)
        elif TEMP_SHARD_DIR.match(name) and os.path.isdir(path) and not os.path.islink(path):
            parts = os.listdir(path)
            if all(TEMP_SHARD_PART.match(p) and os.path.isfile(os.path.join(path, p))
                   for p in parts):
                for part in parts:
                    os.remove(os.path.join(path, part))
                os.rmdir(path)
                removed.append(name + "/")
    return removed


def write_state_file(directory, prefixes):
    """Write TensorFlow's `checkpoint` state file naming `prefixes` (newest
    first), atomically. Only other tools read it: this package finds
    checkpoints by their files."""
    names = [os.path.basename(p) for p in prefixes]
    lines = [f"model_checkpoint_path: {json.dumps(names[0])}"] if names else []
    lines += [f"all_model_checkpoint_paths: {json.dumps(n)}" for n in reversed(names)]
    path = os.path.join(directory, STATE_FILE)
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def _variant_name(variant):
    architecture, skips = variant
    return f"{architecture} FCN-{skips}"


def model_spec_from_checkpoint(prefix, *, num_classes=None, fc_width=None):
    """The `ModelSpec` of a checkpoint: architecture and skips from the
    variable names, class count and widths from their shapes (checked against
    `num_classes`/`fc_width` when given), mean pixel, channel order and
    train_upsampling from the sidecar when there is one (a sidecar that names
    another architecture than the variables show is an error)."""
    shapes = read_variable_shapes(prefix)
    scope = fcn_model.SCOPE
    variant = fcn_model.detect_architecture(shapes, scope)
    if variant is None:
        raise UserError(f"{prefix}: neither '{scope}/W8' (legacy FCN-8s) nor "
                        f"'{scope}/score_fr_w' (paper FCN) found; not an FCN checkpoint "
                        f"(it has {len(shapes)} variables"
                        + (f", e.g. '{sorted(shapes)[0]}')" if shapes else ")"))
    architecture, skips = variant

    def shape_of(name):
        key = f"{scope}/{name}"
        if key not in shapes:
            raise UserError(f"{prefix}: variable '{key}' not found; an incomplete "
                            f"{_variant_name(variant)} checkpoint")
        return shapes[key]

    classes_name = "b8" if architecture == "legacy" else "score_fr_b"
    found_classes = shape_of(classes_name)[0]
    found_fc = shape_of("b6")[0]
    widths = tuple(shape_of(name + "_b")[0] for name in fcn_model.VGG19_CONVS)
    if num_classes is not None and num_classes != found_classes:
        raise UserError(f"{prefix}: the checkpoint has {found_classes} classes "
                        f"({scope}/{classes_name}), not {num_classes}")
    if fc_width is not None and fc_width != found_fc:
        raise UserError(f"{prefix}: the checkpoint has fc width {found_fc} ({scope}/b6), "
                        f"not {fc_width}")
    spec = fcn_model.ModelSpec(num_classes=found_classes, fc_width=found_fc, vgg_widths=widths,
                               architecture=architecture, skips=skips)
    sidecar = read_sidecar(prefix)
    if sidecar is not None:
        recorded = (sidecar.get("architecture", "legacy"), sidecar.get("skips", "8s"))
        if recorded != variant:
            raise UserError(f"{sidecar_path(prefix)}: says {_variant_name(recorded)} but the "
                            f"checkpoint's variables are a {_variant_name(variant)}")
        if sidecar.get("mean_pixel") is not None:
            spec.mean_pixel = tuple(float(v) for v in sidecar["mean_pixel"])
        spec.channel_order = sidecar.get("channel_order", "rgb")
        if spec.channel_order not in ("rgb", "bgr"):
            raise UserError(f"{sidecar_path(prefix)}: channel_order {spec.channel_order!r}; "
                            "expected 'rgb' or 'bgr'")
        spec.train_upsampling = bool(sidecar.get("train_upsampling", False))
    return spec


def check_variables(prefix, variables):
    """Raise a UserError naming every model variable that the checkpoint lacks
    or holds with another shape."""
    shapes = read_variable_shapes(prefix)
    stored = fcn_model.detect_architecture(shapes)
    wanted = fcn_model.detect_architecture(variables)
    if stored is not None and wanted is not None and stored != wanted:
        raise UserError(f"{prefix}: holds a {_variant_name(stored)} model but the graph is a "
                        f"{_variant_name(wanted)}; build the graph from the checkpoint's own "
                        "spec (model_spec_from_checkpoint) or convert the weights")
    missing, wrong = [], []
    for name, variable in variables.items():
        expected = tuple(variable.shape.as_list())
        if name not in shapes:
            missing.append(name)
        elif shapes[name] != expected:
            wrong.append(f"{name} is {list(shapes[name])}, expected {list(expected)}")
    problems = []
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        problems.append(f"missing {shown}")
    if wrong:
        problems.append("mis-shaped " + "; ".join(wrong[:6]))
    if problems:
        raise UserError(f"{prefix}: cannot restore the model: " + "; ".join(problems))


def restore_model(sess, prefix, variables=None, saver=None):
    """Restore the model variables from `prefix`, ignoring anything else in it
    (optimizer slots, beta1_power/beta2_power, the global step). Pass a `saver`
    from `model_saver` when the graph is already finalised."""
    variables = variables if variables is not None else fcn_model.model_variables(sess.graph)
    check_variables(prefix, variables)
    with sess.graph.as_default():  # outside a graph context, Saver would restore eagerly
        (saver or model_saver(variables)).restore(sess, prefix)


def assign_arrays(sess, variables, values):
    """Load numpy arrays into variables through their initializers' feeds, so the
    arrays never become graph constants. `variables`: name -> variable;
    `values`: name -> array (a subset of the names)."""
    for name, value in values.items():
        variable = variables[name]
        expected = tuple(variable.shape.as_list())
        if tuple(np.shape(value)) != expected:
            raise UserError(f"{variable.op.name}: got shape {list(np.shape(value))}, "
                            f"expected {list(expected)}")
        sess.run(variable.initializer, feed_dict={variable.initial_value: value})


def vgg_values(vgg, architecture="legacy"):
    """Checkpoint name -> array for the VGG body of a `VggWeights` (and conv6/conv7
    from fc6/fc7 for the paper architecture)."""
    scope = fcn_model.SCOPE
    values = OrderedDict()
    for name, (kernel, bias) in vgg.layers.items():
        values[f"{scope}/{name}_w"], values[f"{scope}/{name}_b"] = kernel, bias
    if architecture == "paper":
        for fc, (w, b) in (("fc6", ("W6", "b6")), ("fc7", ("W7", "b7"))):
            if fc not in vgg.fc:
                raise UserError(f"{vgg.path}: layer '{fc}' not found; the paper architecture "
                                "initialises conv6/conv7 from fc6/fc7")
            kernel, bias = vgg.fc[fc]
            values[f"{scope}/{w}"], values[f"{scope}/{b}"] = kernel, bias
    return values


def assign_vgg(sess, vgg, variables=None, architecture="legacy"):
    """Copy the VGG body of a `VggWeights` (and fc6/fc7 for the paper
    architecture) into the model variables, checking every shape."""
    variables = variables if variables is not None else fcn_model.model_variables(sess.graph)
    values = vgg_values(vgg, architecture)
    for key, array in values.items():
        if key not in variables:
            raise UserError(f"{vgg.path}: the graph has no variable '{key}'")
        expected = tuple(variables[key].shape.as_list())
        if expected != array.shape:
            raise UserError(f"{vgg.path}: {key.split('/')[-1]} has shape {list(array.shape)} "
                            f"but the graph's {key} is {list(expected)}")
    assign_arrays(sess, variables, values)


def model_saver(variables, **kwargs):
    """A Saver for the model variables under their checkpoint names (build it
    before the graph is finalised)."""
    return tf1.train.Saver(var_list=dict(variables), save_relative_paths=True, **kwargs)


def save_model(sess, saver, prefix, spec, *, global_step=None, **sidecar_extra):
    """Write `saver`'s variables to `prefix` (plus `-STEP` with a global step)
    and the sidecar; returns the prefix written.

    One order, always: the sidecar, then the data, then the index (TensorFlow
    writes both under temporary names and renames the data file before the
    index, so an index names complete data). When any of it fails (a full disk,
    an unwritable file), the files this save created and its temporary files
    are removed, what was there before is left as it was, and a UserError names
    the prefix and the reason.
    """
    if global_step is not None:
        prefix = f"{prefix}-{int(global_step)}"
    directory = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(directory, exist_ok=True)
        before = set(os.listdir(directory))
    except OSError as err:
        raise UserError(f"{prefix}: cannot write the checkpoint: {_os_reason(err)}") from None
    try:
        write_sidecar(prefix, spec, **sidecar_extra)
        with sess.graph.as_default():
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)
    except (OSError, tf.errors.OpError) as err:
        _remove_failed_save(prefix, before)
        reason = _os_reason(err) if isinstance(err, OSError) else op_error_reason(err)
        raise UserError(f"{prefix}: cannot write the checkpoint: {reason}") from None
    except BaseException:
        _remove_failed_save(prefix, before)
        raise
    return prefix


def op_error_reason(err):
    """The line of a TensorFlow OpError that says what went wrong (e.g. 'PATH;
    No space left on device'), without the graph execution preamble."""
    for line in str(getattr(err, "message", err)).splitlines():
        text = line.strip()
        if (not text or text.startswith(("Graph execution error", "Detected at node", "File ",
                                          "Node:", "[[", "Hint:"))
                or line[:1].isspace()):
            continue
        return text
    return _first_line(err)


def _os_reason(err):
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return f"{err.strerror or err}{where}"


def _remove_failed_save(prefix, before):
    """Remove the files of `prefix` that a failed save created (not those that
    were there before it) and the temporary files it left."""
    directory, base = os.path.split(os.path.abspath(prefix))
    for name in os.listdir(directory):
        if not name.startswith(base) or name in before and not TEMP_FILE.match(name):
            continue
        rest = name[len(base):]
        if not rest.startswith((".", "_temp")):
            continue  # another checkpoint whose name starts with this one's
        path = os.path.join(directory, name)
        if rest in (".index", SIDECAR_SUFFIX) or DATA_SHARD.fullmatch(rest) or (
                TEMP_FILE.match(name) and os.path.isfile(path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        elif TEMP_SHARD_DIR.match(name) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(directory):  # our own atomic_write leftovers for this prefix
        if name.startswith("." + base) and TEMP_FILE.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
