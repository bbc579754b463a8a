"""Training FCN-8s from a config: the graph, the loop, checkpoints,
evaluation and summaries. `train(config)` runs what `python train.py` runs."""

import io
import os
import signal
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from fcn_graph import checkpoint, datasets, image_files, runlock
from fcn_graph import model as fcn_model
from fcn_graph.config import save_resolved_config
from fcn_graph.constants import IGNORE_LABEL, VGG_MEAN_RGB
from fcn_graph.curves import CURVES_NAME, append_history, plot_curves, read_history
from fcn_graph.errors import UserError
from fcn_graph.evaluation import Evaluator, build_model
from fcn_graph.fileio import write_json_atomic
from fcn_graph.metrics import format_metrics, format_value, metrics_record
from fcn_graph.progress import Progress
from fcn_graph.session import session_config

tf1 = tf.compat.v1

CHECKPOINT_BASENAME = "model.ckpt"
METRICS_NAME = "val_metrics.json"


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite."""


# --------------------------------------------------------------------------- graph pieces


def segmentation_loss(logits, labels):
    """Mean softmax cross-entropy over the pixels not labelled IGNORE_LABEL.

    logits float32 [N, H, W, K], labels int32 [N, H, W] -> scalar; 0 when every
    pixel is ignored.
    """
    valid = tf.not_equal(labels, IGNORE_LABEL)                        # [N, H, W]
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weights = tf.cast(valid, tf.float32)
    return tf.reduce_sum(xent * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def kernel_l2(variables):
    """Sum of tf.nn.l2_loss (half the squared norm) over the convolution kernels."""
    kernels = [v for name, v in variables.items()
               if name.endswith("_w") or name.split("/")[-1].startswith("W")]
    return tf.add_n([tf.nn.l2_loss(k) for k in kernels])


def learning_rate(base, global_step, *, schedule="constant", max_steps=1, power=0.9):
    """constant: base; poly: base * (1 - step / max_steps) ** power."""
    if schedule == "constant":
        return tf.constant(base, tf.float32)
    return tf1.train.polynomial_decay(base, global_step, max_steps, end_learning_rate=0.0,
                                      power=power)


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
        from fcn_graph.matconvnet import load_vgg_mat

        vgg = load_vgg_mat(m.vgg_mat, require_fc=m.architecture == "paper")
        widths, mean = vgg.widths, tuple(float(v) for v in vgg.mean_pixel)
        if m.architecture == "paper" and vgg.fc["fc6"][0].shape[3] != m.fc_width:
            raise UserError(f"model.fc_width: the paper architecture takes conv6/conv7 from "
                            f"{m.vgg_mat}'s fc6/fc7, which have width "
                            f"{vgg.fc['fc6'][0].shape[3]}; found {m.fc_width}")
    else:
        print("warning: model.vgg_mat is null: the VGG body starts from random weights "
              f"(He-normal, width x{m.vgg_width:g})", file=sys.stderr)
        vgg, widths, mean = None, fcn_model.scaled_vgg_widths(m.vgg_width), VGG_MEAN_RGB
    spec = fcn_model.ModelSpec(num_classes=num_classes, fc_width=m.fc_width,
                               vgg_widths=tuple(widths[name] for name in fcn_model.VGG19_CONVS),
                               mean_pixel=tuple(mean), architecture=m.architecture,
                               skips=m.skips, train_upsampling=m.train_upsampling)
    return spec, vgg


def _resume_point(log_dir, spec):
    """(newest checkpoint that fully reads, its global step), or (None, 0) when
    `log_dir` holds no checkpoint file at all. Newer checkpoints that do not
    read are named on stderr; when none reads, a UserError (never a fresh
    start over existing checkpoints)."""
    found = checkpoint.newest_complete(log_dir) if os.path.isdir(log_dir) else None
    if found is None:
        return None, 0
    prefix = found.prefix
    spec_found = checkpoint.model_spec_from_checkpoint(prefix)
    for field in ("num_classes", "fc_width", "vgg_widths", "architecture", "skips"):
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
    return prefix, step


def _prepare_log_dir(log_dir):
    """Create `log_dir` (UserError naming it when that fails)."""
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise UserError(f"train.log_dir: {log_dir} is a file, expected a directory")
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as err:
        raise UserError(f"train.log_dir: cannot create {log_dir}: {err.strerror}") from None


def train(config, *, exiting=False):
    """Run the training a config describes; returns the final validation metrics.

    Holds the lock on train.log_dir for the whole run (a second run on the same
    directory is refused). `exiting`: the caller ends the process when this
    returns or raises (the command line), so once a signal has stopped the run,
    further signals stay ignored to the end instead of killing it halfway
    through its exit."""
    _prepare_log_dir(config.train.log_dir)
    with runlock.locked_log_dir(config.train.log_dir):
        return _train(config, exiting)


def _train(config, exiting):
    t = config.train
    train_files, val_files, num_classes = datasets.splits_from_config(config)
    class_names = datasets.class_names_for(train_files, num_classes)
    spec, vgg = _model_spec(config, num_classes)
    removed = checkpoint.clean_temp_files(t.log_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) of an interrupted save from "
              f"{t.log_dir}: {', '.join(removed[:5])}" + (" ..." if len(removed) > 5 else ""),
              file=sys.stderr)
    resume_prefix, start_step = _resume_point(t.log_dir, spec)
    _write_or_fail(save_resolved_config, config, t.log_dir)
    base = os.path.join(t.log_dir, CHECKPOINT_BASENAME)

    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(t.seed)
        global_step = tf1.train.get_or_create_global_step()
        data = datasets.train_dataset(
            train_files, num_classes=num_classes, batch_size=t.batch_size,
            image_size=t.image_size, scale_range=tuple(t.scale_range), flip=t.flip,
            seed=t.seed + start_step, mean_pixel=spec.mean_pixel)
        images, labels = tf1.data.make_one_shot_iterator(data).get_next()
        logits, _, _ = build_model(images, spec, keep_prob=t.keep_prob)  # [B, S, S, K]
        variables = fcn_model.model_variables(graph)
        loss = segmentation_loss(logits, labels)
        valid_pixels = tf.math.count_nonzero(tf.not_equal(labels, IGNORE_LABEL))
        total_loss = loss
        if t.weight_decay > 0:
            total_loss = loss + t.weight_decay * kernel_l2(variables)
        rate = learning_rate(t.learning_rate, global_step, schedule=t.lr_schedule,
                             max_steps=t.max_steps, power=t.lr_power)
        train_op = make_optimizer(t.optimizer, rate, momentum=t.momentum).minimize(
            total_loss, global_step=global_step)
        all_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v))
                                    for v in variables.values()])
        tf1.summary.scalar("train/loss", loss)
        tf1.summary.scalar("train/learning_rate", rate)
        summaries = tf1.summary.merge_all()
        evaluator = Evaluator(val_files, spec, num_classes=num_classes,
                              max_images=t.eval_max_images)
        saver = tf1.train.Saver(max_to_keep=None, save_relative_paths=True)
        init = tf1.global_variables_initializer()
        graph.finalize()

    with graph.as_default():  # Saver and FileWriter need the graph context
        sess = tf1.Session(graph=graph, config=session_config(t.threads))
        state = {"saved": resume_prefix, "saved_step": start_step if resume_prefix else -1}
        writer = _SummaryWriter(t.log_dir, state)
        progress = Progress(t.max_steps, label="step", unit="step", start=start_step)

        def save(step):
            if not sess.run(all_finite):
                raise TrainingDiverged(
                    f"step {step}: the weights are no longer finite; not saving. "
                    f"{_last_good(state)}")
            # Sidecar, data, index, pruning, state file: all of it or, on a
            # failure, the previous checkpoints as they were. Signals only
            # set a flag (StopSignals), so none cuts this short.
            try:
                prefix = checkpoint.save_model(sess, saver, base, spec, global_step=int(step))
                state.update(saved=prefix, saved_step=step)
                kept = checkpoint.prune_checkpoints(t.log_dir, t.keep_checkpoints)
                checkpoint.write_state_file(t.log_dir, kept)
            except OSError as err:
                raise UserError(_os_error_message(err, t.log_dir, state)) from None
            except UserError as err:
                raise UserError(f"{err}. {_last_good(state)}") from None
            _write_or_fail(_plot, t.log_dir, state=state)
            return prefix

        def evaluate(step):
            panels = []

            def keep_panel(name, image, label, prediction):
                stop.check()  # between images: a stop request ends the evaluation
                if len(panels) < t.summary_images:
                    panels.append((name, image, label, prediction))

            start = time.perf_counter()
            metrics, count = evaluator.run(sess, on_image=keep_panel)
            writer.add_summary(scalar_summary({
                "val/mean_iou": metrics["mean_iou"], "val/pixel_accuracy": metrics["pixel_accuracy"],
                "val/mean_accuracy": metrics["mean_accuracy"],
                "val/frequency_weighted_iou": metrics["frequency_weighted_iou"]}), step)
            if panels:
                writer.add_summary(panel_summary("val/image_prediction_truth", panels), step)
            writer.flush()
            record = {"step": int(step), **{
                key: _finite_or_none(metrics[key]) for key in (
                    "mean_iou", "pixel_accuracy", "mean_accuracy", "frequency_weighted_iou")}}
            _write_or_fail(append_history, t.log_dir, record, state=state)
            _write_or_fail(_plot, t.log_dir, state=state)
            progress.write(
                f"step {step}: validation mean IU {format_value(metrics['mean_iou'])}, pixel "
                f"accuracy {format_value(metrics['pixel_accuracy'])} ({count} images, "
                f"{time.perf_counter() - start:.1f} s)")
            return metrics

        stop = StopSignals(keep_after_stop=exiting)
        stop.install()
        step = start_step
        steps_per_pass = -(-len(train_files) // t.batch_size)
        seen_valid, since_check = 0, 0
        completed = False
        try:
            sess.run(init)
            if resume_prefix:
                checkpoint.check_variables(resume_prefix, {v.op.name: v for v in
                                                           graph.get_collection("variables")})
                saver.restore(sess, resume_prefix)
                print(f"resuming from {resume_prefix} at step {start_step}", file=sys.stderr)
            elif vgg is not None:
                checkpoint.assign_vgg(sess, vgg, variables, spec.architecture)
            print(f"training on {len(train_files)} {train_files.kind} images ({num_classes} "
                  f"classes), validating on {len(val_files)}; logs in {t.log_dir}",
                  file=sys.stderr)
            last_time, last_step = time.perf_counter(), step
            while step < t.max_steps:
                stop.check()
                log_now = (step + 1) % t.log_every == 0 or step + 1 == t.max_steps
                fetches = {"train": train_op, "loss": loss, "valid": valid_pixels}
                if log_now:
                    fetches["summary"] = summaries
                try:
                    out = sess.run(fetches)
                except tf.errors.OpError as err:
                    raise UserError(datasets.data_error_message(err)) from None
                step += 1
                seen_valid, since_check = seen_valid + int(out["valid"]), since_check + 1
                if since_check == steps_per_pass:
                    if seen_valid == 0:
                        raise UserError(_no_labels_message(config, train_files, steps_per_pass,
                                                           state))
                    seen_valid, since_check = 0, 0
                if not np.isfinite(out["loss"]):
                    raise TrainingDiverged(
                        f"step {step}: the loss is {out['loss']}; stopping without saving this "
                        f"state. {_last_good(state)} Try a lower train.learning_rate.")
                if log_now:
                    now = time.perf_counter()
                    speed = (step - last_step) * t.batch_size / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    writer.add_summary(out["summary"], step)
                    record = {"step": step, "loss": float(out["loss"])}
                    _write_or_fail(append_history, t.log_dir, record, state=state)
                    progress.update(step, loss=f"{out['loss']:.4f}", **{"img/s": f"{speed:.1f}"})
                if step % t.checkpoint_every == 0 or step == t.max_steps:
                    save(step)
                if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                    evaluate(step)
            progress.close()
            stop.check()
            if state["saved_step"] != step:
                save(step)
            metrics = evaluate(step)
            completed = True
        except KeyboardInterrupt:
            stop.received.append(signal.SIGINT)  # a Ctrl-C raised another way
            progress.close()
            step = int(sess.run(global_step))
            if step > state["saved_step"]:
                save(step)
            where = (f"checkpoint {state['saved']}" if state["saved"]
                     else "no checkpoint was written")
            print(f"interrupted at step {step}; {where}. Run the same command again to "
                  f"resume.", file=sys.stderr)
            raise
        except OSError as err:
            raise UserError(_os_error_message(err, t.log_dir, state)) from None
        finally:
            progress.close()
            try:
                writer.close()
            except UserError:
                if completed:  # otherwise the error on its way out says more
                    raise
            finally:
                sess.close()
                stop.uninstall()

    print(format_metrics(metrics, class_names))
    _write_or_fail(write_json_atomic, os.path.join(t.log_dir, METRICS_NAME),
                   metrics_record(metrics, class_names, checkpoint=state["saved"],
                                  split=val_files.split, global_step=int(step)), state=state)
    print(f"step {step}: validation mean IU {format_value(metrics['mean_iou'])} "
          f"({metrics['num_images']} images); checkpoint {state['saved']}")
    return metrics


def _last_good(state):
    if state["saved"]:
        return f"The last good checkpoint is {state['saved']} (step {state['saved_step']})."
    return "No checkpoint was written."


def _plot(log_dir):
    plot_curves(read_history(log_dir), os.path.join(log_dir, CURVES_NAME))


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _no_labels_message(config, files, steps, state):
    label_dir = os.path.dirname(files.label_paths[0]) if files.label_paths else "?"
    return (f"data.train_split {files.split!r} ({files.kind}, labels in {label_dir}): "
            f"{steps} steps, a whole pass over its {len(files)} images, saw no labelled "
            f"pixel (every label value is {IGNORE_LABEL}, the ignore label, or the crops "
            f"of train.image_size {config.train.image_size} miss them); nothing to train "
            f"on. {_last_good(state)}")


def _os_error_message(err, log_dir, state=None):
    path = err.filename or log_dir
    last = f" {_last_good(state)}" if state is not None else ""
    return f"{path}: cannot write: {err.strerror or err}.{last}"


def _write_or_fail(write, *args, state=None):
    """Call `write(*args)`; an OSError (a full disk, an unwritable file) becomes a
    one-line UserError naming the file and the last good checkpoint."""
    try:
        return write(*args)
    except OSError as err:
        raise UserError(_os_error_message(err, "train.log_dir", state)) from None
    except UserError as err:  # a writer that names the file itself
        last = f" {_last_good(state)}" if state is not None else ""
        raise UserError(f"{err}.{last}") from None


class _SummaryWriter:
    """tf1.summary.FileWriter whose write failures (its background thread's,
    reported at a later call) are one-line UserErrors naming the events file."""

    def __init__(self, log_dir, state):
        self.log_dir, self.state = log_dir, state
        self.writer = self._call(lambda: tf1.summary.FileWriter(log_dir))

    def _call(self, action):
        try:
            return action()
        except (OSError, tf.errors.OpError) as err:
            path = self._events_path() if hasattr(self, "writer") else self.log_dir
            reason = (err.strerror if isinstance(err, OSError)
                      else checkpoint.op_error_reason(err))
            raise UserError(f"{path}: cannot write TensorBoard summaries: {reason}. "
                            f"{_last_good(self.state)}") from None

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
    `keep_after_stop`: after a stop, `uninstall` leaves the handlers in place
    (still only recording), for a process that is about to exit.
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
            return
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}
