"""Training FCN-8s from a config: the graph, the loop, checkpoints,
evaluation and summaries. `train(config)` runs what `python train.py` runs."""

import dataclasses
import io
import os
import re
import signal
import sys
import threading
import time
import uuid

import numpy as np
import tensorflow as tf

from fcn_graph.cluster import distributed
from fcn_graph.core.constants import IGNORE_LABEL
from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import link_problem, write_json_atomic
from fcn_graph.core.metrics import format_metrics, format_value, metrics_record
from fcn_graph.core.progress import Progress
from fcn_graph.data import datasets, image_files
from fcn_graph.engines.tta import TtaSegmenter, parse_tta
from fcn_graph.host import cpuinfo
from fcn_graph.host.session import onednn_enabled, session_config
from fcn_graph.network import tf_layers
from fcn_graph.network.spec import ModelSpec, ordered_widths, scaled_vgg_widths
from fcn_graph.training import runlock
from fcn_graph.training.collapse import CollapseWatch, shares, warning_line
from fcn_graph.training.config import MEDIAN_FREQUENCY, save_resolved_config
from fcn_graph.training.curves import CURVES_NAME, append_history, plot_curves, read_history
from fcn_graph.training.evaluator import BranchSegmenter, Evaluator, build_model
from fcn_graph.training.imbalance import (
    focal_loss,
    hardest_pixels,
    recorded_weights,
    resolve_class_weights,
)
from fcn_graph.weights import checkpoint

tf1 = tf.compat.v1

CHECKPOINT_BASENAME = "model.ckpt"
METRICS_NAME = "val_metrics.json"


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite."""


class TrainingCollapsed(UserError):
    """A collapse warning with train.stop_on_collapse (`collapse`)."""


# --------------------------------------------------------------------------- graph pieces


def segmentation_loss(logits, labels, **options):
    """Mean softmax cross-entropy over the pixels not labelled IGNORE_LABEL.

    logits float32 [N, H, W, K], labels int32 [N, H, W] -> scalar; 0 when every
    pixel is ignored. `options` (those of `segmentation_loss_sum`) make it the
    weighted mean sum(w * l) / sum(w) of another per-pixel loss l.
    """
    total, weight = segmentation_loss_sum(logits, labels, **options)
    if options.get("class_weights") is None:
        return total / tf.maximum(weight, 1.0)
    return tf.math.divide_no_nan(total, weight)


def segmentation_loss_sum(logits, labels, *, class_weights=None, loss="cross_entropy",
                          focal_gamma=2.0, hard_pixels=1.0):
    """(sum of w * l, sum of w) over the pixels not labelled IGNORE_LABEL, as
    float32: the two parts of `segmentation_loss`, which add up across devices
    and tasks. l: the softmax cross-entropy, or with `loss` "focal" the focal
    loss of `focal_gamma` (`imbalance.focal_loss`); w: 1, times the weight of
    the pixel's class in `class_weights` (a list of K numbers), times, with
    `hard_pixels` < 1, the mask of that fraction of the valid pixels with the
    largest l (`imbalance.hardest_pixels`)."""
    valid = tf.not_equal(labels, IGNORE_LABEL)                        # [N, H, W]
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weights = tf.cast(valid, tf.float32)
    if loss == "focal":
        xent = focal_loss(xent, focal_gamma)
    if hard_pixels < 1.0:
        weights = weights * hardest_pixels(xent, valid, hard_pixels)
    if class_weights is not None:
        weights = weights * tf.gather(tf.constant(class_weights, tf.float32), safe)
    return tf.reduce_sum(xent * weights), tf.reduce_sum(weights)


def loss_scale(weight, class_weights=None):
    """1 / the denominator of `segmentation_loss` from the sum of the pixel
    weights `weight`: without `class_weights` a count of pixels, taken as at
    least 1; with them a sum that may be below 1, and 0 when it is 0."""
    if class_weights is None:
        return 1.0 / tf.maximum(weight, 1.0)
    return tf.math.divide_no_nan(1.0, weight)


def loss_options(t):
    """The keyword arguments of `segmentation_loss` for a TrainConfig whose
    class_weights are resolved (`imbalance.resolve_class_weights`)."""
    return {"class_weights": t.class_weights, "loss": t.loss, "focal_gamma": t.focal_gamma,
            "hard_pixels": t.hard_pixels}


def kernel_l2(variables):
    """Sum of tf.nn.l2_loss (half the squared norm) over the convolution kernels."""
    kernels = [v for name, v in variables.items()
               if name.endswith("_w") or name.split("/")[-1].startswith("W")]
    return tf.add_n([tf.nn.l2_loss(k) for k in kernels])


def learning_rate(base, global_step, *, schedule="constant", max_steps=1, power=0.9,
                  warmup_steps=0):
    """constant: base; poly: base * (1 - step / max_steps) ** power; with
    warmup_steps, times min(1, (step + 1) / warmup_steps): a linear rise over
    the first warmup_steps steps."""
    if schedule == "constant":
        rate = tf.constant(base, tf.float32)
    else:
        rate = tf1.train.polynomial_decay(base, global_step, max_steps, end_learning_rate=0.0,
                                          power=power)
    if warmup_steps > 0:
        done = tf.cast(global_step + 1, tf.float32) / float(warmup_steps)
        rate = rate * tf.minimum(1.0, done)
    return rate


def make_optimizer(name, rate, *, momentum=0.9):
    if name == "adam":
        return tf1.train.AdamOptimizer(rate)
    return tf1.train.MomentumOptimizer(rate, momentum)


def panel_summary(tag, panels):
    """A TensorBoard image summary of [image | prediction | ground truth] rows."""
    from PIL import Image

    values = []
    for name, image, label, prediction in panels:
        row = np.concatenate([image, image_files.colorize(prediction.astype(np.int64)),
                              image_files.colorize(label.astype(np.int64))], axis=1)
        buffer = io.BytesIO()
        Image.fromarray(row).save(buffer, format="PNG")
        values.append(tf1.Summary.Value(tag=f"{tag}/{name}", image=tf1.Summary.Image(
            height=row.shape[0], width=row.shape[1], colorspace=3,
            encoded_image_string=buffer.getvalue())))
    return tf1.Summary(value=values)


def scalar_summary(values):
    return tf1.Summary(value=[tf1.Summary.Value(tag=k, simple_value=float(v))
                              for k, v in values.items() if v is not None])


# --------------------------------------------------------------------------- the run


def _model_spec(config, num_classes):
    """(ModelSpec, VggWeights or None) for the config."""
    m = config.model
    if m.vgg_mat:
        from fcn_graph.weights.matconvnet import load_vgg_mat

        vgg = load_vgg_mat(m.vgg_mat, require_fc=m.architecture == "paper",
                           backbone=m.backbone, flag="model.backbone")
        widths, mean = vgg.widths, vgg.mean_pixel
        if m.architecture == "paper" and vgg.fc["fc6"][0].shape[3] != m.fc_width:
            raise UserError(f"model.fc_width: the paper architecture takes conv6/conv7 from "
                            f"{m.vgg_mat}'s fc6/fc7, which have width "
                            f"{vgg.fc['fc6'][0].shape[3]}; found {m.fc_width}")
    else:
        print("warning: model.vgg_mat is null: the VGG body starts from random weights "
              f"(He-normal, width x{m.vgg_width:g})", file=sys.stderr)
        vgg, widths, mean = None, scaled_vgg_widths(m.vgg_width, m.backbone), None
    spec = ModelSpec(num_classes=num_classes, fc_width=m.fc_width,
                     vgg_widths=ordered_widths(widths, m.backbone),
                     mean_pixel=mean, architecture=m.architecture, skips=m.skips,
                     train_upsampling=m.train_upsampling, backbone=m.backbone)
    # The sidecars record the mean: the .mat's, else the VGG mean.
    return dataclasses.replace(spec, mean_pixel=spec.resolved_mean()), vgg


def _resume_point(log_dir, spec):
    """(newest checkpoint that fully reads, its global step, the newer
    checkpoints of this run's name that do not read), or (None, 0, []) when
    `log_dir` holds no checkpoint file at all. The newer checkpoints that do
    not read are named on stderr; when none reads, a UserError (never a fresh
    start over existing checkpoints). Nothing is written."""
    if not os.path.isdir(log_dir):
        return None, 0, []
    found = checkpoint.newest_complete(log_dir)
    if found is None:
        return None, 0, []
    broken = [r for r in checkpoint.list_checkpoints(log_dir)
              if r.step is not None and r.step > (found.step or 0)
              and os.path.basename(r.prefix) == f"{CHECKPOINT_BASENAME}-{r.step}"]
    for record in broken:
        record.problem = checkpoint.checkpoint_problem(record.prefix, full=True)
    prefix = found.prefix
    spec_found = checkpoint.model_spec_from_checkpoint(prefix)
    for field in ("num_classes", "fc_width", "backbone", "vgg_widths", "architecture", "skips"):
        if getattr(spec_found, field) != getattr(spec, field):
            raise UserError(
                f"{prefix}: train.log_dir holds a checkpoint of another model ({field} "
                f"{getattr(spec_found, field)}, the config asks {getattr(spec, field)}); set "
                f"train.log_dir to a new directory or delete {log_dir}")
    shapes = checkpoint.read_variable_shapes(prefix)
    if "global_step" not in shapes:
        raise UserError(f"{prefix}: no global_step in this checkpoint, so it cannot be "
                        f"resumed; set train.log_dir to a new directory")
    step = int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))
    return prefix, step, broken


def _start_log_dir(config, broken):
    """What a run writes in train.log_dir once its start is accepted (the
    config read, the resumed checkpoint matched): the temporary files of an
    interrupted save removed, the newer checkpoints that do not read moved
    aside (`checkpoint.move_aside`; the steps training passes again), and the
    resolved config.json."""
    t = config.train
    removed = checkpoint.clean_temp_files(t.log_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) of an interrupted save from "
              f"{t.log_dir}: {', '.join(removed[:5])}"
              + (" ..." if len(removed) > 5 else ""), file=sys.stderr)
    for record in broken:
        where = _write_or_fail(checkpoint.move_aside, record.prefix, record.problem)
        print(f"moved checkpoint {os.path.basename(record.prefix)} aside to {where}/ "
              f"({record.problem}); training passes step {record.step} again", file=sys.stderr)
    _write_or_fail(save_resolved_config, config, t.log_dir)


def _prepare_log_dir(log_dir):
    """Create `log_dir` (UserError naming it when that fails)."""
    problem = link_problem(log_dir)
    if problem is not None:
        raise UserError(f"train.log_dir: {log_dir} {problem}; expected a directory (or a path "
                        "to create one at)")
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise UserError(f"train.log_dir: {log_dir} is a file, expected a directory")
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"train.log_dir: cannot create {log_dir}: {err.strerror}") from None


def train(config, *, exiting=False, environ=None):
    """Run the training a config describes; returns the final validation metrics.

    With TF_CONFIG in `environ` (default os.environ) naming several tasks, this
    task trains in step with the others (`distributed`); only the chief
    writes in train.log_dir and holds its lock.

    Holds the lock on train.log_dir for the whole run (a second run on the same
    directory is refused). `exiting`: the caller ends the process when this
    returns or raises (the command line), so once a signal has stopped the run,
    further signals stay ignored to the end instead of killing it halfway
    through its exit."""
    cluster = distributed.from_environment(environ)
    if cluster is not None and cluster.size == 1:
        print(f"{distributed.ENV} names one task: training on this machine alone",
              file=sys.stderr)
        cluster = None
    check_precision(config.train, cluster)
    started = time.monotonic()
    if cluster is not None and not cluster.is_chief:
        return _train(config, exiting, started, cluster)  # writes nothing in train.log_dir
    _prepare_log_dir(config.train.log_dir)
    with runlock.locked_log_dir(config.train.log_dir):
        return _train(config, exiting, started, cluster)


def _minutes_seconds(seconds):
    """161.4 -> "2 min 41 s"."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def check_precision(t, cluster=None):
    """A UserError naming train.precision when this machine cannot train in it:
    bfloat16 is grappler's oneDNN auto mixed precision, so it needs oneDNN on
    and a CPU with bfloat16 units, and the ops on that CPU, in a local session
    (`cluster`: the TF_CONFIG tasks, None without)."""
    if t.precision != "bfloat16":
        return
    gpus = tf.config.list_physical_devices("GPU")
    on_gpu = [name for name in t.devices or [] if ":GPU:" in name]
    if on_gpu or (gpus and not t.devices):
        raise UserError(f"train.precision: bfloat16 runs on the CPU through oneDNN, but "
                        f"training would run on {on_gpu[0] if on_gpu else 'GPU:0'}; set "
                        f"train.precision to float32, or train.devices to [\"CPU:0\"]")
    cpuinfo.check_precision("bfloat16", setting="train.precision:",
                            instead="set train.precision to float32")
    if not onednn_enabled():
        raise UserError("train.precision: bfloat16 needs TensorFlow's oneDNN kernels, which "
                        "are off; set TF_ENABLE_ONEDNN_OPTS=1 in the environment (or "
                        "train.precision to float32)")
    if cluster is not None:
        # the distributed session (tf.distribute.Server) fails on the bfloat16
        # fused convolutions that the local session runs
        raise UserError(f"train.precision: bfloat16 does not run across the {cluster.size} "
                        f"tasks of {distributed.ENV} (TensorFlow's distributed session has no "
                        f"bfloat16 fused convolution); set train.precision to float32, or "
                        f"train on this machine alone (train.devices runs several devices "
                        f"of one machine in bfloat16)")


def resolve_devices(configured):
    """train.devices checked against this machine: the device names, or None
    for the default placement (one device: a GPU when one is visible)."""
    gpus = len(tf.config.list_physical_devices("GPU"))
    if configured is None:
        return [f"/device:GPU:{i}" for i in range(gpus)] if gpus > 1 else None
    for name in configured:
        kind, index = name.split(":")[-2:]
        if kind == "GPU" and int(index) >= gpus:
            raise UserError(f"train.devices: {name} not found; this machine has {gpus} "
                            f"visible GPU(s)" + (f" (GPU:0 to GPU:{gpus - 1})" if gpus else ""))
    return list(configured)


def _train(config, exiting, started, cluster=None):
    t = config.train
    chief = cluster is None or cluster.is_chief
    devices = resolve_devices(t.devices)
    if devices and t.batch_size % len(devices):
        raise UserError(f"train.batch_size: expected a multiple of the {len(devices)} devices "
                        f"of train.devices (each trains on an equal part of the batch), found "
                        f"{t.batch_size}")
    train_files, val_files, num_classes = datasets.splits_from_config(config)
    class_names = datasets.class_names_for(train_files, num_classes)
    all_train_files = train_files
    pass_images = len(train_files)
    if cluster is not None:
        pass_images = -(-len(train_files) // cluster.size)
        train_files = distributed.shard(train_files, cluster)
    spec, vgg = _model_spec(config, num_classes)
    resume_prefix, start_step, server, broken = None, 0, None, []
    if chief:
        resume_prefix, start_step, broken = _resume_point(t.log_dir, spec)
    config = _with_class_weights(config, all_train_files, class_names, resume_prefix)
    t = config.train
    if cluster is not None:
        base = _session_config(t, devices)
        server = distributed.start_server(cluster, base)
        print(f"{cluster.name(cluster.rank)}: waiting for the other tasks of "
              f"{distributed.ENV}", file=sys.stderr)
        start_step = distributed.agree(cluster, server, base, step=start_step,
                                       config_print=distributed.fingerprint(config),
                                       timeout=t.step_timeout)
    graph = build_training_graph(config, spec, train_files, val_files, start_step=start_step,
                                 cluster=cluster, devices=devices)
    run = TrainingRun(config, graph, spec, saved=resume_prefix,
                      saved_step=start_step if resume_prefix else -1, exiting=exiting,
                      cluster=cluster, server=server, devices=devices, pass_images=pass_images,
                      class_names=class_names, broken=broken)
    metrics, step = run.run(start_step, resume_prefix=resume_prefix, vgg=None if resume_prefix
                            or not chief else vgg, train_files=train_files, val_files=val_files)
    if not chief:
        print(f"step {step}: {cluster.name(cluster.rank)} done; the chief writes the "
              f"checkpoint and the validation metrics", file=sys.stderr)
        return metrics

    print(format_metrics(metrics, class_names))
    run.write(write_json_atomic, os.path.join(t.log_dir, METRICS_NAME),
              metrics_record(metrics, class_names, checkpoint=run.saved,
                             split=val_files.split, global_step=int(step)))
    print(f"step {step}: validation mean IU {format_value(metrics['mean_iou'])} "
          f"({metrics['num_images']} images); checkpoint {run.saved}; this run took "
          f"{_minutes_seconds(time.monotonic() - started)}")
    return metrics


def _with_class_weights(config, train_files, class_names, resume_prefix):
    """`config` with train.class_weights resolved to the list the loss uses
    (`imbalance.resolve_class_weights`): on a resume, median frequency
    weights are those the checkpoint's sidecar records."""
    t = config.train
    recorded = None
    if t.class_weights == MEDIAN_FREQUENCY and resume_prefix:
        recorded = recorded_weights(resume_prefix, len(class_names))
    weights = resolve_class_weights(t.class_weights, train_files, len(class_names),
                                    class_names=class_names, recorded=recorded)
    return dataclasses.replace(config, train=dataclasses.replace(t, class_weights=weights))


@dataclasses.dataclass
class TrainingGraph:
    """The finalised graph of a training run and what the loop runs in it."""

    graph: tf.Graph
    global_step: tf.Variable
    train_op: tf.Operation
    loss: tf.Tensor                  # scalar: the (weighted) mean loss of the batch
    valid_pixels: tf.Tensor          # scalar: pixels of the batch not IGNORE_LABEL
    summaries: tf.Tensor             # the merged training summaries
    all_finite: tf.Tensor            # scalar bool: every model variable is finite
    evaluator: Evaluator             # the validation branch
    saver: tf1.train.Saver           # every variable (model, optimizer, global step)
    init: tf.Operation
    variables: dict                  # the model variables by checkpoint name
    # Several tasks or devices: the stop request of this task (a float32
    # placeholder, 1 = stop), their sum over the tasks after the step, and
    # the op that copies every variable from rank 0 to the other tasks.
    stop_request: tf.Tensor = None
    stop_requests: tf.Tensor = None
    sync: tf.Operation = None


def _batches(t, spec, train_files, seed):
    """(images, labels) of the augmented training batches, seeded with `seed`."""
    data = datasets.train_dataset(
        train_files, num_classes=spec.num_classes, batch_size=t.batch_size,
        image_size=t.image_size, scale_range=tuple(t.scale_range), flip=t.flip,
        seed=seed, mean_pixel=spec.mean_pixel)
    return tf1.data.make_one_shot_iterator(data).get_next()


def _rate_and_optimizer(t, global_step):
    """The learning rate tensor of train.lr_schedule and the optimizer of train.optimizer."""
    rate = learning_rate(t.learning_rate, global_step, schedule=t.lr_schedule,
                         max_steps=t.max_steps, power=t.lr_power, warmup_steps=t.warmup_steps)
    return rate, make_optimizer(t.optimizer, rate, momentum=t.momentum)


def _watch_and_validate(config, spec, val_files, variables, loss, rate):
    """What every training graph adds after its step: the all-finite check of
    the model variables, the loss and rate summaries, and the validation
    branch; returns (all_finite, summaries, evaluator)."""
    t = config.train
    all_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables.values()])
    tf1.summary.scalar("train/loss", loss)
    tf1.summary.scalar("train/learning_rate", rate)
    summaries = tf1.summary.merge_all()
    evaluator = Evaluator(val_files, spec, num_classes=spec.num_classes,
                          max_images=t.eval_max_images, kernels=config.model.kernels)
    return all_finite, summaries, evaluator


def build_training_graph(config, spec, train_files, val_files, *, start_step=0, cluster=None,
                         devices=None):
    """The training graph of `config` for the model `spec`: the augmented
    train_files batches, the model, loss, optimizer and summaries, and the
    validation branch on val_files. The data seed is train.seed + start_step,
    so a resumed run does not replay the batches it has seen.

    `cluster` (a distributed.Cluster) and `devices` (device names, each
    taking an equal part of the batch): data-parallel training whose step
    equals one step on all the tasks' and devices' images together
    (`_parallel_step`)."""
    if cluster is not None or devices:
        return _build_parallel_graph(config, spec, train_files, val_files,
                                     start_step=start_step, cluster=cluster,
                                     devices=devices or [None])
    t = config.train
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(t.seed)
        global_step = tf1.train.get_or_create_global_step()
        images, labels = _batches(t, spec, train_files, t.seed + start_step)
        logits, _, _ = build_model(images, spec, keep_prob=t.keep_prob,
                                   kernels=config.model.kernels)  # [B, S, S, K]
        variables = tf_layers.model_variables(graph)
        loss = segmentation_loss(logits, labels, **loss_options(t))
        valid_pixels = tf.math.count_nonzero(tf.not_equal(labels, IGNORE_LABEL))
        total_loss = loss
        if t.weight_decay > 0:
            total_loss = loss + t.weight_decay * kernel_l2(variables)
        rate, optimizer = _rate_and_optimizer(t, global_step)
        train_op = optimizer.minimize(total_loss, global_step=global_step)
        all_finite, summaries, evaluator = _watch_and_validate(config, spec, val_files,
                                                               variables, loss, rate)
        saver = tf1.train.Saver(max_to_keep=None, save_relative_paths=True)
        init = tf1.global_variables_initializer()
        graph.finalize()
    return TrainingGraph(graph=graph, global_step=global_step, train_op=train_op, loss=loss,
                         valid_pixels=valid_pixels, summaries=summaries, all_finite=all_finite,
                         evaluator=evaluator, saver=saver, init=init, variables=variables)


def _build_parallel_graph(config, spec, train_files, val_files, *, start_step, cluster,
                          devices):
    """`build_training_graph` over several devices (`devices`) and tasks
    (`cluster`, or None for this machine alone).

    Each device computes the gradients of the SUM of its pixels' weighted
    losses and sums their weights (`segmentation_loss_sum`); the sums are
    added over the devices, then over the tasks (collective all-reduces of
    the gradients in buckets as the backward pass produces them,
    `distributed.all_reduce_gradients`, and one of the totals), and divided
    by the total weight: the gradient of the weighted mean loss over every
    valid pixel of the step, whatever share of them each device or task holds. With train.hard_pixels < 1 each
    device keeps the hardest fraction of its own valid pixels, so the pixels
    kept depend on how the batch is split. The weight decay is added once,
    as in single-device training. Variables, optimizer and global step are
    the single-device ones, so checkpoints move between the two freely. Each task seeds its data and
    dropout with its rank; rank 0's variables reach the others through
    `sync`."""
    t = config.train
    rank = cluster.rank if cluster is not None else 0
    graph = tf.Graph()
    with graph.as_default(), tf.device(cluster.device if cluster is not None else None):
        tf1.set_random_seed(t.seed + rank)
        global_step = tf1.train.get_or_create_global_step()
        images, labels = _batches(t, spec, train_files, t.seed + start_step + (rank << 32))
        parts = zip(tf.split(images, len(devices)), tf.split(labels, len(devices)))
        sums = []
        for device, (tower_images, tower_labels) in zip(devices, parts):
            with tf.device(device):  # [B / devices, S, S, 3] each
                logits, _, _ = build_model(tower_images, spec, keep_prob=t.keep_prob,
                                           kernels=config.model.kernels)
                valid_count = tf.reduce_sum(
                    tf.cast(tf.not_equal(tower_labels, IGNORE_LABEL), tf.float32))
                sums.append(segmentation_loss_sum(logits, tower_labels, **loss_options(t))
                            + (valid_count,))
        variables = tf_layers.model_variables(graph)
        trainable = tf1.trainable_variables()
        tower_grads = [tf1.gradients(xent, trainable, colocate_gradients_with_ops=True)
                       for xent, *_ in sums]
        trained = [i for i, grad in enumerate(tower_grads[0]) if grad is not None]
        grads = [tf.add_n([grads[i] for grads in tower_grads]) for i in trained]
        stop_request = tf1.placeholder_with_default(0.0, [], name="stop_request")
        totals = tf.stack([tf.add_n([xent for xent, _, _ in sums]),
                           tf.add_n([weight for _, weight, _ in sums]), stop_request,
                           tf.add_n([count for _, _, count in sums])])
        if cluster is not None:
            collectives = distributed.Collectives(cluster,
                                                  first_key=distributed.GRAPH_INSTANCE_KEYS)
            totals = collectives.all_reduce(totals)
            grads = distributed.all_reduce_gradients(collectives, grads,
                                                     bucket_bytes=t.allreduce_bucket_bytes,
                                                     dtype=t.allreduce_dtype)
        xent_sum, weight_sum, stop_requests, valid = tf.unstack(totals)
        scale = loss_scale(weight_sum, t.class_weights)
        loss = xent_sum * scale
        final = {i: grad * scale for i, grad in zip(trained, grads)}
        if t.weight_decay > 0:  # on the kernels the loss does not reach too
            decay = tf.gradients(t.weight_decay * kernel_l2(variables), trainable)
            for i, grad in enumerate(decay):
                if grad is not None:
                    final[i] = final[i] + grad if i in final else grad
        rate, optimizer = _rate_and_optimizer(t, global_step)
        train_op = optimizer.apply_gradients(
            [(final[i], trainable[i]) for i in sorted(final)], global_step=global_step)
        all_finite, summaries, evaluator = _watch_and_validate(config, spec, val_files,
                                                               variables, loss, rate)
        sync = None
        if cluster is not None:  # instance keys after the exchange's
            sync = tf.group([collectives.broadcast(v) for v in tf1.global_variables()])
        saver = tf1.train.Saver(max_to_keep=None, save_relative_paths=True)
        init = tf1.global_variables_initializer()
        graph.finalize()
    return TrainingGraph(graph=graph, global_step=global_step, train_op=train_op, loss=loss,
                         valid_pixels=valid, summaries=summaries, all_finite=all_finite,
                         evaluator=evaluator, saver=saver, init=init, variables=variables,
                         stop_request=stop_request, stop_requests=stop_requests, sync=sync)


def _session_config(t, devices):
    """The session settings of train.threads, with enough CPU devices for
    train.devices (CPU:1 and up are extra logical devices)."""
    config = session_config(t.threads, precision=t.precision)
    cpus = [int(name.split(":")[-1]) for name in devices or [] if ":CPU:" in name]
    if cpus and max(cpus) > 0:
        config.device_count["CPU"] = max(cpus) + 1
    return config


class TrainingRun:
    """One session over a `TrainingGraph`: the loop (`run`) and its periodic
    actions, `log`, `save` and `evaluate`.

    `saved`, `saved_step`: the newest checkpoint the run can fall back on (the
    one it resumed from, then each one it writes), named by every error.
    `exiting`: as for `train`.
    `cluster`, `server`: the TF_CONFIG task and its server, when training on
    several tasks. Then every task runs every step, evaluation and stop in
    step with the others; only rank 0 (the chief) writes; each step waits at
    most train.step_timeout seconds for the other tasks.
    `class_names`: the names of the classes, in collapse warnings and summaries.
    """

    def __init__(self, config, graph, spec, *, saved=None, saved_step=-1, exiting=False,
                 cluster=None, server=None, devices=None, pass_images=None, class_names=(),
                 broken=()):
        self.config, self.graph, self.spec = config, graph, spec
        self.broken = list(broken)
        self.saved, self.saved_step = saved, saved_step
        self.cluster, self.server, self.devices = cluster, server, devices
        self.pass_images = pass_images
        self.chief = cluster is None or cluster.is_chief
        self.stop = StopSignals(keep_after_stop=exiting)
        self.sess = self.writer = self.progress = None
        self.step_options = None
        self.class_names = tuple(class_names)
        t = config.train
        self.watch = None
        if t.warn_on_collapse or t.stop_on_collapse:
            self.watch = CollapseWatch(patience_steps=t.patience_steps, class_names=class_names)
        if cluster is not None:
            self.step_options = tf1.RunOptions(
                timeout_in_ms=max(1, int(config.train.step_timeout * 1000)))

    def last_good(self):
        """The sentence naming the last good checkpoint, for error messages."""
        if self.saved:
            return f"The last good checkpoint is {self.saved} (step {self.saved_step})."
        return "No checkpoint was written."

    def write(self, write, *args):
        """`write(*args)`, its failures one-line UserErrors naming the last good checkpoint."""
        return _write_or_fail(write, *args, last_good=self.last_good)

    def run(self, start_step, *, resume_prefix, vgg, train_files, val_files):
        """Start (restore `resume_prefix`, or put the `vgg` weights in), train
        to train.max_steps, save and evaluate; returns (metrics, final step).
        A stop request saves a checkpoint and re-raises KeyboardInterrupt."""
        t, g = self.config.train, self.graph
        with g.graph.as_default():  # Saver and FileWriter need the graph context
            config = _session_config(t, self.devices)
            if self.cluster is not None:
                self.sess = tf1.Session(self.server.target, graph=g.graph,
                                        config=distributed.session_config(self.cluster, config))
            else:
                self.sess = tf1.Session(graph=g.graph, config=config)
            self.progress = Progress(t.max_steps, label="step", unit="step", start=start_step)
            self.stop.install()
            completed = False
            try:
                self.sess.run(g.init)
                if resume_prefix:
                    checkpoint.check_variables(resume_prefix, {
                        v.op.name: v for v in g.graph.get_collection("variables")})
                    g.saver.restore(self.sess, resume_prefix)
                    print(f"resuming from {resume_prefix} at step {start_step}", file=sys.stderr)
                elif vgg is not None:
                    checkpoint.assign_vgg(self.sess, vgg, g.variables, self.spec.architecture)
                if self.chief:  # the start is accepted: only now write in train.log_dir
                    _start_log_dir(self.config, self.broken)
                    self.writer = _SummaryWriter(t.log_dir, self.last_good)
                if g.sync is not None:
                    self.step_run(g.sync, when="the copy of the chief's variables")
                    start_step = int(self.sess.run(g.global_step))
                    self.progress.start_count = start_step
                print(f"training on {len(train_files)} {train_files.kind} images "
                      f"({self.spec.num_classes} classes), validating on {len(val_files)}; "
                      f"{self.batch_line()}; "
                      + (f"logs in {t.log_dir}" if self.chief else "the chief writes the logs"),
                      file=sys.stderr)
                step = self.loop(start_step, train_files)
                self.progress.close()
                self.stop.check()
                if self.saved_step != step:
                    self.save(step)
                metrics = self.evaluate(step)
                completed = True
            except KeyboardInterrupt:
                self.stop.received.append(signal.SIGINT)  # a Ctrl-C raised another way
                self.progress.close()
                step = int(self.sess.run(g.global_step))
                if step > self.saved_step:
                    self.save(step)
                where = (f"checkpoint {self.saved}" if self.saved
                         else "no checkpoint was written" if self.chief
                         else "the chief saves the checkpoint")
                print(f"interrupted at step {step}; {where}. Run the same command again to "
                      f"resume.", file=sys.stderr)
                raise
            except OSError as err:
                raise UserError(_os_error_message(err, t.log_dir, self.last_good())) from None
            finally:
                self.progress.close()
                try:
                    if self.writer is not None:
                        self.writer.close()
                except UserError:
                    if completed:  # otherwise the error on its way out says more
                        raise
                finally:
                    self.sess.close()
                    self.stop.uninstall()
        return metrics, step

    def tasks(self):
        return self.cluster.size if self.cluster is not None else 1

    def batch_line(self):
        t = self.config.train
        line = f"global batch {t.batch_size * self.tasks()}"
        if self.cluster is not None:
            line += f" ({self.tasks()} tasks x {t.batch_size})"
        if self.devices:
            line += (f", {t.batch_size // len(self.devices)} per device on "
                     f"{', '.join(d for d in self.devices if d) or 'the default device'}")
        if t.precision != "float32":
            line += f", {t.precision} (weights float32)"
        return line

    def step_run(self, fetches, feed_dict=None, *, when):
        """sess.run of a training step: with several tasks, under the
        train.step_timeout deadline, a lost or slow task a one-line UserError
        naming it; else a failure is a data error."""
        try:
            return self.sess.run(fetches, feed_dict=feed_dict, options=self.step_options)
        except tf.errors.OpError as err:
            if self.cluster is not None and distributed.is_peer_error(err):
                raise UserError(distributed.peer_failure(
                    self.cluster, err, self.config.train.step_timeout, when)) from None
            raise UserError(datasets.data_error_message(err)) from None

    def loop(self, step, train_files):
        """Train from `step` to train.max_steps, logging, saving and evaluating
        on their schedules; returns the last step. With several tasks, a stop
        request of any task stops them all after the same step."""
        t, g = self.config.train, self.graph
        tasks = self.tasks()
        # A pass: the largest shard once (the same count on every task).
        steps_per_pass = -(-(self.pass_images or len(train_files)) // t.batch_size)
        seen_valid, since_check = 0, 0
        last_time, last_step = time.perf_counter(), step
        while step < t.max_steps:
            if self.cluster is None:
                self.stop.check()
            log_now = (step + 1) % t.log_every == 0 or step + 1 == t.max_steps
            fetches = {"train": g.train_op, "loss": g.loss, "valid": g.valid_pixels}
            feed = None
            if g.stop_request is not None:
                fetches["stop"] = g.stop_requests
                feed = {g.stop_request: 1.0 if self.stop.received else 0.0}
            if log_now:
                fetches["summary"] = g.summaries
            out = self.step_run(fetches, feed, when=f"step {step + 1}")
            step += 1
            if out.get("stop", 0) > 0:
                self.stop.received.append(signal.SIGTERM)
                raise KeyboardInterrupt
            seen_valid, since_check = seen_valid + int(out["valid"]), since_check + 1
            if since_check == steps_per_pass:
                if seen_valid == 0:
                    raise UserError(_no_labels_message(self.config, train_files, steps_per_pass,
                                                       self.last_good()))
                seen_valid, since_check = 0, 0
            if not np.isfinite(out["loss"]):
                raise TrainingDiverged(
                    f"step {step}: the loss is {out['loss']}; stopping without saving this "
                    f"state. {self.last_good()} Try a lower train.learning_rate.")
            if log_now:
                now = time.perf_counter()
                speed = (step - last_step) * t.batch_size * tasks / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                self.log(step, out, speed)
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                self.save(step)
            if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                self.evaluate(step)
        return step

    def log(self, step, out, speed):
        """The training summaries, a history record and the progress line of `step`."""
        if self.chief:
            self.writer.add_summary(out["summary"], step)
            record = {"step": step, "loss": float(out["loss"])}
            self.write(append_history, self.config.train.log_dir, record)
        self.progress.update(step, loss=f"{out['loss']:.4f}", **{"img/s": f"{speed:.1f}"})
        if self.watch is not None:
            self.report(self.watch.loss(step, float(out["loss"])))

    def report(self, finding):
        """A collapse `finding` (or None): its warning line (the chief prints
        it), or with train.stop_on_collapse a checkpoint and a
        TrainingCollapsed error. Every task reaches the same findings, from
        the same all-reduced losses and the same validations."""
        if finding is None:
            return
        t = self.config.train
        line = warning_line(finding, learning_rate=t.learning_rate,
                            vgg_mat=self.config.model.vgg_mat, class_weights=t.class_weights)
        if self.chief and t.warn_on_collapse:
            self.progress.write(line, file=sys.stderr)
        if not t.stop_on_collapse:
            return
        if finding.step > self.saved_step:
            self.save(finding.step)
        raise TrainingCollapsed(f"step {finding.step}: stopped (train.stop_on_collapse is "
                                f"true): {finding.text}. {self.last_good()}")

    def save(self, step):
        """A checkpoint of `step` (`checkpoint.save_checkpoint`), then the curves.
        Signals only set a flag (StopSignals), so none cuts a save short.
        Only the chief saves."""
        t = self.config.train
        if not self.chief:
            return None
        if not self.sess.run(self.graph.all_finite):
            raise TrainingDiverged(f"step {step}: the weights are no longer finite; not saving. "
                                   f"{self.last_good()}")

        def saved(prefix):
            self.saved, self.saved_step = prefix, step

        try:
            prefix = checkpoint.save_checkpoint(
                self.sess, self.graph.saver, t.log_dir, self.spec, step=int(step),
                keep=t.keep_checkpoints, basename=CHECKPOINT_BASENAME, on_saved=saved,
                **({} if t.class_weights is None else {"class_weights": t.class_weights}))
        except OSError as err:
            raise UserError(_os_error_message(err, t.log_dir, self.last_good())) from None
        except UserError as err:
            raise UserError(f"{err}. {self.last_good()}") from None
        self.write(_plot, t.log_dir)
        return prefix

    def evaluate(self, step):
        """Validation metrics of `step`: summaries, a history record, the curves
        and a progress line. A stop request ends it between images."""
        t = self.config.train
        panels = []

        def keep_panel(name, image, label, prediction):
            if self.cluster is None:  # tasks stop together, at the next step
                self.stop.check()
            if len(panels) < t.summary_images:
                panels.append((name, image, label, prediction))

        start = time.perf_counter()
        metrics, count = self.graph.evaluator.run(self.sess, on_image=keep_panel,
                                                  predict=self.tta_predict())
        if not self.chief:  # it evaluates to stay in step with the chief
            self.check_validation(step, metrics)
            return metrics
        predicted = shares(metrics["predicted_pixels"])
        self.writer.add_summary(scalar_summary({
            "val/mean_iou": metrics["mean_iou"], "val/pixel_accuracy": metrics["pixel_accuracy"],
            "val/mean_accuracy": metrics["mean_accuracy"],
            "val/frequency_weighted_iou": metrics["frequency_weighted_iou"],
            **share_tags("val/predicted_share", predicted, self.class_names)}), step)
        if panels:
            self.writer.add_summary(panel_summary("val/image_prediction_truth", panels), step)
        self.writer.flush()
        record = {"step": int(step), **{
            key: _finite_or_none(metrics[key]) for key in (
                "mean_iou", "pixel_accuracy", "mean_accuracy", "frequency_weighted_iou")}}
        record["predicted_shares"] = _rounded(predicted)
        record["label_shares"] = _rounded(shares(metrics["label_pixels"]))
        self.write(append_history, t.log_dir, record)
        self.write(_plot, t.log_dir)
        self.progress.write(
            f"step {step}: validation mean IU {format_value(metrics['mean_iou'])}, pixel "
            f"accuracy {format_value(metrics['pixel_accuracy'])} ({count} images, "
            f"{time.perf_counter() - start:.1f} s)")
        self.check_validation(step, metrics)
        return metrics

    def check_validation(self, step, metrics):
        """The collapse rules on the validation `metrics` of `step` (`report`)."""
        if self.watch is not None:
            self.report(self.watch.validation(
                step, predicted_counts=metrics["predicted_pixels"],
                label_counts=metrics["label_pixels"], mean_iou=metrics["mean_iou"]))

    def tta_predict(self):
        """None, or with train.val_tta the labels of the validation branch
        under test-time augmentation (`tta.TtaSegmenter`), per image."""
        tta = parse_tta(self.config.train.val_tta or "off", flag="train.val_tta")
        if tta is None:
            return None
        augmenter = TtaSegmenter(BranchSegmenter(self.sess, self.graph.evaluator), tta)
        return lambda image: augmenter.run(image)[0]


def _plot(log_dir):
    plot_curves(read_history(log_dir), os.path.join(log_dir, CURVES_NAME))


def share_tags(prefix, values, class_names):
    """{PREFIX/03_name: value} for summaries of one value per class (none when
    `values` is None); the index is zero-padded so that tags sort by class."""
    if values is None:
        return {}
    digits = len(str(len(values) - 1))
    names = [re.sub(r"[^A-Za-z0-9_.-]+", "_", name) for name in class_names]
    return {f"{prefix}/{index:0{digits}d}" + (f"_{names[index]}" if index < len(names) else ""):
            float(value) for index, value in enumerate(values)}


def _rounded(values, digits=6):
    """A list of floats rounded to `digits` decimals, or None."""
    return None if values is None else [round(float(v), digits) for v in values]


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _no_labels_message(config, files, steps, last_good):
    label_dir = os.path.dirname(files.label_paths[0]) if files.label_paths else "?"
    return (f"data.train_split {files.split!r} ({files.kind}, labels in {label_dir}): "
            f"{steps} steps, a whole pass over its {len(files)} images, saw no labelled "
            f"pixel (every label value is {IGNORE_LABEL}, the ignore label, or the crops "
            f"of train.image_size {config.train.image_size} miss them); nothing to train "
            f"on. {last_good}")


def _os_error_message(err, log_dir, last_good=None):
    path = err.filename or log_dir
    last = f" {last_good}" if last_good else ""
    return f"{path}: cannot write: {err.strerror or err}.{last}"


def _write_or_fail(write, *args, last_good=None):
    """Call `write(*args)`; an OSError (a full disk, an unwritable file) becomes a
    one-line UserError naming the file and, with `last_good` (a function
    returning the sentence), the last good checkpoint."""
    try:
        return write(*args)
    except OSError as err:
        raise UserError(_os_error_message(err, "train.log_dir",
                                          last_good() if last_good else None)) from None
    except UserError as err:  # a writer that names the file itself
        last = f" {last_good()}" if last_good else ""
        raise UserError(f"{err}.{last}") from None


class _SummaryWriter:
    """tf1.summary.FileWriter whose write failures (its background thread's,
    reported at a later call) are one-line UserErrors naming the events file
    and `last_good()`."""

    def __init__(self, log_dir, last_good):
        self.log_dir, self.last_good = log_dir, last_good
        # A random suffix: TensorFlow opens the events file by a name that
        # would otherwise be predictable (time and host), so a link planted at
        # that name in a shared log_dir could redirect the writes.
        self.writer = self._call(lambda: tf1.summary.FileWriter(
            log_dir, filename_suffix=f".{uuid.uuid4().hex}"))

    def _call(self, action):
        try:
            return action()
        except (OSError, tf.errors.OpError) as err:
            path = self._events_path() if hasattr(self, "writer") else self.log_dir
            reason = (err.strerror if isinstance(err, OSError)
                      else checkpoint.op_error_reason(err))
            raise UserError(f"{path}: cannot write TensorBoard summaries: {reason}. "
                            f"{self.last_good()}") from None

    def _events_path(self):
        try:
            return self.writer.event_writer._ev_writer.FileName().decode()
        except Exception:  # the path is only for the message
            return os.path.join(self.log_dir, "events.out.tfevents.*")

    def add_summary(self, summary, step):
        self._call(lambda: self.writer.add_summary(summary, step))

    def flush(self):
        self._call(self.writer.flush)

    def close(self):
        self._call(self.writer.close)


class StopSignals:
    """SIGINT and SIGTERM as a request to save and stop.

    The handler only records the signal; the training loop calls `check()`
    between steps (and the evaluation between images), which raises
    KeyboardInterrupt so that the run saves and exits. A handler that raised
    at once could cut a save, a file write or a lock held inside a library
    anywhere; this one cannot, so a second signal during the exit save changes
    nothing. SIGKILL stops at once; the next run cleans what it leaves.
    `keep_after_stop`: after a stop, `uninstall` ignores both signals from
    then on (SIG_IGN), for a process that is about to exit: the interpreter
    puts the default handlers back in place of Python handlers while it shuts
    down, but leaves ignored signals ignored.
    """

    def __init__(self, *, keep_after_stop=False):
        self.keep_after_stop = keep_after_stop
        self.received = []
        self.previous = {}

    def handler(self, signum, frame):
        self.received.append(signum)

    def check(self):
        if self.received:
            raise KeyboardInterrupt

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handler)

    def uninstall(self):
        if self.received and self.keep_after_stop:
            for signum in self.previous:
                signal.signal(signum, signal.SIG_IGN)
            return
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}
