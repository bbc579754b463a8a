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
import weakref
from collections import OrderedDict

import numpy as np
import tensorflow as tf

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import atomic_write, input_problem, refuse_planted, write_json_atomic
from fcn_graph.core.finite import check_mean_pixel, nonfinite
from fcn_graph.network import definition, tf_layers
from fcn_graph.network.spec import DEFAULT_BACKBONE, VGG_CONVS, ModelSpec
from fcn_graph.weights.checkpoint_files import (
    DATA_SHARD,
    SIDECAR_SUFFIX,
    STATE_FILE,
    TEMP_FILE,
    TEMP_SHARD_DIR,
    TEMP_SHARD_PART,
    checkpoint_prefix,
    list_checkpoints,
)

tf1 = tf.compat.v1

SIDECAR_FORMAT = "fcn_graph.checkpoint"


def checkpoint_problem(prefix, *, full=True):
    """None when the checkpoint at `prefix` is usable, else the reason, in a few words.

    Always: its files are regular files, the index opens, every data shard is
    present and the shards are at least as long as the tensors the index
    lists (`_open_reader`). `full`: also every tensor reads (extent and
    checksum) and holds finite values (`checkpoint_problems`; one pass over
    the data, one tensor in memory at a time).
    """
    index = prefix + ".index"
    if not os.path.lexists(index):
        return f"{os.path.basename(index)} is missing"
    try:
        if not full:
            _open_reader(prefix)
            return None
        problems = checkpoint_problems(prefix)
    except UserError as err:
        text = str(err)
        return text[len(prefix) + 2:] if text.startswith(prefix + ": ") else text
    return _problem_summary(problems) if problems else None


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


def newest_complete(directory, *, what="checkpoint", log=None, exclude=()):
    """The newest checkpoint in `directory` that fully reads, or None when the
    directory holds no checkpoint file at all. The newer ones that do not read
    are named with the reason on `log`; when none reads, a UserError names
    each file and its problem. Prefixes in `exclude` are passed over."""
    found = [record for record in list_checkpoints(directory) if record.prefix not in exclude]
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
    return checkpoint_prefix(path)


def _vanished(prefix):
    """Whether a file of the checkpoint at `prefix` is gone: its .index, or a
    data shard the first shard's name counts."""
    shards = glob.glob(glob.escape(prefix) + ".data-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*")
    if not os.path.lexists(prefix + ".index") or not shards:
        return True
    count = int(shards[0][-5:])
    return any(not os.path.lexists(f"{prefix}.data-{i:05d}-of-{count:05d}")
               for i in range(count))


def with_newest(source, use, *, prefix=None, log=None):
    """`use(prefix)` for the checkpoint `source` names (`resolve_checkpoint`;
    `prefix` when already resolved from it), and its result.

    When `source` is a directory (a train.log_dir that a running training
    prunes), the files of the chosen checkpoint can vanish between choosing
    it and reading it. When `use` then fails and those files are gone, a note
    on `log` says so and `use` runs again on the newest checkpoint that reads
    now; a failure with the files still there is raised as it is.
    """
    if prefix is None:
        prefix = resolve_checkpoint(source)
    if not os.path.isdir(source):
        return use(prefix)
    gone = set()
    while True:
        try:
            return use(prefix)
        except Exception:
            if not _vanished(prefix):
                raise
        gone.add(prefix)
        found = newest_complete(source, exclude=gone, log=log)
        if found is None:
            raise UserError(f"{source}: the checkpoint {prefix} was deleted while being read, "
                            "and no other checkpoint is left") from None
        print(f"note: the checkpoint {prefix} was deleted while being read (a training "
              f"pruning old checkpoints?); using {found.prefix}", file=log or sys.stderr)
        prefix = found.prefix


def _read_error(err):
    """What a TensorFlow checkpoint reader's exception says is wrong, in one line."""
    text = str(err)
    if isinstance(err, (IndexError, tf.errors.OutOfRangeError)) or "less bytes" in text:
        return "a data file is cut short (truncated or partly written)"
    if "Checksum does not match" in text:
        return "a data file is corrupted (its checksum does not match)"
    if "No such file" in text:
        line = next(line for line in text.splitlines() if "No such file" in line)
        return "a data file is missing (" + line.split(";")[0].strip() + ")"
    if "sstable" in text:
        return "the .index file is damaged or truncated (" + text.splitlines()[0].strip() + ")"
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else "no detail"
    if first.startswith("{{function_node"):  # the wrapped op's name, before the message
        first = first.split("}}", 1)[-1]
    first = first.replace("[Op:RestoreV2]", "").strip()
    return f"{type(err).__name__}: {first}"


def _open_reader(prefix):
    """A CheckpointReader for `prefix`, after checking that its files are
    regular files (TensorFlow would block on a FIFO and fail obscurely on a
    directory)."""
    index = prefix + ".index"
    if not os.path.exists(index):
        raise UserError(f"{prefix}: no checkpoint here (expected {index} and {prefix}.data-*)")
    for path in [index] + glob.glob(glob.escape(prefix) + ".data-*"):
        problem = input_problem(path)
        if problem is not None:
            raise UserError(f"{path}: {problem}, not a regular file; expected a file of the "
                            f"checkpoint {prefix}")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as err:  # a truncated or foreign file; TensorFlow raises several types
        raise UserError(f"{prefix}: not a readable TensorFlow checkpoint "
                        f"({_read_error(err)})") from None
    _check_data_files(prefix, reader)
    return reader


def _check_data_files(prefix, reader):
    """Raise a UserError when a data shard is missing, or when the data files
    are shorter than the tensors the index lists (numbers are stored
    unpadded, so a truncated file is always short)."""
    shards = glob.glob(glob.escape(prefix) + ".data-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]")
    if not shards:
        raise UserError(f"{prefix}: the data file is missing (expected "
                        f"{prefix}.data-00000-of-00001 beside {prefix}.index)")
    count = int(shards[0][-5:])
    expected = [f"{prefix}.data-{i:05d}-of-{count:05d}" for i in range(count)]
    missing = [path for path in expected if not os.path.isfile(path)]
    if missing:
        raise UserError(f"{prefix}: data file {missing[0]} is missing"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    needed = sum(int(np.prod(shapes[name])) * dtypes[name].size for name in shapes
                 if dtypes[name] != tf.string)
    held = sum(os.path.getsize(path) for path in expected)
    if held < needed:
        raise UserError(f"{prefix}: the data is cut short: the index lists {needed:,} bytes of "
                        f"tensors but the data file{'s hold' if count > 1 else ' holds'} "
                        f"{held:,} (truncated or partly written)")


def read_variable_shapes(prefix):
    """Checkpoint name -> shape of every variable stored under `prefix` (read
    from the .index alone; `read_variables` and `check_finite` read the data)."""
    reader = _open_reader(prefix)
    return {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}


def _scan(prefix, names=None):
    """Yield (name, array or None, problem or None) for each of `names`
    (default: every tensor), reading one tensor at a time. A problem is a
    tensor that cannot be read or holds NaN or infinite values."""
    reader = _open_reader(prefix)
    stored = reader.get_variable_to_shape_map()
    for name in names if names is not None else sorted(stored):
        if name not in stored:
            raise UserError(f"{prefix}: variable '{name}' not found (the checkpoint has "
                            f"{len(stored)} variables)")
        try:
            array = reader.get_tensor(name)
        except Exception as err:  # DataLossError, IndexError, NotFoundError, ...
            yield name, None, f"cannot be read: {_read_error(err)}"
            continue
        found = nonfinite(array)
        yield name, array, None if found is None else f"holds {found}"


def read_variables(prefix, names=None):
    """Checkpoint name -> numpy array, for `names` (default: all). A tensor that
    cannot be read or holds NaN or infinite values is a UserError naming it."""
    values = {}
    for name, array, problem in _scan(prefix, names):
        if problem is not None:
            raise UserError(f"{prefix}: variable '{name}' {problem}; the checkpoint is unusable")
        values[name] = array
    return values


def checkpoint_problems(prefix):
    """(name, problem) for every tensor of `prefix` that cannot be read or holds
    NaN or infinite values; empty when the whole checkpoint reads and is finite.
    Reads every tensor, one at a time."""
    return [(name, problem) for name, _, problem in _scan(prefix) if problem is not None]


def check_finite(prefix):
    """Raise a UserError unless every tensor of `prefix` (model variables,
    optimizer slots, global step) reads and holds finite values: the test for
    a checkpoint that can be used or resumed."""
    problems = checkpoint_problems(prefix)
    if problems:
        raise UserError(f"{prefix}: " + _problem_summary(problems) + "; the checkpoint is unusable")


def _problem_summary(problems, shown=3):
    text = "; ".join(f"'{name}' {problem}" for name, problem in problems[:shown])
    return text + (f"; and {len(problems) - shown} more" if len(problems) > shown else "")


def sidecar_path(prefix):
    return prefix + SIDECAR_SUFFIX


def write_sidecar(prefix, spec, **extra):
    """Write `PREFIX.json` for a `ModelSpec` (atomically)."""
    record = {"format": SIDECAR_FORMAT, "version": 1}
    record.update(dataclasses.asdict(spec))
    if spec.backbone == DEFAULT_BACKBONE:  # a sidecar without "backbone" means VGG19
        del record["backbone"]
    record["vgg_widths"] = list(spec.vgg_widths)
    record["mean_pixel"] = None if spec.mean_pixel is None else [float(v) for v in spec.mean_pixel]
    record.update(extra)
    write_json_atomic(sidecar_path(prefix), record)


def read_sidecar(prefix):
    """The sidecar's dict, or None when the checkpoint has none."""
    path = sidecar_path(prefix)
    if not os.path.exists(path):
        return None
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a regular file; expected the checkpoint's JSON sidecar")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable checkpoint sidecar ({err})") from None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path}: not an fcn_graph sidecar (expected \"format\": \"{SIDECAR_FORMAT}\")")
    if record.get("mean_pixel") is not None:
        record["mean_pixel"] = list(check_mean_pixel(record["mean_pixel"], f"{path}: mean_pixel"))
    for key in ("train_upsampling", "kernels_transposed"):
        if key in record and not isinstance(record[key], bool):
            raise UserError(f"{path}: {key}: expected true or false, found {record[key]!r}")
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


BROKEN_DIR = "broken"
REASON_NAME = "REASON.txt"


def move_aside(prefix, reason):
    """Move the files of checkpoint `prefix` (index, data shards, `.meta`,
    sidecar) that does not read into DIRECTORY/broken/BASE/ (BASE.2, ... when
    taken), with REASON.txt saying why; nothing is deleted or overwritten.
    Returns the folder they went to."""
    directory, base = os.path.split(os.path.abspath(prefix))
    broken = os.path.join(directory, BROKEN_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(broken)
    refuse_planted(broken, directory_ok=True)
    if not os.path.isdir(broken):
        raise UserError(f"{broken}: is not a folder; cannot move checkpoint {base} aside there")
    target, count = os.path.join(broken, base), 1
    while True:
        try:
            os.mkdir(target)  # never an existing folder or a link
            break
        except FileExistsError:
            count += 1
            target = os.path.join(broken, f"{base}.{count}")
    names = [n for n in sorted(os.listdir(directory)) if n.startswith(base)
             and (n[len(base):] in (".index", ".meta", SIDECAR_SUFFIX)
                  or DATA_SHARD.fullmatch(n[len(base):]))]
    with atomic_write(os.path.join(target, REASON_NAME)) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(f"{base}: {reason}\nmoved here from {directory} by fcn_graph, which "
                         f"does not read it; its files: {', '.join(names)}\n")
    for name in names:  # a rename moves the entry itself, never what a link points to
        os.rename(os.path.join(directory, name), os.path.join(target, name))
    return target


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
    another architecture or backbone than the variables show is an error;
    without "backbone" a sidecar means VGG19). The backbone is the one whose
    conv layers the variables hold exactly (VGG16: no conv3_4, conv4_4,
    conv5_4)."""
    shapes = read_variable_shapes(prefix)
    scope = definition.SCOPE
    variant = definition.detect_architecture(shapes, scope)
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
    sidecar = read_sidecar(prefix)
    backbone = _checkpoint_backbone(prefix, shapes, sidecar)
    widths = tuple(shape_of(name + "_b")[0] for name in VGG_CONVS[backbone])
    if num_classes is not None and num_classes != found_classes:
        raise UserError(f"{prefix}: the checkpoint has {found_classes} classes "
                        f"({scope}/{classes_name}), not {num_classes}")
    if fc_width is not None and fc_width != found_fc:
        raise UserError(f"{prefix}: the checkpoint has fc width {found_fc} ({scope}/b6), "
                        f"not {fc_width}")
    fields = dict(num_classes=found_classes, fc_width=found_fc, vgg_widths=widths,
                  architecture=architecture, skips=skips, backbone=backbone)
    if sidecar is not None:
        recorded = (sidecar.get("architecture", "legacy"), sidecar.get("skips", "8s"))
        if recorded != variant:
            raise UserError(f"{sidecar_path(prefix)}: says {_variant_name(recorded)} but the "
                            f"checkpoint's variables are a {_variant_name(variant)}")
        fields.update(mean_pixel=sidecar.get("mean_pixel"),
                      channel_order=sidecar.get("channel_order", "rgb"),
                      train_upsampling=sidecar.get("train_upsampling", False))
    try:
        spec = ModelSpec(**fields)
    except ValueError as err:
        raise UserError(f"{sidecar_path(prefix)}: {err}") from None
    return spec


def _checkpoint_backbone(prefix, shapes, sidecar):
    """The backbone of a checkpoint's variables; the sidecar's (else VGG19) when
    they are neither body exactly, so that the missing variable is named next.
    A sidecar that names another backbone than the variables is an error."""
    recorded = (sidecar or {}).get("backbone", DEFAULT_BACKBONE)
    found = definition.detect_backbone(shapes)
    if sidecar is not None and found is not None and recorded != found:
        raise UserError(f"{sidecar_path(prefix)}: says backbone {recorded!r} but the "
                        f"checkpoint's variables are a {found.upper()} body")
    return found or (recorded if recorded in VGG_CONVS else DEFAULT_BACKBONE)


def check_variables(prefix, variables):
    """Raise a UserError naming every model variable that the checkpoint lacks
    or holds with another shape."""
    shapes = read_variable_shapes(prefix)
    stored = definition.detect_architecture(shapes)
    wanted = definition.detect_architecture(variables)
    if stored is not None and wanted is not None and stored != wanted:
        raise UserError(f"{prefix}: holds a {_variant_name(stored)} model but the graph is a "
                        f"{_variant_name(wanted)}; build the graph from the checkpoint's own "
                        "spec (model_spec_from_checkpoint) or convert the weights")
    stored, wanted = definition.detect_backbone(shapes), definition.detect_backbone(variables)
    if stored is not None and wanted is not None and stored != wanted:
        raise UserError(f"{prefix}: holds a {stored.upper()} body but the graph is a "
                        f"{wanted.upper()}; build the graph from the checkpoint's own spec "
                        "(model_spec_from_checkpoint) or set the backbone to " + stored)
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
    from `model_saver` when the graph is already finalised. A checkpoint that
    cannot be restored, or whose restored values hold NaN or infinities, is a
    UserError naming the prefix and the variables."""
    variables = variables if variables is not None else tf_layers.model_variables(sess.graph)
    check_variables(prefix, variables)
    with sess.graph.as_default():  # outside a graph context, Saver would restore eagerly
        try:
            (saver or model_saver(variables)).restore(sess, prefix)
        except (tf.errors.OpError, ValueError) as err:
            raise UserError(f"{prefix}: cannot restore the model: {_read_error(err)}") from None
    problems = []
    sums = _variable_sums(variables)
    flagged = [name for name, total in sess.run(sums).items() if not np.isfinite(total)]
    for name in flagged + [name for name in variables if name not in sums]:
        found = nonfinite(sess.run(variables[name]))
        if found is not None:
            problems.append((name, f"holds {found}"))
    if problems:
        raise UserError(f"{prefix}: " + _problem_summary(problems) + "; the checkpoint is unusable")


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
        found = nonfinite(value)
        if found is not None:
            raise UserError(f"{variable.op.name}: the value to load holds {found}; expected "
                            "finite numbers")
        with sess.graph.as_default():  # outside a graph context, initial_value is refused
            sess.run(variable.initializer, feed_dict={variable.initial_value: value})


def vgg_values(vgg, architecture="legacy"):
    """Checkpoint name -> array for the VGG body of a `VggWeights` (and conv6/conv7
    from fc6/fc7 for the paper architecture)."""
    scope = definition.SCOPE
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
    variables = variables if variables is not None else tf_layers.model_variables(sess.graph)
    values = vgg_values(vgg, architecture)
    for key, array in values.items():
        if key not in variables:
            raise UserError(f"{vgg.path}: the graph has no variable '{key}'")
        expected = tuple(variables[key].shape.as_list())
        if expected != array.shape:
            raise UserError(f"{vgg.path}: {key.split('/')[-1]} has shape {list(array.shape)} "
                            f"but the graph's {key} is {list(expected)}")
    assign_arrays(sess, variables, values)


# Graph -> {variable name: sum tensor}, kept off the graph's collections so
# that exported meta graphs do not carry them.
_SUMS = weakref.WeakKeyDictionary()


def _variable_sums(variables):
    """Name -> a scalar tensor summing the float variable's values, built once
    per graph while it can still take ops (model_saver builds them). A NaN or
    an infinity makes the sum non-finite, and fetching one scalar per variable
    is much cheaper than fetching the weights; `restore_model` looks closer at
    the variables whose sum is not finite (an overflow of finite values
    included) and fetches those without a sum."""
    if not variables:
        return {}
    graph = next(iter(variables.values())).graph
    sums = _SUMS.setdefault(graph, {})
    missing = {name: v for name, v in variables.items()
               if name not in sums and v.dtype.base_dtype.is_floating}
    if missing and not graph.finalized:
        with graph.as_default(), tf1.name_scope("variable_sums"):
            for name, variable in missing.items():
                sums[name] = tf.reduce_sum(variable)
    return {name: sums[name] for name in variables if name in sums}


def model_saver(variables, **kwargs):
    """A Saver for the model variables under their checkpoint names (build it
    before the graph is finalised; it also builds what `restore_model` needs
    to check the restored values)."""
    _variable_sums(variables)
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
    base = os.path.basename(prefix)
    for name in sorted(before):  # TensorFlow's renames would replace a planted link
        rest = name[len(base):] if name.startswith(base) else None
        if rest in (".index", ".meta", SIDECAR_SUFFIX) or rest and DATA_SHARD.fullmatch(rest):
            refuse_planted(os.path.join(directory, name))
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


def save_checkpoint(sess, saver, directory, spec, *, step, keep, basename="model.ckpt",
                    on_saved=None, **sidecar_extra):
    """A training checkpoint DIRECTORY/BASENAME-STEP, its files in one order:
    the checkpoint itself (`save_model`: sidecar, data, index), then the
    checkpoints older than the `keep` newest complete ones removed
    (`prune_checkpoints`), then TensorFlow's state file naming those kept
    (`write_state_file`). `on_saved(prefix)` is called as soon as the
    checkpoint is complete, before the pruning. `sidecar_extra`: more keys
    of the sidecar. Returns the prefix written."""
    prefix = save_model(sess, saver, os.path.join(directory, basename), spec, global_step=step,
                        **sidecar_extra)
    if on_saved is not None:
        on_saved(prefix)
    kept = prune_checkpoints(directory, keep, pattern=re.escape(basename) + r"-\d+")
    write_state_file(directory, kept)
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
