"""Training on several tasks (TF_CONFIG) and several devices, at a tiny width.

In-process tests run each task in a thread with its own in-process server;
the failure tests run train.py processes, each with a hard timeout, and stop
only the processes they started.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from fcn_graph import infer
from fcn_graph import train as train_module
from fcn_graph.cluster import distributed
from fcn_graph.cluster.buckets import exchange_buckets, plan_buckets
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.data import datasets, splits
from fcn_graph.training import loop
from fcn_graph.training.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.vgg_width=0.0625", "model.fc_width=8", "train.image_size=24",
        "train.log_every=1", "train.eval_every=0", "train.eval_max_images=1",
        "train.learning_rate=0.01", "train.threads=1", "train.summary_images=0",
        "train.step_timeout=30"]
# Plain SGD on a fixed order: what makes runs comparable.
EXACT = ["train.optimizer=sgd", "train.momentum=0.5", "train.keep_prob=1.0",
         "train.flip=false", "train.scale_range=[1.0, 1.0]", "train.weight_decay=0.001",
         "train.lr_schedule=poly"]


def shapes_args(tmp_path, log_dir, *extra):
    return [f"data.root={tmp_path / 'shapes'}", "data.shapes_train_images=6",
            "data.shapes_val_images=1", "data.shapes_image_size=24",
            f"train.log_dir={tmp_path / log_dir}", *TINY, *extra]


def make_shapes(tmp_path):
    """Generate the shapes dataset once, before tasks that would all generate it."""
    config = load_config(None, shapes_args(tmp_path, "run"))
    datasets.open_config_split(config, config.data.train_split)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_configs(count):
    workers = [f"localhost:{port}" for port in free_ports(count)]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(count)]


def ordered_dataset(files, *, num_classes, batch_size, image_size, **_):
    """train_dataset without shuffling or augmentation: the files in sorted
    order, cropped at the top left, endlessly."""
    pairs = sorted(zip(files.image_paths, files.label_paths))
    read = [datasets.read_pair(image, label, num_classes) for image, label in pairs]
    images = np.stack([image[:image_size, :image_size] for image, _ in read]).astype(np.float32)
    labels = np.stack([label[:image_size, :image_size] for _, label in read]).astype(np.int32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
    return data.batch(batch_size, drop_remainder=True)


def run_tasks(tmp_path, per_task_args, envs, timeout=120):
    """loop.train of each task in its own thread; their results (or errors)."""
    results = [None] * len(envs)

    def task(i):
        try:
            results[i] = loop.train(load_config(None, per_task_args[i]), environ=envs[i])
        except BaseException as err:  # reported by the test
            results[i] = err

    threads = [threading.Thread(target=task, args=(i,), daemon=True) for i in range(len(envs))]
    for thread in threads:
        thread.start()
    end = time.time() + timeout
    for thread in threads:
        thread.join(max(0.0, end - time.time()))
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert not any(thread.is_alive() for thread in threads), "a task did not finish"
    return results


def checkpoint_values(log_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(log_dir)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_close(found, expected):
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(found[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_two_workers_equal_one_worker_on_both_halves(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "train_dataset", ordered_dataset)
    steps = ["train.max_steps=3", "train.checkpoint_every=3", *EXACT]
    run_tasks(tmp_path, [shapes_args(tmp_path, "one", "train.batch_size=2", *steps)], [{}])

    seen = {}
    step_run = loop.TrainingRun.step_run

    def recording(self, fetches, feed_dict=None, *, when):
        out = step_run(self, fetches, feed_dict, when=when)
        seen.setdefault(when, {})[self.cluster.rank] = self.sess.run(self.graph.variables)
        return out

    monkeypatch.setattr(loop.TrainingRun, "step_run", recording)
    make_shapes(tmp_path)
    envs = [{"TF_CONFIG": text} for text in tf_configs(2)]
    run_tasks(tmp_path, [shapes_args(tmp_path, f"task{i}", "train.batch_size=1", *steps)
                         for i in range(2)], envs)

    # Both hold the same variables after every step (and the chief's copy).
    assert set(seen) == {"the copy of the chief's variables", "step 1", "step 2", "step 3"}
    for when, by_rank in seen.items():
        for name, value in by_rank[0].items():
            np.testing.assert_array_equal(by_rank[1][name], value, err_msg=f"{when}: {name}")
    # The same variables, optimizer state and step as one worker on both halves.
    chief = checkpoint_values(tmp_path / "task0")
    assert chief["global_step"] == 3
    assert_close(chief, checkpoint_values(tmp_path / "one"))
    # Only the chief wrote.
    assert not (tmp_path / "task1").exists()
    assert {"config.json", "val_metrics.json", "history.jsonl"} <= set(os.listdir(
        tmp_path / "task0"))
    # Same variable names: a run without TF_CONFIG continues the chief's checkpoint.
    monkeypatch.setattr(loop.TrainingRun, "step_run", step_run)
    run_tasks(tmp_path, [shapes_args(tmp_path, "task0", "train.batch_size=2", *EXACT,
                                     "train.max_steps=4")], [{}])
    assert checkpoint_values(tmp_path / "task0")["global_step"] == 4


def test_a_bfloat16_exchange_is_close_to_float32(tmp_path, monkeypatch):
    """Two workers exchanging bfloat16 gradients end close to one worker on
    both halves, but not as close as with float32: the gradients were
    rounded on the way."""
    monkeypatch.setattr(datasets, "train_dataset", ordered_dataset)
    steps = ["train.max_steps=2", "train.checkpoint_every=2", *EXACT]
    run_tasks(tmp_path, [shapes_args(tmp_path, "one", "train.batch_size=2", *steps)], [{}])
    envs = [{"TF_CONFIG": text} for text in tf_configs(2)]
    run_tasks(tmp_path, [shapes_args(tmp_path, f"task{i}", "train.batch_size=1", *steps,
                                     "train.allreduce_dtype=bfloat16") for i in range(2)], envs)
    one, two = checkpoint_values(tmp_path / "one"), checkpoint_values(tmp_path / "task0")
    assert two["global_step"] == 2
    for name, value in one.items():  # bfloat16 keeps 8 bits of each gradient
        np.testing.assert_allclose(two[name], value, rtol=0,
                                   atol=1e-2 * np.abs(value).max(), err_msg=name)
    # Farther than a float32 exchange comes (test_two_workers_equal_one_worker_on_both_halves).
    assert not all(np.allclose(two[name], value, rtol=1e-5, atol=1e-7)
                   for name, value in one.items())


def test_two_devices_equal_one_device(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "train_dataset", ordered_dataset)
    steps = ["train.max_steps=2", "train.checkpoint_every=2", "train.batch_size=4", *EXACT]
    run_tasks(tmp_path, [shapes_args(tmp_path, "one", *steps)], [{}])
    run_tasks(tmp_path, [shapes_args(tmp_path, "two", *steps,
                                     'train.devices=["CPU:0", "/cpu:1"]')], [{}])
    assert_close(checkpoint_values(tmp_path / "two"), checkpoint_values(tmp_path / "one"))


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG: expected JSON"),
    ('["worker"]', "TF_CONFIG: expected a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG: cluster: expected an object"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker"}}',
     "TF_CONFIG: task.index: missing"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG: task.index: expected an integer from 0 to 1 (cluster.worker has 2 "
     "addresses), found 2"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "master", "index": 0}}',
     "TF_CONFIG: task.type: expected one of worker"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG: cluster.ps: parameter servers are not used"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "TF_CONFIG: task.type: 'evaluator': a side-car evaluator is not used"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG: cluster.worker: expected a non-empty list of \"host:port\""),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG: cluster: address a:1 appears 2 times"),
])
def test_tf_config_errors_are_one_line(tmp_path, capsys, text, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace(".", r"\.")):
        distributed.parse_tf_config(text)
    config = tmp_path / "config.json"
    config.write_text("{}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TF_CONFIG", text)
        code = run_cli(train_module.main, ["--config", str(config), "--set",
                                           f"train.log_dir={tmp_path / 'run'}"],
                       prog="train.py")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("train.py: error: TF_CONFIG")
    assert not (tmp_path / "run").exists()


def test_chief_ranks_first_and_shards_are_disjoint():
    cluster = distributed.parse_tf_config(json.dumps({
        "cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
        "task": {"type": "worker", "index": 0}}))
    assert cluster.rank == 1 and not cluster.is_chief and cluster.size == 3
    assert cluster.name(0) == "chief 0 of 1 (c:1)"
    files = splits.SplitFiles("folder", "train", tuple(f"i{n}.png" for n in (3, 1, 4, 0, 2)),
                                tuple(f"l{n}.png" for n in (3, 1, 4, 0, 2)), ())
    shards = [distributed.shard(files, distributed.Cluster(
        cluster.jobs, job, index, cluster.tasks)) for job, index in cluster.tasks]
    assert [s.image_paths for s in shards] == [("i0.png", "i3.png"), ("i1.png", "i4.png"),
                                               ("i2.png",)]
    assert [s.label_paths for s in shards][2] == ("l2.png",)
    small = splits.SplitFiles("folder", "train", ("a",), ("b",), ())
    with pytest.raises(UserError, match="1 images for 3 training tasks"):
        distributed.shard(small, cluster)


def test_a_lost_peer_is_named():
    """A peer that accepts connections but does not answer (frozen) and one
    that refuses them (dead)."""
    frozen = socket.socket()
    frozen.bind(("localhost", 0))
    frozen.listen()
    dead = free_ports(1)[0]
    try:
        for port, expected in [
                (frozen.getsockname()[1], "did not answer within 30 s (train.step_timeout) "
                                          "during step 5"),
                (dead, "stopped answering (connection refused) during step 5")]:
            cluster = distributed.parse_tf_config(json.dumps({
                "cluster": {"worker": ["localhost:1", f"localhost:{port}"]},
                "task": {"type": "worker", "index": 0}}))
            message = distributed.peer_failure(
                cluster, tf.errors.DeadlineExceededError(None, None, "timed out"), 30, "step 5")
            assert message == (f"worker 0 of 2 (localhost:1): worker 1 of 2 (localhost:{port}) "
                               f"{expected}; restart all tasks to resume from the chief's "
                               f"newest checkpoint in train.log_dir")
    finally:
        frozen.close()


@pytest.mark.parametrize("override, message", [
    ("train.devices=[]", "train.devices: expected a list of devices"),
    ('train.devices=["TPU:0"]', "train.devices: expected device names like GPU:0"),
    ('train.devices=["CPU:0", "/device:CPU:0"]', "train.devices: /device:CPU:0 appears 2"),
    ('train.devices=["CPU:0", "CPU:1", "CPU:2"]', "train.batch_size: expected a multiple of "
                                                  "the 3 train.devices"),
    ("train.step_timeout=0", "train.step_timeout: expected a number of seconds in \\(0, 604800\\]"),
])
def test_device_and_timeout_keys_are_checked(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, ["train.batch_size=2", override])


def test_a_missing_gpu_is_named():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="train.devices: /device:GPU:0 not found; this machine "
                                        "has 0 visible GPU"):
        loop.resolve_devices(["/device:GPU:0"])


def test_buckets_cover_every_gradient_once_in_order():
    assert plan_buckets([3, 5, 2, 9, 1], cap=8) == [[0, 1], [2], [3], [4]]
    # Odd sizes and caps: a bucket closes before the gradient that would overflow it.
    assert plan_buckets([7, 1, 1, 13, 2, 2, 2, 5], cap=5) == [[0], [1, 2], [3], [4, 5], [6],
                                                            [7]]
    assert plan_buckets([7, 1, 1, 13, 2, 2, 2, 5], cap=11) == [[0, 1, 2], [3], [4, 5, 6, 7]]
    assert plan_buckets([4, 4, 4], cap=10**9) == [[0, 1, 2]]
    assert plan_buckets([4, 4, 4], cap=1) == [[0], [1], [2]]
    assert plan_buckets([], cap=3) == []
    for cap in (1, 2, 3, 5, 7, 11, 17):
        sizes = [(n * 7) % 9 + 1 for n in range(23)]
        buckets = plan_buckets(sizes, cap)
        assert [i for bucket in buckets for i in bucket] == list(range(len(sizes)))
        for bucket in buckets:
            assert len(bucket) == 1 or sum(sizes[i] for i in bucket) <= cap
        for bucket, following in zip(buckets, buckets[1:]):
            assert sum(sizes[i] for i in bucket + following[:1]) > cap
    # The exchange takes the gradients from the last layer's down.
    assert exchange_buckets([3, 5, 2, 9, 1], cap=8) == [[4], [3], [2, 1], [0]]
    assert exchange_buckets([2, 2, 2, 13, 1, 1, 7], cap=11) == [[6, 5, 4], [3], [2, 1, 0]]
    with pytest.raises(ValueError, match="bucket cap: expected a positive"):
        plan_buckets([1], cap=0)


def _ancestors(op, stop=lambda op: False):
    """The ops `op` needs (inputs and control inputs, transitively), not
    walking past those for which `stop` holds."""
    seen, stack = {}, [op]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        if len(seen) == 1 or not stop(op):
            stack.extend(tensor.op for tensor in op.inputs)
            stack.extend(op.control_inputs)
    return set(seen.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_each_bucket_needs_only_its_own_gradients(tmp_path, dtype):
    """The training graph of a task of two: one collective all-reduce per
    bucket of the plan over the gradients from the last layer down, keys in
    that order, each needing the gradients of its own bucket and none of an
    earlier layer's (no concat of all of them, no wait for them all)."""
    make_shapes(tmp_path)
    config = load_config(None, shapes_args(tmp_path, "run", "train.allreduce_bucket_bytes=701",
                                           f"train.allreduce_dtype={dtype}"))
    train_files, val_files, num_classes = datasets.splits_from_config(config)
    spec, _ = loop._model_spec(config, num_classes)
    cluster = distributed.parse_tf_config(tf_configs(2)[1])
    graph = loop.build_training_graph(config, spec, train_files, val_files, cluster=cluster).graph

    def is_backward(op):
        return op.name.startswith("gradients/")

    reduces = sorted((op for op in graph.get_operations() if op.type == "CollectiveReduce"),
                     key=lambda op: op.get_attr("instance_key"))
    # The gradients each all-reduce sums: the backward ops it reaches first.
    own = {op.name: {a for a in _ancestors(op, is_backward) if is_backward(a)} for op in reduces}
    buckets = [op for op in reduces if own[op.name]]
    totals = [op for op in reduces if not own[op.name]]
    assert len(totals) == 1 and totals[0].inputs[0].dtype == tf.float32
    assert all(op.inputs[0].dtype == tf.as_dtype(dtype) for op in buckets)
    # The variables the optimizer updates (conv5_4 of the legacy head is unused), last first.
    updated = {op.inputs[0].op.name for op in graph.get_operations()
               if op.type.startswith(("Apply", "ResourceApply"))}
    sizes = [v.shape.num_elements() for v in graph.get_collection("trainable_variables")
             if v.op.name in updated][::-1]
    plan = plan_buckets([size * tf.as_dtype(dtype).size for size in sizes], 701)
    assert len(plan) > 5
    assert [op.inputs[0].shape.num_elements() for op in buckets] == [
        sum(sizes[i] for i in bucket) for bucket in plan]
    assert [len(own[op.name]) for op in buckets] == [len(bucket) for bucket in plan]
    for k, op in enumerate(buckets):
        later = set().union(*(own[b.name] for b in buckets[k + 1:]))
        assert not _ancestors(op) & later, f"bucket {k} waits for gradients of earlier layers"


# --------------------------------------------------------------------------- processes


class Tasks:
    """train.py processes, one per TF_CONFIG task, each with a hard timeout."""

    def __init__(self, tmp_path, args, count=2):
        self.tmp_path, self.args, self.count = tmp_path, args, count
        self.procs = []

    def start(self, *extra):
        config = self.tmp_path / "config.json"
        config.write_text("{}\n")
        self.procs = []
        for index, text in enumerate(tf_configs(self.count)):
            log_dir = f"train.log_dir={self.tmp_path / ('run' if index == 0 else 'other')}"
            command = [sys.executable, os.path.join(REPO, "train.py"), "--config", str(config)]
            command += [a for arg in [*self.args, log_dir, *extra] for a in ("--set", arg)]
            env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=text)
            self.procs.append(subprocess.Popen(
                ["timeout", "-s", "KILL", "150", *command], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=True))
        return self.procs

    def wait_for_step(self, step, deadline=60):
        end = time.time() + deadline
        while checkpointed(self.tmp_path / "run") < step:
            for proc in self.procs:
                assert proc.poll() is None, proc.communicate()
            assert time.time() < end, "no checkpoint in time"
            time.sleep(0.2)

    def signal(self, index, signum):
        os.killpg(self.procs[index].pid, signum)  # the group of timeout and train.py

    def finish(self, timeout=150):
        return [proc.communicate(timeout=timeout) + (proc.returncode,) for proc in self.procs]

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def checkpointed(log_dir):
    prefix = tf.train.latest_checkpoint(str(log_dir)) if os.path.isdir(log_dir) else None
    return int(tf.train.load_checkpoint(prefix).get_tensor("global_step")) if prefix else -1


@pytest.fixture
def tasks(tmp_path):
    made = []

    def make(args):
        made.append(Tasks(tmp_path, args))
        return made[-1]

    yield make
    for group in made:
        group.stop()


def test_a_stop_request_of_one_task_stops_both_after_the_same_step(tmp_path, monkeypatch):
    """A signal (StopSignals) on worker 1 only: both stop after the same
    step; the chief saves it; worker 1 writes nothing."""
    make_shapes(tmp_path)
    step_run = loop.TrainingRun.step_run

    def signal_at_step_2(self, fetches, feed_dict=None, *, when):
        if self.cluster.rank == 1 and when == "step 2":
            self.stop.received.append(signal.SIGTERM)
            feed_dict = {self.graph.stop_request: 1.0}
        return step_run(self, fetches, feed_dict, when=when)

    monkeypatch.setattr(loop.TrainingRun, "step_run", signal_at_step_2)
    envs = [{"TF_CONFIG": text} for text in tf_configs(2)]
    args = ["train.max_steps=50", "train.checkpoint_every=50", "train.batch_size=1"]
    with pytest.raises(KeyboardInterrupt):
        run_tasks(tmp_path, [shapes_args(tmp_path, "run", *args),
                             shapes_args(tmp_path, "other", *args)], envs)
    assert checkpointed(tmp_path / "run") == 2
    assert not (tmp_path / "other").exists()


def test_kill_one_worker_then_restart_both(tmp_path, tasks):
    group = tasks(shapes_args(tmp_path, "run", "train.max_steps=100000", "train.batch_size=1",
                              "train.checkpoint_every=2", "train.step_timeout=8"))
    make_shapes(tmp_path)
    # kill -9 the second worker: the chief stops within train.step_timeout.
    group.start()
    group.wait_for_step(2)
    group.signal(1, signal.SIGKILL)
    killed = time.time()
    (_, err0, code0), _ = group.finish()
    assert time.time() - killed < 8 + 20
    lines = [line for line in err0.splitlines() if line.startswith("train.py: error:")]
    assert code0 == 2 and len(lines) == 1, err0
    assert "worker 1 of 2 (localhost:" in lines[0]
    assert "restart all tasks to resume from the chief's newest checkpoint" in lines[0]
    before = checkpointed(tmp_path / "run")
    assert before >= 2

    # Both again: they resume from the chief's checkpoint and finish.
    group.start(f"train.max_steps={before + 2}")
    (_, err0, code0), (_, err1, code1) = group.finish()
    assert code0 == 0 and code1 == 0, (err0, err1)
    assert f"at step {before}" in err0 and checkpointed(tmp_path / "run") == before + 2
    assert not (tmp_path / "other").exists()

    image = tmp_path / "shapes" / "images"
    first = sorted(os.listdir(image))[0]
    code = run_cli(infer.main, [str(image / first), "--checkpoint", str(tmp_path / "run"),
                                "--output-dir", str(tmp_path / "pred")], prog="fcn_graph.infer")
    assert code == 0 and os.listdir(tmp_path / "pred")
