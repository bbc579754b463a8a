"""Checkpoints: find, inspect, restore and write them, with a JSON sidecar.

A checkpoint is a TensorFlow V2 checkpoint prefix (`PREFIX.index` plus
`PREFIX.data-*`). Beside it, `PREFIX.json` (the sidecar) records what the
variable shapes cannot tell: the mean pixel, the channel order and the
architecture. FCN.tensorflow checkpoints have no sidecar; their class count
and widths are read from the variable shapes and the VGG mean is assumed.
"""

import dataclasses
import glob
import json
import os

import numpy as np
import tensorflow as tf

from fcn_graph import model as fcn_model
from fcn_graph.errors import UserError
from fcn_graph.fileio import write_json_atomic

tf1 = tf.compat.v1

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "fcn_graph.checkpoint"


def resolve_checkpoint(path):
    """A checkpoint prefix from a prefix, one of its files, or a directory
    (its latest checkpoint)."""
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None or not os.path.exists(prefix + ".index"):
            indexes = sorted(glob.glob(os.path.join(path, "*.index")), key=os.path.getmtime)
            if not indexes:
                raise UserError(f"{path}: no checkpoint in this directory (expected a "
                                "'checkpoint' file or PREFIX.index files)")
            prefix = indexes[-1][:-len(".index")]
        return prefix
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
        try:
            with open(path, encoding="utf-8") as handle:
                is_sidecar = json.load(handle).get("format") == SIDECAR_FORMAT
        except (OSError, ValueError, AttributeError):
            is_sidecar = False
        if is_sidecar:
            os.remove(path)


def model_spec_from_checkpoint(prefix, *, num_classes=None, fc_width=None):
    """The `ModelSpec` of a checkpoint: class count and widths from the variable
    shapes (checked against `num_classes`/`fc_width` when given), mean pixel,
    channel order and architecture from the sidecar when there is one."""
    shapes = read_variable_shapes(prefix)
    scope = fcn_model.SCOPE

    def shape_of(name):
        key = f"{scope}/{name}"
        if key not in shapes:
            raise UserError(f"{prefix}: variable '{key}' not found; not an FCN-8s checkpoint "
                            f"(it has {len(shapes)} variables"
                            + (f", e.g. '{sorted(shapes)[0]}')" if shapes else ")"))
        return shapes[key]

    found_classes = shape_of("b8")[0]
    found_fc = shape_of("b6")[0]
    widths = tuple(shape_of(name + "_b")[0] for name in fcn_model.VGG19_CONVS)
    if num_classes is not None and num_classes != found_classes:
        raise UserError(f"{prefix}: the checkpoint has {found_classes} classes "
                        f"(inference/b8), not {num_classes}")
    if fc_width is not None and fc_width != found_fc:
        raise UserError(f"{prefix}: the checkpoint has fc width {found_fc} (inference/b6), "
                        f"not {fc_width}")
    spec = fcn_model.ModelSpec(num_classes=found_classes, fc_width=found_fc, vgg_widths=widths)
    sidecar = read_sidecar(prefix)
    if sidecar is not None:
        if sidecar.get("mean_pixel") is not None:
            spec.mean_pixel = tuple(float(v) for v in sidecar["mean_pixel"])
        spec.channel_order = sidecar.get("channel_order", "rgb")
        spec.architecture = sidecar.get("architecture", "legacy")
    return spec


def check_variables(prefix, variables):
    """Raise a UserError naming every model variable that the checkpoint lacks
    or holds with another shape."""
    shapes = read_variable_shapes(prefix)
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
    (saver or model_saver(variables)).restore(sess, prefix)


def assign_arrays(sess, values):
    """Load numpy arrays into variables through their initializers' feeds, so the
    arrays never become graph constants. `values`: variable -> array."""
    for variable, value in values.items():
        expected = tuple(variable.shape.as_list())
        if tuple(np.shape(value)) != expected:
            raise UserError(f"{variable.op.name}: got shape {list(np.shape(value))}, "
                            f"expected {list(expected)}")
        sess.run(variable.initializer, feed_dict={variable.initial_value: value})


def assign_vgg(sess, vgg, variables=None):
    """Copy the 16 VGG conv layers of a `VggWeights` into the model variables."""
    variables = variables if variables is not None else fcn_model.model_variables(sess.graph)
    scope = fcn_model.SCOPE
    values = {}
    for name, (kernel, bias) in vgg.layers.items():
        for suffix, array in (("_w", kernel), ("_b", bias)):
            key = f"{scope}/{name}{suffix}"
            if key not in variables:
                raise UserError(f"{vgg.path}: the graph has no variable '{key}'")
            variable = variables[key]
            if tuple(variable.shape.as_list()) != array.shape:
                raise UserError(f"{vgg.path}: layer '{name}' has shape {list(array.shape)} but "
                                f"the graph's {key} is {variable.shape.as_list()}")
            values[variable] = array
    assign_arrays(sess, values)


def model_saver(variables, **kwargs):
    """A Saver for the model variables under their checkpoint names (build it
    before the graph is finalised)."""
    return tf1.train.Saver(var_list=dict(variables), save_relative_paths=True, **kwargs)


def save_model(sess, saver, prefix, spec, *, global_step=None, **sidecar_extra):
    """Write `saver`'s variables to `prefix` (plus `-STEP` with a global step)
    and the sidecar; returns the prefix written."""
    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    # Saver writes the data and index files under temporary names and renames
    # them when complete; the sidecar goes last, also by rename.
    written = saver.save(sess, prefix, global_step=global_step, write_meta_graph=False,
                         write_state=False)
    write_sidecar(written, spec, **sidecar_extra)
    return written
