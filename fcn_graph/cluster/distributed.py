"""Synchronous data-parallel training across the tasks of a TF_CONFIG cluster.

TF_CONFIG is the environment variable that cluster managers (Kubeflow's
TFJob, Vertex AI, SageMaker) set for every task, e.g. for the second of two
workers:

    {"cluster": {"worker": ["host1:2222", "host2:2222"]},
     "task": {"type": "worker", "index": 1}}

A `chief` job of one task may come besides `worker`; it trains like the
workers and is the one that writes. The tasks are ranked chief first, then
the workers in order: rank 0 (the chief, or worker 0 without one) writes the
checkpoints and logs. `ps` and `evaluator` tasks are refused: training is
synchronous, every task computes gradients on its own shard of the files and
the gradients are summed across tasks by collective all-reduce ops in the
graph, over TensorFlow's gRPC runtime (`tf.distribute.Server`).
"""

import dataclasses
import json
import os
import socket
import time
import zlib
from typing import Optional, Tuple

import tensorflow as tf

from fcn_graph.cluster.buckets import exchange_buckets
from fcn_graph.core.errors import UserError

tf1 = tf.compat.v1

ENV = "TF_CONFIG"
# The jobs whose tasks train; any other job in TF_CONFIG is refused.
TRAINING_JOBS = ("chief", "worker")
REFUSED_JOBS = {
    "ps": "parameter servers are not used: training is synchronous across the chief and "
          "worker tasks, which all-reduce their gradients; remove cluster.ps",
    "evaluator": "a side-car evaluator is not used: the chief evaluates during training; "
                 "remove cluster.evaluator and run python -m fcn_graph.evaluate instead",
}
# Collective group of the training tasks (one device per task takes part).
GROUP_KEY = 1
# First collective instance key of the training graph; the start-up
# handshake uses the keys below it.
GRAPH_INSTANCE_KEYS = 100


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This task's place in a TF_CONFIG cluster."""

    jobs: dict                      # job name -> tuple of "host:port" addresses
    task_type: str                  # "chief" or "worker"
    task_index: int
    tasks: Tuple[Tuple[str, int], ...]  # (job, index) of every training task, by rank

    @property
    def size(self):
        return len(self.tasks)

    @property
    def rank(self):
        return self.tasks.index((self.task_type, self.task_index))

    @property
    def is_chief(self):
        return self.rank == 0

    @property
    def device(self):
        """The device prefix of this task's ops."""
        return f"/job:{self.task_type}/replica:0/task:{self.task_index}"

    def address(self, rank):
        job, index = self.tasks[rank]
        return self.jobs[job][index]

    def name(self, rank):
        """e.g. 'worker 1 of 2 (host2:2222)'."""
        job, index = self.tasks[rank]
        count = len(self.jobs[job])
        return f"{job} {index} of {count} ({self.address(rank)})"

    def leader(self):
        job, index = self.tasks[0]
        return f"/job:{job}/replica:0/task:{index}"


def from_environment(environ=None) -> Optional[Cluster]:
    """The Cluster that TF_CONFIG describes, or None when it is unset or empty."""
    environ = os.environ if environ is None else environ
    text = environ.get(ENV, "")
    if not text.strip():
        return None
    return parse_tf_config(text)


def parse_tf_config(text):
    """Parse and check the TF_CONFIG JSON `text`; UserError naming the bad field."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise UserError(f"{ENV}: expected JSON like {{\"cluster\": {{\"worker\": "
                        f"[\"host1:2222\", \"host2:2222\"]}}, \"task\": {{\"type\": \"worker\", "
                        f"\"index\": 0}}}}, found text that is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{ENV}: expected a JSON object with cluster and task, found "
                        f"{type(data).__name__} {_short(data)}")
    cluster = data.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f"{ENV}: cluster: expected an object of jobs, e.g. {{\"worker\": "
                        f"[\"host1:2222\", \"host2:2222\"]}}, found {_short(cluster)}")
    jobs = {}
    for job, addresses in cluster.items():
        if job in REFUSED_JOBS:
            raise UserError(f"{ENV}: cluster.{job}: {REFUSED_JOBS[job]}")
        if job not in TRAINING_JOBS:
            raise UserError(f"{ENV}: cluster.{job}: unknown job; expected worker (and "
                            f"optionally chief)")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and _is_address(a) for a in addresses)):
            raise UserError(f"{ENV}: cluster.{job}: expected a non-empty list of "
                            f"\"host:port\" strings, found {_short(addresses)}")
        jobs[job] = tuple(addresses)
    if "worker" not in jobs:
        raise UserError(f"{ENV}: cluster: expected a worker list, found only "
                        f"{', '.join(jobs)}")
    if len(jobs.get("chief", ())) > 1:
        raise UserError(f"{ENV}: cluster.chief: expected one address, found "
                        f"{len(jobs['chief'])}")
    every = [a for job in TRAINING_JOBS for a in jobs.get(job, ())]
    for address in every:
        if every.count(address) > 1:
            raise UserError(f"{ENV}: cluster: address {address} appears "
                            f"{every.count(address)} times; expected one task per address")
    task = data.get("task")
    if not isinstance(task, dict):
        raise UserError(f"{ENV}: task: expected an object like {{\"type\": \"worker\", "
                        f"\"index\": 0}}, found {_short(task)}")
    task_type = task.get("type")
    if task_type in REFUSED_JOBS:
        raise UserError(f"{ENV}: task.type: {task_type!r}: {REFUSED_JOBS[task_type]}")
    if task_type not in jobs:
        raise UserError(f"{ENV}: task.type: expected one of {', '.join(jobs)} (the jobs of "
                        f"cluster), found {_short(task_type)}")
    index = task.get("index")
    if "index" not in task:
        raise UserError(f"{ENV}: task.index: missing; expected this task's position in "
                        f"cluster.{task_type} (0 to {len(jobs[task_type]) - 1})")
    if not isinstance(index, int) or isinstance(index, bool) or not (
            0 <= index < len(jobs[task_type])):
        raise UserError(f"{ENV}: task.index: expected an integer from 0 to "
                        f"{len(jobs[task_type]) - 1} (cluster.{task_type} has "
                        f"{len(jobs[task_type])} addresses), found {_short(index)}")
    tasks = tuple((job, i) for job in TRAINING_JOBS for i in range(len(jobs.get(job, ()))))
    return Cluster(jobs=jobs, task_type=task_type, task_index=index, tasks=tasks)


def _is_address(text):
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())


def _short(value):
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- files


def shard(files, cluster):
    """This task's shard of a SplitFiles: the pairs sorted by image path, and
    every cluster.size-th of them from cluster.rank on (disjoint, together all)."""
    if len(files) < cluster.size:
        raise UserError(f"data.train_split {files.split!r}: {len(files)} images for "
                        f"{cluster.size} training tasks ({ENV}); each task needs at least one "
                        f"image of its own")
    pairs = sorted(zip(files.image_paths, files.label_paths))[cluster.rank::cluster.size]
    return dataclasses.replace(files, image_paths=tuple(p[0] for p in pairs),
                               label_paths=tuple(p[1] for p in pairs))


def fingerprint(config):
    """A number that is equal on tasks that train the same model the same way."""
    keys = dict(dataclasses.asdict(config))
    keys["train"] = {k: v for k, v in keys["train"].items()
                     if k not in ("log_dir", "threads", "devices", "step_timeout")}
    keys["data"] = {k: v for k, v in keys["data"].items() if k != "root"}
    return zlib.crc32(json.dumps(keys, sort_keys=True).encode())


# --------------------------------------------------------------------------- runtime


def session_config(cluster, base):
    """`base` (a ConfigProto) for a session of this task: collectives led by
    rank 0, and only this task's devices in view."""
    config = tf1.ConfigProto()
    config.CopyFrom(base)
    config.experimental.collective_group_leader = cluster.leader()
    del config.device_filters[:]
    config.device_filters.append(cluster.device)
    return config


def start_server(cluster, base):
    """The gRPC server of this task (it listens on every interface), with
    the settings of `session_config(cluster, base)`: the collective group
    leader must be known to the server itself."""
    spec = tf.train.ClusterSpec({job: list(a) for job, a in cluster.jobs.items()})
    try:
        return tf.distribute.Server(spec, job_name=cluster.task_type,
                                    task_index=cluster.task_index,
                                    config=session_config(cluster, base), start=True)
    except (tf.errors.OpError, RuntimeError, ValueError) as err:
        message = str(getattr(err, "message", err)).strip().splitlines()[0]
        raise UserError(f"{ENV}: cannot start the server of {cluster.name(cluster.rank)}: "
                        f"{message}; is the port in use?") from None


def wait_for_peers(cluster, timeout, *, poll=0.2):
    """Wait until every other task accepts TCP connections; UserError naming
    the ones that do not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    waiting = [r for r in range(cluster.size) if r != cluster.rank]
    while waiting:
        waiting = [r for r in waiting if not _accepts(cluster.address(r), poll)]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(cluster.name(r) for r in waiting)
            raise UserError(f"train: {names} did not start within {timeout:g} s "
                            f"(train.step_timeout); start every task of {ENV}'s cluster")
        if waiting:
            time.sleep(poll)


def _accepts(address, timeout):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


class Collectives:
    """Collective ops across the tasks, one device per task, with instance
    keys in creation order: every task must create the same ops in the same
    order (the graphs are built by the same code)."""

    def __init__(self, cluster, *, first_key, device="/device:CPU:0"):
        self.cluster = cluster
        self.device = f"{cluster.device}{device}"
        self.next_key = first_key

    def _key(self):
        self.next_key += 1
        return self.next_key - 1

    def all_reduce(self, tensor, merge="Add"):
        """The element-wise sum (or Max, Min) of `tensor` over the tasks."""
        from tensorflow.python.ops import collective_ops

        with tf.device(self.device):
            return collective_ops.all_reduce(tensor, self.cluster.size, GROUP_KEY, self._key(),
                                             merge, "Id")

    def broadcast(self, variable):
        """An op that sets `variable` on every task to rank 0's value."""
        from tensorflow.python.ops import collective_ops

        key = self._key()
        with tf.device(self.device):
            if self.cluster.is_chief:
                value = collective_ops.broadcast_send(variable.read_value(), variable.shape,
                                                      variable.dtype.base_dtype,
                                                      self.cluster.size, GROUP_KEY, key)
                return tf.group(value)
            value = collective_ops.broadcast_recv(variable.shape, variable.dtype.base_dtype,
                                                  self.cluster.size, GROUP_KEY, key)
        return tf1.assign(variable, value).op


def all_reduce_gradients(collectives, grads, *, bucket_bytes, dtype=tf.float32):
    """`grads` (float32 tensors of known shapes, in the order of their layers
    from the input) summed over the tasks, in the same order.

    They are exchanged from the last layer's down, in buckets of at most
    `bucket_bytes` bytes as `dtype` (`buckets.exchange_buckets`): one all-reduce
    of each bucket flattened, which needs only that bucket's gradients, so
    that the exchange of the late layers' gradients runs while the backward
    pass of the early layers goes on. With `dtype` bfloat16 the gradients
    are cast to it for the exchange and back to float32 after. The instance
    keys follow the buckets' order, the same on every task."""
    dtype = tf.as_dtype(dtype)
    sizes = [grad.shape.num_elements() * dtype.size for grad in grads]
    summed = [None] * len(grads)
    for bucket in exchange_buckets(sizes, bucket_bytes):
        parts = [grads[i] for i in bucket]
        flat = tf.concat([tf.reshape(tf.cast(grad, dtype), [-1]) for grad in parts], axis=0)
        pieces = tf.split(tf.cast(collectives.all_reduce(flat), tf.float32),
                          [grad.shape.num_elements() for grad in parts])
        for i, piece in zip(bucket, pieces):
            summed[i] = tf.reshape(piece, grads[i].shape)
    return summed


def agree(cluster, server, base_config, *, step, config_print, timeout):
    """The start-up handshake: every task learns rank 0's `step` (its resume
    point) and checks that all run the same config (`config_print`). Returns
    the step."""
    wait_for_peers(cluster, timeout)
    graph = tf.Graph()
    with graph.as_default(), tf.device(cluster.device):
        collectives = Collectives(cluster, first_key=1)
        own = tf.constant(step if cluster.is_chief else 0, tf.int64)
        chief_step = collectives.all_reduce(own)
        mark = tf.constant(config_print, tf.int64)
        low, high = collectives.all_reduce(mark, "Min"), collectives.all_reduce(mark, "Max")
    options = tf1.RunOptions(timeout_in_ms=int(timeout * 1000))
    with tf1.Session(server.target, graph=graph,
                     config=session_config(cluster, base_config)) as sess:
        try:
            chief_step, low, high = sess.run([chief_step, low, high], options=options)
        except tf.errors.OpError as err:
            raise UserError(peer_failure(cluster, err, timeout, "the start-up handshake")) from None
    if low != high:
        raise UserError(f"train: the tasks of {ENV}'s cluster run different configs (model, "
                        f"data or train keys differ); give every task the same config")
    return int(chief_step)


def peer_failure(cluster, err, timeout, when):
    """One line on a collective that failed or timed out: which peers do not
    answer (those refusing connections for about two seconds, else all of
    them), and what to do."""
    from fcn_graph.weights.checkpoint import op_error_reason

    others = [r for r in range(cluster.size) if r != cluster.rank]
    dead = []
    for _ in range(4):
        dead = [r for r in others if not _accepts(cluster.address(r), 0.5)]
        if dead:
            break
        time.sleep(0.5)
    who = ", ".join(cluster.name(r) for r in dead or others)
    if dead:
        what = f"{who} stopped answering (connection refused)"
    elif isinstance(err, tf.errors.DeadlineExceededError):
        what = (f"{'one of ' if len(others) > 1 else ''}{who} did not answer within "
                f"{timeout:g} s (train.step_timeout)")
    else:
        what = f"the exchange with {who} failed: {op_error_reason(err)[:200]}"
    return (f"{cluster.name(cluster.rank)}: {what} during {when}; restart all tasks to "
            f"resume from the chief's newest checkpoint in train.log_dir")


def is_peer_error(err):
    """Whether a failed training step looks like a lost or slow peer rather
    than bad data."""
    peer_types = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                  tf.errors.AbortedError, tf.errors.CancelledError)
    if isinstance(err, peer_types):
        return True
    text = (err.message or "").lower()
    return any(word in text for word in ("collective", "grpc", "socket", "connection"))
