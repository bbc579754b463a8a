"""One strict configuration for train, evaluate and infer.

The defaults live here, in code, one commented field each. A JSON file with
comments (read with `commentjson`) overrides them, and `--set section.key=value`
on the command line overrides the file. Unknown sections or keys, wrong types
and impossible values are `UserError`s naming the key and where it came from:

    config.json: train.batch_size: expected an integer in 1..4096, found -2

Relative paths in the config are taken relative to the current directory.
"""

import dataclasses
import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import List, Optional

from fcn_graph.core.constants import (
    KERNELS,
    RESOLVED_CONFIG_NAME,
    TRAIN_KEEP_PROB,
    TRAIN_PRECISIONS,
)
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import (
    NotARegularFile,
    kind_of,
    link_problem,
    read_regular_file,
    write_json_atomic,
)
from fcn_graph.core.ranges import (
    FC_WIDTH_RANGE,
    IMAGE_COUNT_RANGE,
    NUM_CLASSES_RANGE,
    SEED_RANGE,
    WIDTH_MULTIPLIER_RANGE,
    Range,
    threads_range,
)
from fcn_graph.data.annotations import class_names_problem
from fcn_graph.network.spec import BACKBONES, DEFAULT_BACKBONE, FC_WIDTH, check_variant

DATASET_KINDS = ("voc", "ade20k", "pets", "folder", "shapes", "coco", "labelme", "colour_masks")
COCO_CROWD_RULES = ("ignore", "class")
UNKNOWN_COLOUR_RULES = ("error", "ignore")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "poly")
LOSSES = ("cross_entropy", "focal")
# What train.allreduce_dtype accepts: the type of the gradients on the wire.
ALLREDUCE_DTYPES = ("float32", "bfloat16")
# train.class_weights computed from the training labels (`imbalance`).
MEDIAN_FREQUENCY = "median_frequency"
# A train.devices entry: GPU:0, /gpu:1, /device:CPU:0 ...
DEVICE_NAME = re.compile(r"(?:/device:|/)?(cpu|gpu|CPU|GPU):(\d+)")

# Upper bound of train.scale_range. Each training image is resized by its
# scale before the crop, so its memory grows with the square of the scale: at
# 4.0 a 2000 x 2000 image becomes 8000 x 8000 (768 MB as float32 RGB, times the
# images decoded in parallel), the most a training machine can be assumed to
# hold; larger scales only crop ever smaller parts of an object.
MAX_TRAIN_SCALE = 4.0

# The range of every numeric key (of each element of a list); null stays
# allowed where the key's default is null. train.threads: `threads_range()`.
STEPS = Range(1, 10**12, integer=True)
RANGES = {
    "data.val_fraction": Range(0, 1, low_open=True, high_open=True),
    "data.shapes_train_images": Range(1, 10**6, integer=True),
    "data.shapes_val_images": Range(1, 10**6, integer=True),
    "data.shapes_image_size": Range(16, 4096, integer=True),
    "model.num_classes": NUM_CLASSES_RANGE,
    "model.fc_width": FC_WIDTH_RANGE,
    "model.vgg_width": WIDTH_MULTIPLIER_RANGE,
    "train.batch_size": Range(1, 4096, integer=True),
    "train.image_size": Range(1, 16384, integer=True),
    "train.max_steps": STEPS,
    "train.learning_rate": Range(0, 10, low_open=True),
    "train.keep_prob": Range(0, 1, low_open=True),
    "train.seed": SEED_RANGE,
    "train.momentum": Range(0, 1, high_open=True),
    "train.weight_decay": Range(0, 1),
    "train.lr_power": Range(0, 10, low_open=True),
    "train.warmup_steps": Range(0, 10**12, integer=True),
    "train.scale_range": Range(0, MAX_TRAIN_SCALE, low_open=True),
    "train.checkpoint_every": STEPS,
    "train.keep_checkpoints": Range(1, 10000, integer=True),
    "train.eval_every": Range(0, 10**12, integer=True),
    "train.eval_max_images": IMAGE_COUNT_RANGE,
    "train.log_every": STEPS,
    "train.summary_images": Range(0, 100, integer=True),
    "train.step_timeout": Range(0, 7 * 86400, low_open=True, unit="seconds"),
    "train.focal_gamma": Range(0, 100),
    "train.hard_pixels": Range(0, 1, low_open=True),
    "train.patience_steps": Range(0, 10**12, integer=True),
    "train.allreduce_bucket_bytes": Range(1, 10**12, integer=True, unit="bytes"),
}

# The config keys that `datasets.open_config_split` reads, besides the split's name.
SPLIT_KEYS = ("data.kind", "data.root", "data.val_fraction", "data.shapes_train_images",
              "data.shapes_val_images", "data.shapes_image_size", "data.coco_crowd",
              "data.unknown_colour", "data.class_names", "train.seed", "train.log_dir")


@dataclass
class DataConfig:
    # Dataset layout: voc, ade20k, pets, folder, shapes (generated on first use), or an
    # annotation-tool export read directly: coco (COCO JSON), labelme (labelme JSON
    # files) or colour_masks (RGB label PNGs and a colour map).
    kind: str = "shapes"
    # Dataset directory. Required for every kind but shapes (default data/shapes).
    root: Optional[str] = None
    # Split used for training: a list file name (voc, folder, shapes), training/train
    # (ade20k) or trainval/train (pets).
    train_split: str = "train"
    # Split used for validation during training and by evaluate.
    val_split: str = "val"
    # pets/folder without list files: fraction of the images held out for validation.
    val_fraction: float = 0.1
    # shapes: number of generated training images.
    shapes_train_images: int = 800
    # shapes: number of generated validation images.
    shapes_val_images: int = 100
    # shapes: height and width of the generated images, in pixels.
    shapes_image_size: int = 96
    # coco: crowd regions (iscrowd 1) become the ignore label 255 (ignore) or their
    # category's class (class).
    coco_crowd: str = "ignore"
    # colour_masks: a mask colour missing from the colour map is an error naming the
    # file (error) or becomes the ignore label 255 (ignore).
    unknown_colour: str = "error"
    # labelme without classes.txt: the class names, class 0 first; null = the
    # background followed by the sorted label names found (written here in the run's
    # resolved config, so that a resumed run keeps the mapping).
    class_names: Optional[List[str]] = None


@dataclass
class ModelConfig:
    # Number of classes, including background; null = the dataset's own count.
    num_classes: Optional[int] = None
    # MatConvNet weights (.mat) of the backbone for the VGG body; null = random
    # initialisation.
    vgg_mat: Optional[str] = None
    # Channels of conv6 and conv7 (the convolutionalized fc6/fc7); VGG19 uses 4096.
    fc_width: int = FC_WIDTH
    # Width multiplier of a randomly initialised VGG body; 1.0 = the real network.
    vgg_width: float = 1.0
    # The VGG body: vgg19 (16 convs) or vgg16 (13 convs, the paper's own network).
    backbone: str = DEFAULT_BACKBONE
    # Graph variant: legacy (FCN.tensorflow) or paper (the reference FCN-32s/16s/8s).
    architecture: str = "legacy"
    # paper only: 32s, 16s or 8s (FCN-32s/16s/8s); legacy is always 8s.
    skips: str = "8s"
    # paper only: learn the bilinear-initialised upsampling filters (frozen by default).
    train_upsampling: bool = False
    # Kernel set of the TensorFlow graph: reference (plain conv2d and
    # conv2d_transpose), cpu (fcn_graph.network.cpu_layers' forms), or auto (reference
    # when TensorFlow sees a GPU, cpu otherwise).
    kernels: str = "auto"


@dataclass
class TrainConfig:
    # Images per training step.
    batch_size: int = 2
    # Side of the square training crops, in pixels.
    image_size: int = 224
    # Total number of training steps (a resumed run stops at the same step).
    max_steps: int = 100000
    # Initial learning rate.
    learning_rate: float = 1e-4
    # Dropout keep probability of conv6/conv7 while training (1.0 = no dropout);
    # null = the architecture's own: 0.85 legacy (FCN.tensorflow), 0.5 paper.
    keep_prob: Optional[float] = None
    # Checkpoints, TensorBoard summaries and the resolved config go here.
    log_dir: str = "runs/fcn8s"
    # Seed of the initialisation, the shuffling and the augmentation.
    seed: int = 0
    # adam or sgd (with momentum).
    optimizer: str = "adam"
    # Momentum of sgd (ignored by adam).
    momentum: float = 0.9
    # L2 penalty on the convolution kernels (0 = none), added to the loss.
    weight_decay: float = 0.0
    # Per-class loss weights: null (all 1), a list of model.num_classes finite
    # numbers >= 0, or "median_frequency" (computed once from the training labels).
    class_weights: Optional[typing.Union[List[float], str]] = None
    # Per-pixel loss: cross_entropy, or focal: (1 - p) ** focal_gamma * cross-entropy.
    loss: str = "cross_entropy"
    # Exponent of the focal loss (0 = the cross-entropy).
    focal_gamma: float = 2.0
    # Online hard-pixel mining: the loss over this fraction of each device's
    # labelled pixels, those with the largest loss; 1.0 = every pixel.
    hard_pixels: float = 1.0
    # Warn (one line) when validations or the loss show that the run learns nothing.
    warn_on_collapse: bool = True
    # Such a warning saves a checkpoint and stops the run (exit status 2).
    stop_on_collapse: bool = False
    # Steps per block of the loss check: a block whose median loss is not below
    # the best earlier block's is a warning; 0 = no loss check.
    patience_steps: int = 2000
    # Learning rate schedule: constant, or poly: lr * (1 - step / max_steps) ** lr_power.
    lr_schedule: str = "constant"
    # Exponent of the poly schedule.
    lr_power: float = 0.9
    # Steps over which the learning rate rises linearly to the schedule's (0 = none).
    warmup_steps: int = 0
    # Random scale range of the training augmentation: [min, max], 1.0 = unchanged,
    # with 0 < min <= max <= MAX_TRAIN_SCALE.
    scale_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    # Random horizontal flips during training.
    flip: bool = True
    # Save a checkpoint every this many steps (and always at the end).
    checkpoint_every: int = 1000
    # Number of recent checkpoints kept on disk.
    keep_checkpoints: int = 5
    # Evaluate on the validation split every this many steps (0 = only at the end).
    eval_every: int = 5000
    # Validation images used by the periodic evaluation; null = the whole split.
    eval_max_images: Optional[int] = None
    # Test-time augmentation of the periodic evaluation, as evaluate --tta:
    # "flip", "scales=0.75,1,1.25" or both ("flip,scales=..."); null = off.
    val_tta: Optional[str] = None
    # Print the progress line and write scalar summaries every this many steps.
    log_every: int = 10
    # Number of image / prediction / ground-truth panels written per evaluation.
    summary_images: int = 3
    # Threads for TensorFlow ops; null = the number of CPU cores.
    threads: Optional[int] = None
    # float32, or bfloat16: the convolutions and matrix products run in bfloat16
    # through oneDNN (CPUs with bfloat16 units: avx512_bf16 or amx_bf16), while
    # the variables, the loss, the optimizer and the checkpoints stay float32.
    precision: str = "float32"
    # Devices of this machine that train side by side, each on an equal part of
    # the batch (e.g. ["GPU:0", "GPU:1"]); null = every visible GPU, else CPU:0.
    devices: Optional[List[str]] = None
    # With TF_CONFIG (several tasks): seconds a step may wait for the other
    # tasks before the run stops, naming the task that did not answer.
    step_timeout: float = 300.0
    # With TF_CONFIG: the gradients are summed across the tasks in buckets of at
    # most this many bytes (on the wire), each exchanged as soon as the backward
    # pass has produced it, the last layers' first; a gradient larger than this
    # is a bucket of its own. A cap above the model's size gives one exchange
    # after the whole backward pass.
    allreduce_bucket_bytes: int = 32 * 2**20
    # With TF_CONFIG: the type of the gradients on the wire: float32, or
    # bfloat16 (half the bytes; cast back to float32 after the sum, the loss
    # sums stay float32).
    allreduce_dtype: str = "float32"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def load_config(path=None, overrides=(), *, reads=None, command=None):
    """Defaults, then the file at `path` (if any), then `overrides`; validated.

    `overrides` are strings `section.key=value`. Returns a `Config`.
    `reads`: the dotted keys that `command` uses with its present arguments
    (None: every key). An override of any other key is still checked, and gets
    a one-line warning on stderr that it is ignored, naming the key and `command`.
    """
    config = Config()
    sources = {}
    if path is not None:
        data = _read_config_file(path)
        for section, values in data.items():
            if section not in SECTIONS:
                raise UserError(
                    f"{path}: unknown config section {section!r}; "
                    f"expected one of {', '.join(SECTIONS)}"
                )
            if not isinstance(values, dict):
                raise UserError(
                    f"{path}: {section}: expected an object of keys, found {_show(values)}"
                )
            for key, value in values.items():
                _set(config, f"{section}.{key}", value, path)
                sources[f"{section}.{key}"] = path
    for text in overrides:
        dotted, value = _parse_override(text)
        _set(config, dotted, value, "--set")
        sources[dotted] = "--set"
    _validate(config, sources, default_source=path or "config")
    _resolve(config)
    if reads is not None:
        command = command or "fcn_graph"
        for dotted in unread_overrides(overrides, reads):
            uses = f"it uses only {', '.join(reads)}" if reads else "it uses no config key"
            print(f"{command}: warning: --set {dotted} ignored: {command} does not use "
                  f"{dotted} ({uses} with these arguments)", file=sys.stderr)
    return config


def unread_overrides(overrides, reads):
    """The keys of `overrides` (`section.key=value` strings) not in `reads`, once each."""
    keys = [_parse_override(text)[0] for text in overrides]
    return [key for index, key in enumerate(keys) if key not in reads and key not in keys[:index]]


def config_to_dict(config):
    """The config as nested plain dicts (JSON-serialisable)."""
    return dataclasses.asdict(config)


def config_from_dict(data, source="config"):
    """Rebuild a validated `Config` from `config_to_dict` output."""
    config = Config()
    sources = {}
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise UserError(f"{source}: unknown config section {section!r}")
        for key, value in values.items():
            _set(config, f"{section}.{key}", value, source)
            sources[f"{section}.{key}"] = source
    _validate(config, sources)
    _resolve(config)
    return config


def save_resolved_config(config, log_dir):
    """Write the resolved config as `log_dir/config.json`, atomically; return the path."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, RESOLVED_CONFIG_NAME)
    write_json_atomic(path, config_to_dict(config))
    return path


def _read_config_file(path):
    import commentjson

    text = _read_text(path)
    if not _strip_comments(text).strip():
        raise UserError(f"{path}: empty config file; expected a JSON object of sections, "
                        f'e.g. {{"train": {{"batch_size": 4}}}}')
    try:
        data = commentjson.loads(text, object_pairs_hook=_refuse_duplicates)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except Exception as err:  # commentjson raises several lark and json error types
        raise UserError(f"{path}: not valid JSON (comments allowed): "
                        f"{_json_error(commentjson, text, err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of sections, found {_show(data)}")
    return data


def _read_text(path):
    """The file at `path` as text: UTF-8 (a leading byte-order mark allowed), from
    a regular file only (`fileio.read_regular_file`), so that a FIFO or a
    device never blocks the command."""
    problem = link_problem(path)
    if problem is not None:
        raise UserError(f"{path}: {problem}; expected a JSON config file")
    try:
        raw = read_regular_file(path)
    except NotARegularFile as err:
        raise UserError(f"{path}: expected a JSON config file, found {kind_of(err.mode)}") from None
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: expected a JSON config file, found a directory") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read config file: {err.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UserError(f"{path}: expected UTF-8 text, found byte 0x{raw[err.start]:02x} "
                        f"at line {line} (offset {err.start}); save the file as UTF-8") from None


def _strip_comments(text):
    """`text` without its // and # comment lines (enough to tell an empty file)."""
    return "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith(("//", "#")))


def _refuse_duplicates(pairs):
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise UserError(f"key {key!r} appears {keys.count(key)} times in one object; "
                            f"expected each key once")
    return dict(pairs)


def _json_error(commentjson, text, err):
    """Where and what the JSON error is, on one line."""
    import lark

    try:
        commentjson.commentjson.parser.parse(text)
    except lark.exceptions.UnexpectedInput as parse_err:
        token = getattr(parse_err, "token", None)
        if getattr(token, "type", None) == "$END":
            return "unexpected end of file; is it cut short?"
        found = text.splitlines()[parse_err.line - 1][parse_err.column - 1:][:20] \
            if 0 < parse_err.line <= len(text.splitlines()) else ""
        return (f"line {parse_err.line}, column {parse_err.column}: unexpected "
                f"{repr(found) if found else 'end of file'}")
    except Exception:  # fall back to the loader's own message
        pass
    message = str(err).strip()
    return message.splitlines()[0][:200] if message else type(err).__name__


def _parse_override(text):
    if "=" not in text:
        raise UserError(f"--set {text}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return dotted, value


def _set(config, dotted, value, source):
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise UserError(
            f"{source}: unknown config key {dotted!r}; keys look like section.key "
            f"with section one of {', '.join(SECTIONS)}"
        )
    section_name, key = parts
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        known = ", ".join(f"{section_name}.{k}" for k in hints)
        raise UserError(f"{source}: unknown config key {dotted!r}; known keys: {known}")
    setattr(section, key, _coerce(value, hints[key], f"{source}: {dotted}"))


def _coerce(value, hint, where):
    """Check `value` against the annotation `hint`; return it (ints widened to float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where)
        # several types (a list of numbers or a string): the one of the JSON value
        for hint in inner:
            if isinstance(value, typing.get_origin(hint) or hint):
                return _coerce(value, hint, where)
        names = {list: "a list", str: "a string", float: "a number", int: "an integer"}
        kinds = ", ".join(names[typing.get_origin(a) or a] for a in inner)
        raise UserError(f"{where}: expected {kinds} or null, found {_show(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, found {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected an integer, found {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of hundreds of digits
                raise UserError(f"{where}: expected a finite number, found an integer of "
                                f"{len(str(abs(value)))} digits") from None
        raise UserError(f"{where}: expected a number, found {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, found {_show(value)}")
    if origin in (list, List):
        (inner,) = args
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, found {_show(value)}")
        return [_coerce(v, inner, where) for v in value]
    raise AssertionError(f"unsupported annotation {hint!r} for {where}")


def _show(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return f"{type(value).__name__} {json.dumps(value)}"
    if isinstance(value, str):
        return f"string {value!r}"
    return repr(value)


class _Checker:
    """One-line errors naming the key and where its value came from."""

    def __init__(self, sources, default_source):
        self.sources, self.default_source = sources, default_source

    def fail(self, dotted, message):
        source = self.sources.get(dotted, self.default_source)
        raise UserError(f"{source}: {dotted}: {message}")

    def one_of(self, dotted, value, choices):
        if value not in choices:
            self.fail(dotted, f"expected one of {', '.join(choices)}, found {value!r}")


def _validate(config, sources, default_source="config"):
    """Checks beyond the types, section by section; errors name the key and
    where its value came from. Changes nothing (`_resolve` derives values)."""
    check = _Checker(sources, default_source)
    for dotted, numbers in [*RANGES.items(), ("train.threads", threads_range())]:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        for item in value if isinstance(value, list) else [value]:
            problem = None if item is None else numbers.problem(item)
            if problem is not None:
                check.fail(dotted, problem)
    _validate_data(config.data, check)
    _validate_model(config.model, check)
    _validate_train(config.train, config.model, check)


def _validate_data(d, check):
    check.one_of("data.kind", d.kind, DATASET_KINDS)
    if d.kind != "shapes" and not d.root:
        check.fail("data.root", f"required for data.kind {d.kind!r}: the dataset directory")
    check.one_of("data.coco_crowd", d.coco_crowd, COCO_CROWD_RULES)
    check.one_of("data.unknown_colour", d.unknown_colour, UNKNOWN_COLOUR_RULES)
    if d.class_names is not None and d.kind != "labelme":
        check.fail("data.class_names", f"used only by data.kind labelme, found data.kind "
                                       f"{d.kind!r}; set it to null")
    if d.class_names is not None:
        problem = class_names_problem(d.class_names)
        if problem:
            check.fail("data.class_names", problem)
    if not d.train_split:
        check.fail("data.train_split", "expected a split name, found an empty string")
    if not d.val_split:
        check.fail("data.val_split", "expected a split name, found an empty string")


def _validate_model(m, check):
    if m.vgg_mat is not None and m.vgg_width != 1.0:
        check.fail("model.vgg_width", f"must be 1.0 when model.vgg_mat is given (the .mat fixes "
                                      f"the widths), found {m.vgg_width}; set model.vgg_mat to "
                                      f"null for a narrower randomly initialised VGG")
    try:
        check_variant(m.architecture, m.skips)
    except ValueError as err:
        field, _, message = str(err).partition(": ")
        check.fail(f"model.{field}", message)
    check.one_of("model.kernels", m.kernels, KERNELS)
    check.one_of("model.backbone", m.backbone, BACKBONES)


def _validate_train(t, m, check):
    check.one_of("train.optimizer", t.optimizer, OPTIMIZERS)
    if isinstance(t.class_weights, str) and t.class_weights != MEDIAN_FREQUENCY:
        check.fail("train.class_weights", f"expected a list of numbers, \"{MEDIAN_FREQUENCY}\" "
                                          f"or null, found {t.class_weights!r}")
    if isinstance(t.class_weights, list):
        problem = class_weights_problem(t.class_weights, m.num_classes)
        if problem:
            check.fail("train.class_weights", problem)
    check.one_of("train.loss", t.loss, LOSSES)
    check.one_of("train.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    if (len(t.scale_range) != 2
            or not 0 < t.scale_range[0] <= t.scale_range[1] <= MAX_TRAIN_SCALE):
        check.fail("train.scale_range", f"expected [min, max] with 0 < min <= max <= "
                                        f"{MAX_TRAIN_SCALE:g} (the memory of a scaled image "
                                        f"grows with the scale squared), found {t.scale_range}")
    if t.val_tta is not None:
        from fcn_graph.engines.tta import parse_tta
        try:
            parse_tta(t.val_tta, flag="train.val_tta")
        except ValueError as err:
            check.fail("train.val_tta", str(err).removeprefix("train.val_tta: "))
    check.one_of("train.precision", t.precision, TRAIN_PRECISIONS)
    check.one_of("train.allreduce_dtype", t.allreduce_dtype, ALLREDUCE_DTYPES)
    if t.devices is not None:
        _validate_devices(t, check)
    if not t.log_dir:
        check.fail("train.log_dir", "expected a directory, found an empty string")


def _device_name(name):
    """"gpu:1" -> "/device:GPU:1"; None when `name` is not a device name."""
    match = DEVICE_NAME.fullmatch(name.strip())
    return match and f"/device:{match.group(1).upper()}:{int(match.group(2))}"


def _validate_devices(t, check):
    if not t.devices:
        check.fail("train.devices", "expected a list of devices like [\"GPU:0\", \"GPU:1\"] "
                                    "or null, found an empty list")
    names = []
    for name in t.devices:
        if not _device_name(name):
            check.fail("train.devices", f"expected device names like GPU:0 or CPU:0, found "
                                        f"{name!r}")
        names.append(_device_name(name))
    for name in names:
        if names.count(name) > 1:
            check.fail("train.devices", f"{name} appears {names.count(name)} times; expected "
                                        f"each device once")
    if t.batch_size % len(names):
        check.fail("train.batch_size", f"expected a multiple of the {len(names)} train.devices "
                                       f"(each trains on an equal part of the batch), found "
                                       f"{t.batch_size}")


def _resolve(config):
    """The values a checked config derives: train.keep_prob's default for the
    architecture, and train.devices in TensorFlow's spelling."""
    t = config.train
    if t.keep_prob is None:
        t.keep_prob = TRAIN_KEEP_PROB[config.model.architecture]
    if t.devices is not None:
        t.devices = [_device_name(name) for name in t.devices]


def class_weights_problem(weights, num_classes=None, counted="model.num_classes"):
    """None when `weights` is a list of finite numbers >= 0, not all 0, one per
    class (`num_classes`, which `counted` names; None: any length); else what
    is wrong, as a phrase."""
    if not isinstance(weights, list):
        return f"expected a list of numbers, found {_show(weights)}"
    if not weights:
        return "expected one weight per class, found an empty list"
    if num_classes is not None and len(weights) != num_classes:
        return (f"expected one weight per class, {num_classes} numbers ({counted}), "
                f"found {len(weights)}")
    for weight in weights:
        if (not isinstance(weight, (int, float)) or isinstance(weight, bool)
                or not (math.isfinite(weight) and weight >= 0)):
            return f"expected finite numbers >= 0, found {_show(weight)}"
    if not any(weight > 0 for weight in weights):
        return "every weight is 0, so no pixel would count; expected a positive weight"
    return None
